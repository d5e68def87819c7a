//! Prometheus metrics of one operator instance (its own registry, so several
//! instances can live in one test process) and the metrics/health listener.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::publish::Published;
use crate::Error;

pub struct Metrics {
    registry: Registry,
    /// Long-polls currently waiting: roughly the connected gateways.
    pub gateways_waiting: IntGauge,
    /// 200 responses carrying a config.
    pub configs_served: IntCounter,
    /// Deltas served to `/v2` clients (whole configs count in `configs_served`).
    pub deltas_served: IntCounter,
    /// Versions published (a translation whose output changed).
    pub versions_published: IntCounter,
    pub translate_seconds: Histogram,
    pub objects_watched: IntGaugeVec,
    pub leader: IntGauge,
    /// Status subresource patches, by kind.
    pub status_writes: IntCounterVec,
    pub events_emitted: IntCounter,
    /// Requests refused because too many clients were waiting.
    pub overloaded: IntCounter,
    pub unauthorized: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, Error> {
        let registry = Registry::new();
        let gateways_waiting = IntGauge::new(
            "vestibule_operator_gateways_waiting",
            "Gateway long-polls currently waiting for a new config version",
        )?;
        let configs_served = IntCounter::new(
            "vestibule_operator_configs_served_total",
            "Config responses (200) sent to gateways",
        )?;
        let deltas_served = IntCounter::new(
            "vestibule_operator_deltas_served_total",
            "Config deltas served to gateways (GET /v2/config with a known version)",
        )?;
        let versions_published = IntCounter::new(
            "vestibule_operator_versions_published_total",
            "New config versions published",
        )?;
        let translate_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "vestibule_operator_translate_duration_seconds",
                "Time to snapshot the stores and translate them",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let objects_watched = IntGaugeVec::new(
            Opts::new(
                "vestibule_operator_objects_watched",
                "Objects in the watch caches, by kind",
            ),
            &["kind"],
        )?;
        let leader = IntGauge::new(
            "vestibule_operator_leader",
            "1 while this replica holds the Lease and writes statuses",
        )?;
        let status_writes = IntCounterVec::new(
            Opts::new(
                "vestibule_operator_status_writes_total",
                "Status subresource patches, by kind",
            ),
            &["kind"],
        )?;
        let events_emitted = IntCounter::new(
            "vestibule_operator_events_emitted_total",
            "Kubernetes Events created for rejected Ingress rules",
        )?;
        let overloaded = IntCounter::new(
            "vestibule_operator_config_overloaded_total",
            "Config requests refused with 503 because too many were waiting",
        )?;
        let unauthorized = IntCounter::new(
            "vestibule_operator_config_unauthorized_total",
            "Config requests refused with 401",
        )?;
        registry.register(Box::new(gateways_waiting.clone()))?;
        registry.register(Box::new(configs_served.clone()))?;
        registry.register(Box::new(deltas_served.clone()))?;
        registry.register(Box::new(versions_published.clone()))?;
        registry.register(Box::new(translate_seconds.clone()))?;
        registry.register(Box::new(objects_watched.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        registry.register(Box::new(events_emitted.clone()))?;
        registry.register(Box::new(overloaded.clone()))?;
        registry.register(Box::new(unauthorized.clone()))?;
        Ok(Metrics {
            registry,
            gateways_waiting,
            configs_served,
            deltas_served,
            versions_published,
            translate_seconds,
            objects_watched,
            leader,
            status_writes,
            events_emitted,
            overloaded,
            unauthorized,
        })
    }

    /// The registry, for other components' metrics (the ACME issuer).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail for valid metrics.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` (a config is published).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    published: watch::Receiver<Option<Arc<Published>>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return Ok(()),
        };
        let metrics = metrics.clone();
        let published = published.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let res = respond(&req, &metrics, &published);
                async move { Ok::<_, Infallible>(res) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    published: &watch::Receiver<Option<Arc<Published>>>,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut res = text(StatusCode::OK, metrics.render());
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            res
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match published.borrow().as_ref() {
            Some(p) => text(StatusCode::OK, format!("ready {}\n", p.version)),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for the first translation\n".into(),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
