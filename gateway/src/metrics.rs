//! Prometheus metrics. Labels are bounded by the config (tenant, route and
//! pool names), never raw hosts or paths. Per-route handles are resolved when
//! a config is compiled, so the request path only bumps atomics.
//!
//! Request counters are not `prometheus` series: a registered series carries
//! its own descriptor and label strings (about 1 KB each), and five per route
//! made 50k series at 10k hosts, which cost memory and, spread over the heap,
//! a cache miss per request. [`RouteCounters`] is five atomics in one
//! allocation per (tenant, route); [`RequestCounters`] renders them at scrape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::conn::GuardMetrics;

/// Status classes 1xx..5xx; anything else counts as 5xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct Metrics {
    registry: Registry,
    requests: Arc<RequestCounters>,
    upstream_latency: HistogramVec,
    pub active_requests: IntGauge,
    config_info: IntGaugeVec,
    pub config_last_swap: Gauge,
    pub config_swaps: IntCounter,
    pub config_errors: IntCounter,
    pub swap_duration: Histogram,
    endpoints: IntGaugeVec,
    ejections: IntCounterVec,
    /// Requests that matched no route (404, redirects, 431 before routing).
    pub unmatched: RouteStats,
    /// Handshakes and certificate state of the HTTPS listener.
    pub tls: TlsMetrics,
    /// Requests refused by a tenant's rate limit (429).
    pub rate_limited: IntCounter,
    /// Requests refused at a pool's connection cap (503).
    pub pool_overloaded: IntCounter,
    /// What the downstream connection guard refused or cut.
    pub guard: GuardMetrics,
}

/// Requests of one (tenant, route) by status class.
#[derive(Debug, Default)]
pub struct RouteCounters([AtomicU64; 5]);

impl RouteCounters {
    /// Requests counted for a status class (index into `CLASSES`).
    pub fn get(&self, class: usize) -> u64 {
        self.0.get(class).map_or(0, |c| c.load(Relaxed))
    }
}

/// `vestibule_requests_total`: the counters of every live (tenant, route),
/// rendered at scrape time. Classes never counted are left out, so a config
/// with 10k idle routes does not print 50k zero lines.
pub struct RequestCounters {
    desc: Desc,
    /// tenant -> route -> counters; hash maps, since a compile looks up
    /// every route of the config (`gather` sorts the output anyway).
    routes: Mutex<Map<Map<Arc<RouteCounters>>>>,
}

type Map<V> = HashMap<Box<str>, V, ahash::RandomState>;

impl RequestCounters {
    fn new() -> Result<Self, prometheus::Error> {
        let desc = Desc::new(
            "vestibule_requests_total".into(),
            "Requests by tenant, route and status class".into(),
            vec!["class".into(), "route".into(), "tenant".into()],
            Default::default(),
        )?;
        Ok(RequestCounters {
            desc,
            routes: Mutex::default(),
        })
    }

    /// The counters of (tenant, route): the live ones if the route already
    /// exists, so counts carry over config swaps.
    fn get(&self, tenant: &str, route: &str) -> Arc<RouteCounters> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = routes.get(tenant).and_then(|t| t.get(route)) {
            return c.clone();
        }
        let c = Arc::new(RouteCounters::default());
        routes
            .entry(tenant.into())
            .or_default()
            .insert(route.into(), c.clone());
        c
    }

    fn remove(&self, tenant: &str, route: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = routes.get_mut(tenant) {
            t.remove(route);
            if t.is_empty() {
                routes.remove(tenant);
            }
        }
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

impl Collector for RequestCounters {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut metrics = Vec::new();
        let all = routes
            .iter()
            .flat_map(|(t, r)| r.iter().map(move |(r, c)| (t, r, c)));
        for (tenant, route, counters) in all {
            for (i, class) in CLASSES.iter().enumerate() {
                let n = counters.get(i);
                if n == 0 {
                    continue;
                }
                let mut counter = Counter::default();
                counter.set_value(n as f64);
                let mut m = Metric::default();
                // Sorted by name, as the encoder expects.
                m.set_label(vec![
                    label("class", class),
                    label("route", route),
                    label("tenant", tenant),
                ]);
                m.set_counter(counter);
                metrics.push(m);
            }
        }
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(metrics);
        vec![family]
    }
}

/// Counter and histogram handles of one (tenant, route).
#[derive(Clone)]
pub struct RouteStats {
    counters: Arc<RouteCounters>,
    latency: Histogram,
}

impl RouteStats {
    #[inline]
    pub fn count(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        if let Some(c) = self.counters.0.get(class) {
            c.fetch_add(1, Relaxed);
        }
    }

    #[inline]
    pub fn observe_upstream(&self, seconds: f64) {
        self.latency.observe(seconds);
    }
}

/// Registers an `Arc`ed collector the metrics keep a handle to.
struct SharedCollector<C>(Arc<C>);

impl<C: Collector> Collector for SharedCollector<C> {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are static and unique, so registration cannot fail.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    /// Registers every metric. Names and labels are static, so this fails
    /// only on a programming error (caught by the unit tests).
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let requests = Arc::new(RequestCounters::new()?);
        let _ = r.register(Box::new(SharedCollector(requests.clone())));
        let upstream_latency = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "vestibule_upstream_response_seconds",
                    "Time from sending the request upstream to its response header, by tenant",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["tenant"],
            )?,
        );
        let active_requests = reg(
            &r,
            IntGauge::new("vestibule_active_requests", "Requests in flight")?,
        );
        let config_info = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("vestibule_config_info", "The live config version (value 1)"),
                &["version"],
            )?,
        );
        let config_last_swap = reg(
            &r,
            Gauge::new(
                "vestibule_config_last_swap_timestamp_seconds",
                "Unix time of the last config swap",
            )?,
        );
        let config_swaps = reg(
            &r,
            IntCounter::new("vestibule_config_swaps_total", "Configs swapped in")?,
        );
        let config_errors = reg(
            &r,
            IntCounter::new(
                "vestibule_config_errors_total",
                "Configs that failed to load or compile (the old one stayed live)",
            )?,
        );
        let swap_duration = reg(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "vestibule_config_swap_duration_seconds",
                    "Time to compile and swap in a config",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
        );
        let endpoints = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("vestibule_pool_endpoints", "Endpoints of a pool by health"),
                &["pool", "state"],
            )?,
        );
        let ejections = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "vestibule_endpoint_ejections_total",
                    "Endpoints ejected by passive health checks",
                ),
                &["pool"],
            )?,
        );
        let unmatched = RouteStats {
            counters: requests.get("", ""),
            latency: upstream_latency.with_label_values(&[""]),
        };
        let tls = tls_metrics(&r)?;
        let rate_limited = reg(
            &r,
            IntCounter::new(
                "vestibule_rate_limited_total",
                "Requests refused with 429 by a tenant's rate limit",
            )?,
        );
        let pool_overloaded = reg(
            &r,
            IntCounter::new(
                "vestibule_pool_overloaded_total",
                "Requests refused with 503 at a pool's concurrent connection cap",
            )?,
        );
        let rejected = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "vestibule_downstream_rejected_total",
                    "Client connections refused, by reason",
                ),
                &["reason"],
            )?,
        );
        let timeouts = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "vestibule_downstream_timeouts_total",
                    "Client connections closed by the head, keep-alive or body-rate deadline",
                ),
                &["kind"],
            )?,
        );
        let guard = GuardMetrics {
            rejected_per_ip: rejected.with_label_values(&["per_ip_cap"]),
            rejected_over_cap: rejected.with_label_values(&["listener_cap"]),
            header_timeouts: timeouts.with_label_values(&["header"]),
            idle_timeouts: timeouts.with_label_values(&["keepalive"]),
            body_timeouts: timeouts.with_label_values(&["body"]),
        };
        Ok(Metrics {
            rate_limited,
            pool_overloaded,
            guard,
            tls,
            registry: r,
            requests,
            upstream_latency,
            active_requests,
            config_info,
            config_last_swap,
            config_swaps,
            config_errors,
            swap_duration,
            endpoints,
            ejections,
            unmatched,
        })
    }

    /// Handles for one (tenant, route); call while compiling, not per request.
    pub fn route_stats(&self, tenant: &str, route: &str) -> RouteStats {
        RouteStats {
            counters: self.requests.get(tenant, route),
            latency: self.upstream_latency.with_label_values(&[tenant]),
        }
    }

    /// Drops the series of routes that left the config, so label sets stay
    /// bounded by the live config rather than growing with churn.
    pub fn forget_route(&self, tenant: &str, route: &str) {
        self.requests.remove(tenant, route);
    }

    pub fn forget_tenant(&self, tenant: &str) {
        let _ = self.upstream_latency.remove_label_values(&[tenant]);
    }

    pub fn set_config_version(&self, old: Option<&str>, new: &str) {
        if let Some(old) = old {
            let _ = self.config_info.remove_label_values(&[old]);
        }
        self.config_info.with_label_values(&[new]).set(1);
    }

    pub fn set_pool_health(&self, pool: &str, ready: usize, total: usize, ejections: u64) {
        self.endpoints
            .with_label_values(&[pool, "healthy"])
            .set(ready as i64);
        self.endpoints
            .with_label_values(&[pool, "unhealthy"])
            .set((total - ready.min(total)) as i64);
        let c = self.ejections.with_label_values(&[pool]);
        let seen = c.get();
        if ejections > seen {
            c.inc_by(ejections - seen);
        }
    }

    pub fn forget_pool(&self, pool: &str) {
        let _ = self.endpoints.remove_label_values(&[pool, "healthy"]);
        let _ = self.endpoints.remove_label_values(&[pool, "unhealthy"]);
        let _ = self.ejections.remove_label_values(&[pool]);
    }

    /// The Prometheus text exposition.
    /// The registry, for other components' metrics (the ACME issuer).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

// === TLS ===

/// Prometheus handles of the TLS listener.
pub struct TlsMetrics {
    pub connections: prometheus::IntCounter,
    pub no_certificate: prometheus::IntCounter,
    pub ok_tls12: prometheus::IntCounter,
    pub ok_tls13: prometheus::IntCounter,
    pub ok_other: prometheus::IntCounter,
    pub handshake_seconds: prometheus::Histogram,
    pub cert_errors: prometheus::IntGaugeVec,
    pub cert_expiry_days: prometheus::GaugeVec,
}

impl TlsMetrics {
    #[inline]
    pub fn handshake_ok(&self, version: Option<&str>) {
        match version {
            Some("TLSv1_3") => self.ok_tls13.inc(),
            Some("TLSv1_2") => self.ok_tls12.inc(),
            _ => self.ok_other.inc(),
        }
    }
}

/// Registers the TLS metrics.
pub(crate) fn tls_metrics(
    metrics_registry: &prometheus::Registry,
) -> Result<TlsMetrics, prometheus::Error> {
    use prometheus::{
        GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    };
    fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &prometheus::Registry, c: T) -> T {
        // Names are static and unique, so registration cannot fail.
        let _ = r.register(Box::new(c.clone()));
        c
    }
    let r = metrics_registry;
    let connections = reg(
        r,
        IntCounter::new(
            "vestibule_tls_connections_total",
            "Connections accepted by the HTTPS listener, before the handshake (failed handshakes = this - completed - in progress)",
        )
        ?,
    );
    let handshakes = reg(
        r,
        IntCounterVec::new(
            Opts::new(
                "vestibule_tls_handshakes_total",
                "TLS handshakes by result (ok, no_certificate) and protocol version",
            ),
            &["result", "version"],
        )?,
    );
    let handshake_seconds = reg(
        r,
        Histogram::with_opts(
            HistogramOpts::new(
                "vestibule_tls_handshake_seconds",
                "TLS handshake time, from the first byte read to the handshake's end (observed at the connection's first request)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        ?,
    );
    let cert_errors = reg(
        r,
        IntGaugeVec::new(
            Opts::new(
                "vestibule_tls_cert_errors",
                "Hosts of the live config whose certificate is not served, by tenant and reason",
            ),
            &["tenant", "reason"],
        )?,
    );
    let cert_expiry_days = reg(
        r,
        GaugeVec::new(
            Opts::new(
                "vestibule_tls_cert_expiry_days",
                "Days until the tenant's first certificate expires (negative: expired)",
            ),
            &["tenant"],
        )?,
    );
    Ok(TlsMetrics {
        connections,
        no_certificate: handshakes.with_label_values(&["no_certificate", ""]),
        ok_tls12: handshakes.with_label_values(&["ok", "TLSv1.2"]),
        ok_tls13: handshakes.with_label_values(&["ok", "TLSv1.3"]),
        ok_other: handshakes.with_label_values(&["ok", "other"]),
        handshake_seconds,
        cert_errors,
        cert_expiry_days,
    })
}
