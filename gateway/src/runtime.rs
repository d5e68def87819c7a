//! A compiled config (route table, pools, cert store) and the shared state
//! the proxy, the admin listener and the controller read.
//!
//! A [`Runtime`] is built completely off the request path and then swapped
//! in with one `ArcSwap` store; requests load it once. In-flight requests keep
//! the `Arc`s they hold, so they finish on the config they started with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use vestibule_config::model::{ConfigVersion, GatewayConfig, PoolId, RouteName, TenantId};

use crate::filters::{Action, Filters};
use crate::metrics::{Metrics, RouteStats};
use crate::mirror::Mirrors;
use crate::ratelimit::{GlobalLimiter, TenantLimit, TenantLimiter};
use crate::route::RouteTable;
use crate::tls::{CertCache, CertStore, ParsedCert};
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
    /// (tenant, route) metric label sets in use, to forget stale ones.
    labels: Labels,
}

/// (tenant, route) pairs; a fast hash, since every swap compares the sets
/// of the old and new runtime (10k routes: 30k lookups).
type Labels = HashSet<(String, String), ahash::RandomState>;

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
            labels: Labels::default(),
        }
    }

    /// Compiles `config`, reusing the pools of `previous` whose spec did not
    /// change (they keep health state, counters and round-robin position) and
    /// the certificates `shared` already parsed. An unusable certificate is
    /// not an error: only its hosts lose it (see [`crate::tls`]).
    pub fn compile(
        config: &GatewayConfig,
        previous: &Runtime,
        shared: &Shared,
    ) -> Result<Runtime, CompileError> {
        let (metrics, settings) = (&shared.metrics, &shared.upstream);
        config.validate()?;
        let pools: BTreeMap<PoolId, Arc<UpstreamPool>> = config
            .pools
            .iter()
            .map(|(id, spec)| {
                let protocol = config.upstream_protocols.get(id);
                let pool = match previous.pools.get(id) {
                    Some(old) if old.spec == *spec && old.protocol() == protocol => old.clone(),
                    _ => UpstreamPool::speaking(
                        id.clone(),
                        spec.clone(),
                        protocol.cloned(),
                        settings.clone(),
                    ),
                };
                (id.clone(), pool)
            })
            .collect();

        let global = shared.global_limits.get();
        let limiters: BTreeMap<TenantId, Arc<TenantLimit>> = config
            .tenants
            .iter()
            .filter_map(|(id, t)| {
                let limit = t.rate_limit?;
                let local = match previous.limiters.get(id) {
                    Some(old) if old.local.limit == limit => old.local.clone(),
                    _ => Arc::new(TenantLimiter::new(limit)),
                };
                // The budget is the registry's: the same one while the
                // whole limit holds.
                let global = global.map(|g| g.budget(id, t.cluster_rate_limit.unwrap_or(limit)));
                Some((id.clone(), Arc::new(TenantLimit { local, global })))
            })
            .collect();
        let mut stats: HashMap<(String, String), RouteStats, ahash::RandomState> =
            HashMap::default();
        // validate() checked every reference, so the pool exists; a fresh
        // empty pool (503) is the safe answer if it ever doesn't.
        let pool = |id: &PoolId| {
            pools.get(id).cloned().unwrap_or_else(|| {
                UpstreamPool::new(
                    id.clone(),
                    vestibule_config::model::Pool::Endpoints(vec![]),
                    settings.clone(),
                )
            })
        };
        let mut target =
            |tenant: Option<&TenantId>, name: &RouteName, action, filters, timeouts| {
                let t = tenant.map_or("", |t| t.as_str());
                let key = (t.to_string(), name.as_str().to_string());
                let stats = stats
                    .entry(key)
                    .or_insert_with(|| metrics.route_stats(t, name.as_str()))
                    .clone();
                Arc::new(RouteTarget {
                    name: name.clone(),
                    tenant: tenant.cloned(),
                    action,
                    filters,
                    timeouts,
                    stats,
                    limiter: tenant.and_then(|t| limiters.get(t).cloned()),
                })
            };
        let default = config.default_backend.as_ref().map(|b| {
            let action = match b.pool() {
                Some(id) => Action::Proxy(pool(id)),
                None => Action::Unresolved,
            };
            target(
                None,
                &RouteName::new(DEFAULT_ROUTE),
                action,
                Filters::default(),
                Timeouts::default(),
            )
        });
        let routes = RouteTable::build(
            config,
            |vhost, route| {
                let action = Action::new(route, &route.backend, pool);
                let filters = Filters::new(route, pool, &shared.per_client);
                let timeouts = Timeouts::of(route);
                target(
                    vhost.tenant.as_ref(),
                    &route.name,
                    action,
                    filters,
                    timeouts,
                )
            },
            default,
        );
        let labels = stats.into_keys().collect();

        let summary = Summary {
            hosts: config.hosts.len(),
            routes: config.hosts.iter().map(|h| h.routes.len()).sum(),
            pools: pools.len(),
            endpoints: pools.values().map(|p| p.endpoint_count()).sum(),
            tenants: config.tenants.len(),
            certificates: config.certificates.len(),
            default_backend: config.default_backend.is_some(),
        };
        Ok(Runtime {
            version: config.effective_version(),
            routes,
            pools,
            certs: CertStore::build(
                config,
                &shared.cert_cache.prepare(config),
                unix_now() as i64,
            ),
            limiters,
            acme_http01: config
                .acme_http01
                .iter()
                .map(|(t, k)| (t.as_str().into(), bytes::Bytes::from(k.clone())))
                .collect(),
            acme_tls_alpn01: config
                .acme_tls_alpn01
                .iter()
                .filter_map(|(domain, c)| {
                    let parsed = ParsedCert::parse(c.cert_pem.as_bytes(), c.key_pem.as_bytes());
                    match parsed.as_ref().map(ParsedCert::key) {
                        Ok(Ok(key)) => Some((domain.as_str().into(), key.clone())),
                        _ => {
                            tracing::warn!(%domain, "unusable TLS-ALPN-01 challenge certificate in the config");
                            None
                        }
                    }
                })
                .collect(),
            summary,
            labels,
        })
    }

    /// Forgets the metric series `self` used that `next` does not.
    pub fn forget_stale_metrics(&self, next: &Runtime, metrics: &Metrics) {
        for (tenant, route) in self.labels.difference(&next.labels) {
            metrics.forget_route(tenant, route);
        }
        let tenants: HashSet<&str, ahash::RandomState> =
            next.labels.iter().map(|(t, _)| t.as_str()).collect();
        for (tenant, _) in &self.labels {
            if !tenants.contains(tenant.as_str()) {
                metrics.forget_tenant(tenant);
            }
        }
        for id in self.pools.keys() {
            if !next.pools.contains_key(id) {
                metrics.forget_pool(id.as_str());
            }
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
        }))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Publishes a compiled runtime.
    pub fn swap(&self, next: Runtime) {
        let next = Arc::new(next);
        let old = self.runtime.swap(next.clone());
        self.ready.store(true, Ordering::Release);
        old.forget_stale_metrics(&next, &self.metrics);
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
