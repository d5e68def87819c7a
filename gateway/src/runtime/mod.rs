//! A compiled config (route table, pools, cert store) and the shared state
//! the proxy, the admin listener and the controller read.
//!
//! A [`Runtime`] is built completely off the request path and then swapped
//! in with one `ArcSwap` store; requests load it once. In-flight requests keep
//! the `Arc`s they hold, so they finish on the config they started with.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

mod compile;
mod patch;

pub use patch::Totals;

use arc_swap::ArcSwap;
use serde::Serialize;
use vestibule_config::model::{ConfigVersion, PoolId, RouteName, TenantId};

use crate::filters::{Action, Filters};
use crate::metrics::{Metrics, RouteStats};
use crate::mirror::Mirrors;
use crate::ratelimit::{GlobalLimiter, TenantLimit};
use crate::route::RouteTable;
use crate::tls::{CertCache, CertStore};
use crate::upstream::{UpstreamPool, UpstreamSettings};

/// The bounded route label of the default backend.
pub const DEFAULT_ROUTE: &str = "default-backend";

/// Where a matched request goes, with its metric handles.
pub struct RouteTarget {
    pub name: RouteName,
    pub tenant: Option<TenantId>,
    pub action: Action,
    pub filters: Filters,
    /// The route's upstream timeouts, where it sets them.
    pub timeouts: Timeouts,
    pub stats: RouteStats,
    /// The tenant's limits on this replica, if it has one.
    pub limiter: Option<Arc<TenantLimit>>,
}

/// A route's upstream timeouts; `None`: the pool's (the command line's).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timeouts {
    /// The wait for the upstream's response, between reads.
    pub read: Option<std::time::Duration>,
    pub connect: Option<std::time::Duration>,
    /// The wait for each write of the request.
    pub send: Option<std::time::Duration>,
}

impl Timeouts {
    fn of(route: &vestibule_config::model::Route) -> Self {
        let ms = |v: Option<u32>| v.map(|ms| std::time::Duration::from_millis(ms.into()));
        Timeouts {
            read: ms(route.timeout_ms),
            connect: ms(route.connect_timeout_ms),
            send: ms(route.send_timeout_ms),
        }
    }
}

/// Counts for `/config` and logs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub hosts: usize,
    pub routes: usize,
    pub pools: usize,
    pub endpoints: usize,
    pub tenants: usize,
    pub certificates: usize,
    pub default_backend: bool,
}

pub struct Runtime {
    pub version: ConfigVersion,
    pub routes: RouteTable<Arc<RouteTarget>>,
    pub pools: BTreeMap<PoolId, Arc<UpstreamPool>>,
    /// The SNI table the TLS listener's resolver reads.
    pub certs: CertStore,
    /// Rate limiters by tenant; reused across swaps while the limit holds.
    pub limiters: BTreeMap<TenantId, Arc<TenantLimit>>,
    /// Pending ACME HTTP-01 challenges: token -> key authorization.
    pub acme_http01: HashMap<Box<str>, bytes::Bytes, ahash::RandomState>,
    /// Pending ACME TLS-ALPN-01 challenges from the config: domain -> the
    /// challenge certificate (an unusable one is left out and logged).
    pub acme_tls_alpn01: HashMap<Box<str>, Arc<rustls::sign::CertifiedKey>, ahash::RandomState>,
    pub summary: Summary,
    /// The metric series this runtime adds and drops, for the swap.
    pub(crate) stale: Stale,
}

/// (tenant, route) metric label sets and how many routes use each.
#[derive(Debug, Default)]
pub struct LabelCounts {
    routes: HashMap<(String, String), u32, ahash::RandomState>,
    tenants: HashMap<String, u32, ahash::RandomState>,
}

/// What a swap makes stale.
#[derive(Debug, Default)]
pub(crate) enum Stale {
    /// Nothing (the empty runtime).
    #[default]
    Nothing,
    /// A whole new runtime: every series it does not use.
    Full(LabelCounts),
    /// A patch: the (tenant, route) uses it drops and adds, and the pools
    /// it removes.
    Patch {
        gone: Vec<(String, String)>,
        new: Vec<(String, String)>,
        pools: Vec<PoolId>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Invalid(#[from] vestibule_config::model::ConfigError),
}

impl Runtime {
    /// The runtime before any config is live: every request gets 404.
    pub fn empty() -> Self {
        Runtime {
            version: ConfigVersion::default(),
            routes: RouteTable::default(),
            pools: BTreeMap::new(),
            certs: CertStore::default(),
            limiters: BTreeMap::new(),
            acme_http01: HashMap::default(),
            acme_tls_alpn01: HashMap::default(),
            summary: Summary::default(),
            stale: Stale::Nothing,
        }
    }
}

impl LabelCounts {
    fn add(&mut self, (tenant, route): (String, String)) {
        *self.tenants.entry(tenant.clone()).or_default() += 1;
        *self.routes.entry((tenant, route)).or_default() += 1;
    }

    /// One use fewer; true when it was the last of its (tenant, route).
    fn remove(&mut self, label: &(String, String)) -> bool {
        if let Some(n) = self.tenants.get_mut(&label.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.tenants.remove(&label.0);
            }
        }
        match self.routes.get_mut(label) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.routes.remove(label);
                true
            }
            None => false,
        }
    }
}

// === impl Shared ===

/// What `/config` reports besides the runtime itself.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConfigStatus {
    pub source: String,
    pub last_error: Option<String>,
    /// Unix seconds of the last error / swap.
    pub last_error_at: Option<u64>,
    pub last_swap_at: Option<u64>,
    pub swaps: u64,
}

/// State shared by the proxy, the admin listener and the controller.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    ready: AtomicBool,
    /// Admin and controller only; never touched by requests.
    pub status: Mutex<ConfigStatus>,
    pub metrics: Metrics,
    pub upstream: Arc<UpstreamSettings>,
    /// Parsed certificates by id, reused across compiles; the default cert.
    pub cert_cache: CertCache,
    /// The ACME issuer of `--manifests` mode with `--state-dir`.
    pub acme: std::sync::OnceLock<vestibule_acme::Handle>,
    /// In operator mode: names whose order a handshake asks for, reported
    /// to the operator's issuer.
    pub acme_demand: std::sync::OnceLock<tokio::sync::mpsc::Sender<Box<str>>>,
    /// Copies of requests to the mirror pools of routes.
    pub mirrors: Mirrors,
    /// The cluster-wide rate limits (`--rate-limit-store`).
    pub global_limits: std::sync::OnceLock<Arc<GlobalLimiter>>,
    /// Routes' per-client limiters, kept across config changes.
    pub per_client: crate::ratelimit::per_client::PerClientLimiters,
    /// The (tenant, route) series the live runtime uses; the swap forgets
    /// those no route uses any more.
    labels: Mutex<LabelCounts>,
}

impl Shared {
    /// Fails only if the metrics can't be registered (a programming error).
    pub fn new(upstream: UpstreamSettings, source: String) -> Result<Arc<Self>, prometheus::Error> {
        let metrics = Metrics::new()?;
        Ok(Arc::new(Shared {
            runtime: ArcSwap::from_pointee(Runtime::empty()),
            ready: AtomicBool::new(false),
            status: Mutex::new(ConfigStatus {
                source,
                ..Default::default()
            }),
            mirrors: Mirrors::new(metrics.registry())?,
            global_limits: std::sync::OnceLock::new(),
            per_client: Default::default(),
            metrics,
            upstream: Arc::new(upstream),
            cert_cache: CertCache::default(),
            acme: std::sync::OnceLock::new(),
            acme_demand: std::sync::OnceLock::new(),
            labels: Mutex::default(),
        }))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Publishes a compiled runtime.
    pub fn swap(&self, mut next: Runtime) {
        let stale = std::mem::take(&mut next.stale);
        let next = Arc::new(next);
        let old = self.runtime.swap(next.clone());
        self.ready.store(true, Ordering::Release);
        self.forget_stale_metrics(&old, &next, stale);
        let old_version = (!old.version.is_empty()).then(|| old.version.as_str());
        self.metrics
            .set_config_version(old_version, next.version.as_str());
        let now = unix_now();
        self.metrics.config_last_swap.set(now as f64);
        self.metrics.config_swaps.inc();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_swap_at = Some(now);
        status.swaps += 1;
    }

    /// Forgets the metric series `old` used that `next` does not.
    fn forget_stale_metrics(&self, old: &Runtime, next: &Runtime, stale: Stale) {
        let metrics = &self.metrics;
        let mut labels = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        let pools = match stale {
            Stale::Nothing => {
                // The empty runtime: nothing is used any more.
                let previous = std::mem::take(&mut *labels);
                for (tenant, route) in previous.routes.keys() {
                    metrics.forget_route(tenant, route);
                }
                for tenant in previous.tenants.keys() {
                    metrics.forget_tenant(tenant);
                }
                old.pools.keys().cloned().collect()
            }
            Stale::Full(counts) => {
                let previous = std::mem::replace(&mut *labels, counts);
                for label in previous.routes.into_keys() {
                    if !labels.routes.contains_key(&label) {
                        metrics.forget_route(&label.0, &label.1);
                    }
                }
                for tenant in previous.tenants.keys() {
                    if !labels.tenants.contains_key(tenant) {
                        metrics.forget_tenant(tenant);
                    }
                }
                old.pools
                    .keys()
                    .filter(|id| !next.pools.contains_key(*id))
                    .cloned()
                    .collect()
            }
            Stale::Patch { gone, new, pools } => {
                for label in new {
                    labels.add(label);
                }
                for label in &gone {
                    if labels.remove(label) {
                        metrics.forget_route(&label.0, &label.1);
                    }
                    if !labels.tenants.contains_key(&label.0) {
                        metrics.forget_tenant(&label.0);
                    }
                }
                pools
            }
        };
        for id in pools {
            metrics.forget_pool(id.as_str());
        }
    }

    /// A config loaded and applied: the last error is history.
    pub fn clear_error(&self) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_error = None;
    }

    /// Records a config that could not be loaded or compiled.
    pub fn report_error(&self, error: String) {
        tracing::error!(%error, "config rejected; the previous config stays live");
        self.metrics.config_errors.inc();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_error = Some(error);
        status.last_error_at = Some(unix_now());
    }

    /// The Prometheus text, with the live runtime's certificate state
    /// (errors, days to expiry at this moment) published first.
    pub fn render_metrics(&self) -> Vec<u8> {
        let runtime = self.runtime.load();
        runtime.certs.publish(&self.metrics.tls, unix_now() as i64);
        self.metrics.render()
    }

    pub fn status(&self) -> ConfigStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// === impl LivePools for Shared ===

impl crate::upstream::health::LivePools for Shared {
    fn pools(&self) -> Vec<Arc<UpstreamPool>> {
        self.runtime.load().pools.values().cloned().collect()
    }

    fn report_health(&self, pool: &UpstreamPool) {
        let (ready, total) = pool.health_counts();
        let ejections = pool.ejections.load(Ordering::Relaxed);
        self.metrics
            .set_pool_health(pool.id.as_str(), ready, total, ejections);
    }
}

// === impl LiveCerts for Shared ===

impl crate::tls::LiveCerts for Shared {
    fn certificate(&self, name: Option<&str>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let runtime = self.runtime.load();
        runtime
            .certs
            .select(name, self.cert_cache.default_cert())
            .cloned()
    }

    fn tls_metrics(&self) -> &crate::metrics::TlsMetrics {
        &self.metrics.tls
    }

    fn on_demand(&self, name: &str) {
        let (acme, demand) = (self.acme.get(), self.acme_demand.get());
        if (acme.is_none() && demand.is_none()) || !self.runtime.load().certs.is_acme_pending(name)
        {
            return;
        }
        if let Some(acme) = acme {
            acme.on_demand(name);
        } else if let Some(demand) = demand {
            // Full: the next handshake asks again.
            let _ = demand.try_send(name.into());
        }
    }

    fn tls_alpn01(&self, name: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        // From the config (operator mode), else from this process's issuer.
        if let Some(key) = self.runtime.load().acme_tls_alpn01.get(name) {
            return Some(key.clone());
        }
        self.acme.get()?.board().tls_alpn01(name)
    }
}
