//! Request mirroring (the Gateway API's `RequestMirror`): a copy of a
//! request's head goes to one endpoint of the mirror pool, fire and
//! forget. Bounded: at most [`MAX_IN_FLIGHT`] copies at a time per process
//! (more are dropped and counted), each given [`TIMEOUT`] in all, and only
//! requests without a body are copied (a body would have to be buffered or
//! teed; those requests are counted as skipped).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use pingora_http::RequestHeader;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::upstream::UpstreamPool;

/// Mirrored requests in flight at most.
pub const MAX_IN_FLIGHT: usize = 256;
/// Connect, send and read the mirror's response head within this.
pub const TIMEOUT: Duration = Duration::from_secs(5);

use crate::edge::headers::HOP_BY_HOP;

pub struct Mirrors {
    in_flight: Arc<AtomicUsize>,
    sent: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    skipped: IntCounter,
}

impl Mirrors {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counts = IntCounterVec::new(
            Opts::new(
                "vestibule_mirror_requests_total",
                "Mirrored request copies by result (sent, failed, dropped at the in-flight cap, skipped for a body)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(counts.clone()))?;
        Ok(Mirrors {
            in_flight: Arc::new(AtomicUsize::new(0)),
            sent: counts.with_label_values(&["sent"]),
            failed: counts.with_label_values(&["failed"]),
            dropped: counts.with_label_values(&["dropped"]),
            skipped: counts.with_label_values(&["skipped"]),
        })
    }

    /// Sends a copy of `req` to `pool` in the background.
    pub fn send(&self, pool: &UpstreamPool, req: &RequestHeader) {
        let has_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
            || req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if has_body {
            self.skipped.inc();
            return;
        }
        let Some(endpoint) = pool.select(None) else {
            self.failed.inc();
            return;
        };
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        let mut copy = http::Request::builder()
            .method(req.method.clone())
            .uri(req.uri.path_and_query().map_or("/", |p| p.as_str()));
        for (name, value) in req.headers.iter() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                copy = copy.header(name, value);
            }
        }
        let Ok(copy) = copy.body(Empty::<Bytes>::new()) else {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.failed.inc();
            return;
        };
        let (in_flight, sent, failed) = (
            self.in_flight.clone(),
            self.sent.clone(),
            self.failed.clone(),
        );
        let addr = endpoint.addr;
        tokio::spawn(async move {
            let result = tokio::time::timeout(TIMEOUT, async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                sender.send_request(copy).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
            .await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(Ok(())) => sent.inc(),
                _ => failed.inc(),
            }
        });
    }
}
