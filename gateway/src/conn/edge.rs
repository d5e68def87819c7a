//! The `ServerApp` Pingora runs for each listener: takes the client's
//! connection slot, then runs HTTP/1 keep-alive itself so that a connection
//! between requests holds only its stream (HTTP/2 goes to Pingora).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use super::stream::{GuardedStream, Wait};
use super::ConnGuard;
use crate::purge;

/// After a flood the worker may sit idle with the connections' freed pages
/// resident: run the due purges on it once the delay has passed.
async fn give_memory_back() {
    tokio::time::sleep(purge::PURGE_DELAY).await;
    purge::run_due_purges();
}

// === impl Edge ===

/// The `ServerApp` Pingora runs: takes the connection slot, wraps the
/// stream, hands it to the proxy.
pub struct Edge<A> {
    app: Arc<A>,
    guard: Arc<ConnGuard>,
}

impl<A> Edge<A> {
    pub fn new(app: A, guard: Arc<ConnGuard>) -> Self {
        Edge {
            app: Arc::new(app),
            guard,
        }
    }
}

const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 36\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections from this client";

#[async_trait]
impl<A> ServerApp for Edge<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let Some(permit) = self.guard.acquire_for(&stream) else {
            refuse(stream, h2).await;
            return None;
        };
        if !self.guard.connection_opened() {
            refuse(stream, h2).await;
            return None;
        }
        let out = if h2 {
            self.app.process_new(stream, shutdown).await
        } else {
            self.serve_http1(GuardedStream::new(stream, &self.guard), shutdown)
                .await
        };
        drop(permit);
        if self.guard.connection_closed() {
            tokio::spawn(give_memory_back());
        }
        out
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// Tells an HTTP/1 client over its cap why it is refused (best effort,
/// without waiting on it), then closes.
async fn refuse(mut stream: Stream, h2: bool) {
    if !h2 {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(TOO_MANY).await;
            let _ = stream.flush().await;
        })
        .await;
    }
}

impl<A> Edge<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    /// Pingora's HTTP/1 keep-alive loop, with the wait for each request's
    /// first bytes taken out of it: Pingora waits inside a session, holding
    /// its 4 KiB head buffer and the whole proxy future (~40 KiB an idle
    /// connection); here a connection between requests holds only its
    /// stream. Returns `None`: the connection is done when this returns.
    async fn serve_http1(
        self: &Arc<Self>,
        stream: GuardedStream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = &self.guard.limits;
        let mut stream = Box::new(stream);
        // A new connection's head is due within the header timeout.
        let first = stream.wait_for_request(limits.header_timeout, shutdown);
        if !self.next_request(first.await, &self.guard.metrics.header_timeouts) {
            return None;
        }
        let options = self.app.server_options();
        let keep_header_case = !options.is_some_and(|o| o.h1_discard_header_case);
        let mut persistent: Option<HttpPersistentSettings> = None;
        loop {
            let mut session = ServerSession::new_http1(stream);
            session.set_keep_header_case(keep_header_case);
            match persistent.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    // As Pingora's own loop sets up a connection's first session.
                    session.set_keepalive((!*shutdown.borrow()).then_some(60));
                    session.set_keepalive_reuses_remaining(
                        options.and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let reused = self.app.process_new_http(session, shutdown).await?;
            let (next, settings) = reused.consume();
            // Pingora hands back the stream it was given. (HTTP/1.1
            // pipelining is off, so no bytes of the next request are
            // waiting in `settings`.)
            stream = next.into_any().downcast::<GuardedStream>().ok()?;
            let next = stream.wait_for_request(limits.keepalive_timeout, shutdown);
            if !self.next_request(next.await, &self.guard.metrics.idle_timeouts) {
                return None;
            }
            persistent = settings;
        }
    }

    /// Whether a request follows the wait; a wait that timed out is counted.
    fn next_request(&self, wait: Wait, timeouts: &prometheus::IntCounter) -> bool {
        if wait == Wait::TimedOut {
            timeouts.inc();
        }
        wait == Wait::Request
    }
}
