//! Compiling a whole config into a runtime, and the pieces a patch
//! shares with it: route payloads, pools, limiters, challenge keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use vestibule_config::model::{
    Backend, GatewayConfig, PoolId, Route, RouteName, TenantId, UpstreamProtocol, VirtualHost,
};
use vestibule_config::Hostname;

use super::{
    unix_now, CompileError, LabelCounts, RouteTarget, Runtime, Shared, Stale, Summary, Timeouts,
    DEFAULT_ROUTE,
};
use crate::filters::{Action, Filters};
use crate::metrics::RouteStats;
use crate::ratelimit::{TenantLimit, TenantLimiter};
use crate::route::RouteTable;
use crate::tls::{CertStore, ParsedCert};
use crate::upstream::{UpstreamPool, UpstreamSettings};

/// Builds route payloads: pools resolved, limiters attached, metric handles
/// shared by the routes of one (tenant, route) name.
pub(crate) struct Targets<'a> {
    pub shared: &'a Shared,
    pub pools: &'a BTreeMap<PoolId, Arc<UpstreamPool>>,
    pub limiters: &'a BTreeMap<TenantId, Arc<TenantLimit>>,
    stats: HashMap<(String, String), RouteStats, ahash::RandomState>,
}

impl<'a> Targets<'a> {
    pub fn new(
        shared: &'a Shared,
        pools: &'a BTreeMap<PoolId, Arc<UpstreamPool>>,
        limiters: &'a BTreeMap<TenantId, Arc<TenantLimit>>,
    ) -> Self {
        Targets {
            shared,
            pools,
            limiters,
            stats: HashMap::default(),
        }
    }

    /// A pool of the config; validate() checked every reference, so it
    /// exists, and a fresh empty pool (503) is the safe answer if not.
    pub fn pool(&self, id: &PoolId) -> Arc<UpstreamPool> {
        self.pools.get(id).cloned().unwrap_or_else(|| {
            UpstreamPool::new(
                id.clone(),
                vestibule_config::model::Pool::Endpoints(vec![]),
                self.shared.upstream.clone(),
            )
        })
    }

    fn target(
        &mut self,
        tenant: Option<&TenantId>,
        name: &RouteName,
        action: Action,
        filters: Filters,
        timeouts: Timeouts,
    ) -> Arc<RouteTarget> {
        let t = tenant.map_or("", |t| t.as_str());
        let metrics = &self.shared.metrics;
        let stats = self
            .stats
            .entry((t.to_string(), name.as_str().to_string()))
            .or_insert_with(|| metrics.route_stats(t, name.as_str()))
            .clone();
        Arc::new(RouteTarget {
            name: name.clone(),
            tenant: tenant.cloned(),
            action,
            filters,
            timeouts,
            stats,
            limiter: tenant.and_then(|t| self.limiters.get(t).cloned()),
        })
    }

    /// One route of a vhost.
    pub fn route(&mut self, vhost: &VirtualHost, route: &Route) -> Arc<RouteTarget> {
        let pool = |id: &PoolId| self.pool(id);
        let action = Action::new(route, &route.backend, pool);
        let filters = Filters::new(route, pool, &self.shared.per_client);
        self.target(
            vhost.tenant.as_ref(),
            &route.name,
            action,
            filters,
            Timeouts::of(route),
        )
    }

    /// The default backend's route.
    pub fn default_route(&mut self, backend: &Backend) -> Arc<RouteTarget> {
        let action = match backend.pool() {
            Some(id) => Action::Proxy(self.pool(id)),
            None => Action::Unresolved,
        };
        self.target(
            None,
            &RouteName::new(DEFAULT_ROUTE),
            action,
            Filters::default(),
            Timeouts::default(),
        )
    }
}

/// The (tenant, route) label sets of a vhost's routes.
pub(crate) fn labels_of(vhost: &VirtualHost) -> impl Iterator<Item = (String, String)> + '_ {
    let tenant = vhost.tenant.as_ref().map_or("", |t| t.as_str());
    vhost
        .routes
        .iter()
        .map(move |r| (tenant.to_string(), r.name.as_str().to_string()))
}

/// The pool for `id`: the previous one while its spec and protocol hold
/// (it keeps health state, counters and round-robin position), else new.
pub(crate) fn pool_for(
    id: &PoolId,
    spec: &vestibule_config::model::Pool,
    protocol: Option<&UpstreamProtocol>,
    previous: &BTreeMap<PoolId, Arc<UpstreamPool>>,
    settings: &Arc<UpstreamSettings>,
) -> Arc<UpstreamPool> {
    match previous.get(id) {
        Some(old) if old.spec == *spec && old.protocol() == protocol => old.clone(),
        _ => UpstreamPool::speaking(
            id.clone(),
            spec.clone(),
            protocol.cloned(),
            settings.clone(),
        ),
    }
}

/// A tenant's limiter: the previous one's buckets while the limit holds;
/// the cluster-wide budget is the registry's.
pub(crate) fn limiter_for(
    id: &TenantId,
    tenant: &vestibule_config::model::Tenant,
    previous: &BTreeMap<TenantId, Arc<TenantLimit>>,
    shared: &Shared,
) -> Option<Arc<TenantLimit>> {
    let limit = tenant.rate_limit?;
    let local = match previous.get(id) {
        Some(old) if old.local.limit == limit => old.local.clone(),
        _ => Arc::new(TenantLimiter::new(limit)),
    };
    let global = shared
        .global_limits
        .get()
        .map(|g| g.budget(id, tenant.cluster_rate_limit.unwrap_or(limit)));
    Some(Arc::new(TenantLimit { local, global }))
}

/// A TLS-ALPN-01 challenge certificate, if usable.
pub(crate) fn challenge_key(
    domain: &Hostname,
    c: &vestibule_config::model::Certificate,
) -> Option<Arc<rustls::sign::CertifiedKey>> {
    let parsed = ParsedCert::parse(c.cert_pem.as_bytes(), c.key_pem.as_bytes());
    match parsed.as_ref().map(ParsedCert::key) {
        Ok(Ok(key)) => Some(key.clone()),
        _ => {
            tracing::warn!(%domain, "unusable TLS-ALPN-01 challenge certificate in the config");
            None
        }
    }
}

impl Runtime {
    /// Compiles `config`, reusing the pools of `previous` whose spec did not
    /// change (they keep health state, counters and round-robin position) and
    /// the certificates `shared` already parsed. An unusable certificate is
    /// not an error: only its hosts lose it (see [`crate::tls`]).
    pub fn compile(
        config: &GatewayConfig,
        previous: &Runtime,
        shared: &Shared,
    ) -> Result<Runtime, CompileError> {
        config.validate()?;
        let pools: BTreeMap<PoolId, Arc<UpstreamPool>> = config
            .pools
            .iter()
            .map(|(id, spec)| {
                let protocol = config.upstream_protocols.get(id);
                let pool = pool_for(id, spec, protocol, &previous.pools, &shared.upstream);
                (id.clone(), pool)
            })
            .collect();
        let limiters: BTreeMap<TenantId, Arc<TenantLimit>> = config
            .tenants
            .iter()
            .filter_map(|(id, t)| {
                Some((id.clone(), limiter_for(id, t, &previous.limiters, shared)?))
            })
            .collect();
        let mut targets = Targets::new(shared, &pools, &limiters);
        let default = config
            .default_backend
            .as_ref()
            .map(|b| targets.default_route(b));
        let routes = RouteTable::build(config, |vhost, route| targets.route(vhost, route), default);
        let mut labels = LabelCounts::default();
        for vhost in routes.vhosts() {
            for label in labels_of(&vhost.model) {
                labels.add(label);
            }
        }
        if config.default_backend.is_some() {
            labels.add((String::new(), DEFAULT_ROUTE.to_string()));
        }

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
            certs: CertStore::build(
                config,
                &shared.cert_cache.prepare(config),
                unix_now() as i64,
            ),
            routes,
            pools,
            limiters,
            acme_http01: config
                .acme_http01
                .iter()
                .map(|(t, k)| (t.as_str().into(), bytes::Bytes::from(k.clone())))
                .collect(),
            acme_tls_alpn01: config
                .acme_tls_alpn01
                .iter()
                .filter_map(|(domain, c)| Some((domain.as_str().into(), challenge_key(domain, c)?)))
                .collect(),
            summary,
            stale: Stale::Full(labels),
        })
    }
}
