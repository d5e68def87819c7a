//! Patching a runtime with a config delta: only the vhosts, pools,
//! limiters and certificates the delta changes are built; the new runtime
//! shares the rest with the live one (`Arc`s in copied maps), so a one-host
//! change costs the same at 100k hosts as at 10. Swapped in whole like a
//! compiled runtime: no request sees half of a delta.

use std::collections::HashSet;
use std::sync::Arc;

use vestibule_config::model::{
    ConfigDelta, DefaultBackendChange, HostTls, PoolId, TenantId, VirtualHost,
};

use super::compile::{challenge_key, labels_of, limiter_for, pool_for, Targets};
use super::{unix_now, Runtime, Shared, Stale, Summary, DEFAULT_ROUTE};
use crate::route::VhostEntry;

/// What the source knows of the whole config after the delta (the runtime
/// does not keep the config, only what it compiled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub hosts: usize,
    pub routes: usize,
    pub tenants: usize,
    pub certificates: usize,
}

impl Totals {
    pub fn of(config: &vestibule_config::GatewayConfig) -> Self {
        Totals {
            hosts: config.hosts.len(),
            routes: config.hosts.iter().map(|h| h.routes.len()).sum(),
            tenants: config.tenants.len(),
            certificates: config.certificates.len(),
        }
    }
}

impl Runtime {
    /// `previous` with `delta` applied. The delta's references were checked
    /// when it was applied to the source's config.
    pub fn patch(
        previous: &Runtime,
        delta: &ConfigDelta,
        totals: Totals,
        shared: &Shared,
    ) -> Runtime {
        // Pools whose spec or protocol changed get new objects; their
        // routes are rebuilt to use them.
        let mut pools = previous.pools.clone();
        let mut fresh: HashSet<PoolId> = HashSet::new();
        for id in &delta.pools.removed {
            pools.remove(id);
            fresh.insert(id.clone());
        }
        let touched = delta
            .pools
            .set
            .keys()
            .chain(delta.upstream_protocols.set.keys())
            .chain(&delta.upstream_protocols.removed);
        for id in touched {
            let Some(spec) = delta
                .pools
                .set
                .get(id)
                .or_else(|| previous.pools.get(id).map(|p| &p.spec))
            else {
                continue;
            };
            let protocol = match delta.upstream_protocols.set.get(id) {
                Some(p) => Some(p),
                None if delta.upstream_protocols.removed.contains(id) => None,
                None => previous.pools.get(id).and_then(|p| p.protocol()),
            };
            let pool = pool_for(id, spec, protocol, &previous.pools, &shared.upstream);
            if previous
                .pools
                .get(id)
                .is_none_or(|old| !Arc::ptr_eq(old, &pool))
            {
                fresh.insert(id.clone());
            }
            pools.insert(id.clone(), pool);
        }

        // Tenants whose limiter changed: their routes are rebuilt too.
        let mut limiters = previous.limiters.clone();
        let mut retenanted: HashSet<&TenantId> = HashSet::new();
        for id in &delta.tenants.removed {
            if limiters.remove(id).is_some() {
                retenanted.insert(id);
            }
        }
        for (id, tenant) in &delta.tenants.set {
            let next = limiter_for(id, tenant, &previous.limiters, shared);
            let same = match (previous.limiters.get(id), &next) {
                (Some(a), Some(b)) => {
                    Arc::ptr_eq(&a.local, &b.local)
                        && match (&a.global, &b.global) {
                            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                            (x, y) => x.is_none() && y.is_none(),
                        }
                }
                (None, None) => true,
                _ => false,
            };
            if !same {
                retenanted.insert(id);
            }
            match next {
                Some(l) => limiters.insert(id.clone(), l),
                None => limiters.remove(id),
            };
        }

        // The vhosts to build: the delta's, and those using a fresh pool or
        // a changed limiter (one pass over the table, only when needed).
        let replaced: HashSet<&vestibule_config::HostPattern> = delta.touched_hosts().collect();
        let mut rebuild: Vec<Arc<VirtualHost>> =
            delta.hosts.iter().map(|h| Arc::new(h.clone())).collect();
        if !fresh.is_empty() || !retenanted.is_empty() {
            for entry in previous.routes.vhosts() {
                let v = &entry.model;
                let uses = v
                    .routes
                    .iter()
                    .flat_map(|r| r.pools())
                    .any(|p| fresh.contains(p))
                    || v.tenant.as_ref().is_some_and(|t| retenanted.contains(t));
                if uses && !replaced.contains(&v.host) {
                    rebuild.push(v.clone());
                }
            }
        }
        let mut gone = Vec::new();
        for p in &delta.removed_hosts {
            if let Some(old) = previous.routes.vhost_of(p) {
                gone.extend(labels_of(&old.model));
            }
        }
        let mut new_labels = Vec::new();
        let mut targets = Targets::new(shared, &pools, &limiters);
        let entries: Vec<VhostEntry<_>> = rebuild
            .iter()
            .map(|v| {
                if let Some(old) = previous.routes.vhost_of(&v.host) {
                    gone.extend(labels_of(&old.model));
                }
                new_labels.extend(labels_of(v));
                VhostEntry::compile(v.clone(), |vhost, route| targets.route(vhost, route))
            })
            .collect();

        // The default route, when it or its pool changed.
        let default_pool_fresh = previous
            .routes
            .default_route()
            .is_some_and(|d| d.action.pool().is_some_and(|p| fresh.contains(&p.id)));
        let default_label = (String::new(), DEFAULT_ROUTE.to_string());
        let default = match &delta.default_backend {
            Some(DefaultBackendChange::Set(b)) => {
                if previous.routes.default_route().is_some() {
                    gone.push(default_label.clone());
                }
                new_labels.push(default_label);
                Some(targets.default_route(b))
            }
            Some(DefaultBackendChange::Removed) => {
                gone.push(default_label);
                None
            }
            None if default_pool_fresh => previous
                .routes
                .default_route()
                .and_then(|d| d.action.pool())
                .map(|p| {
                    targets.default_route(&vestibule_config::model::Backend::Pool(p.id.clone()))
                }),
            None => previous.routes.default_route().cloned(),
        };
        let routes = previous
            .routes
            .patched(&delta.removed_hosts, entries, default);

        // Certificates of the rebuilt hosts.
        let wanted = rebuild
            .iter()
            .filter_map(|v| v.tls.as_ref().and_then(HostTls::certificate));
        let parsed = shared.cert_cache.prepare_delta(delta, wanted);
        let certs = previous.certs.patched(
            &delta.removed_hosts,
            rebuild.iter().map(|v| &**v),
            &parsed,
            unix_now() as i64,
        );

        let mut acme_http01 = previous.acme_http01.clone();
        for t in &delta.acme_http01.removed {
            acme_http01.remove(t.as_str());
        }
        for (t, k) in &delta.acme_http01.set {
            acme_http01.insert(t.as_str().into(), bytes::Bytes::from(k.clone()));
        }
        let mut acme_tls_alpn01 = previous.acme_tls_alpn01.clone();
        for d in &delta.acme_tls_alpn01.removed {
            acme_tls_alpn01.remove(d.as_str());
        }
        for (d, c) in &delta.acme_tls_alpn01.set {
            match challenge_key(d, c) {
                Some(key) => acme_tls_alpn01.insert(d.as_str().into(), key),
                None => acme_tls_alpn01.remove(d.as_str()),
            };
        }

        let summary = Summary {
            hosts: totals.hosts,
            routes: totals.routes,
            pools: pools.len(),
            endpoints: pools.values().map(|p| p.endpoint_count()).sum(),
            tenants: totals.tenants,
            certificates: totals.certificates,
            default_backend: routes.default_route().is_some(),
        };
        let removed_pools: Vec<PoolId> = delta.pools.removed.clone();
        Runtime {
            version: delta.version.clone(),
            routes,
            pools,
            certs,
            limiters,
            acme_http01,
            acme_tls_alpn01,
            summary,
            stale: Stale::Patch {
                gone,
                new: new_labels,
                pools: removed_pools,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vestibule_config::model::{
        Backend, Certificate, ConfigDelta, Endpoint, GatewayConfig, PathMatch, Pool, RateLimit,
        Route, RouteName, Tenant, WildcardDepth,
    };
    use vestibule_config::HostPattern;

    fn cert(name: &str) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Certificate {
            cert_pem: c.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// `n` hosts over three pools, tenants t0..t2 with limits, a
    /// certificate per host; `tweak` edits it before sealing.
    fn config(
        n: usize,
        certs: &[Certificate],
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> GatewayConfig {
        let mut c = GatewayConfig::default();
        for p in 0..3 {
            let ep = Endpoint {
                address: format!("127.0.0.{}:80", p + 1).parse().unwrap(),
                weight: 1,
            };
            c.pools
                .insert(PoolId::new(format!("p{p}")), Pool::Endpoints(vec![ep]));
        }
        for t in 0..3 {
            c.tenants.insert(
                TenantId::new(format!("t{t}")),
                Tenant {
                    domains: vec![],
                    rate_limit: Some(RateLimit {
                        requests_per_second: 100,
                        burst: 10,
                    }),
                    cluster_rate_limit: None,
                },
            );
        }
        for (i, cert) in certs.iter().enumerate().take(n) {
            let name = format!("h{i}.test");
            c.certificates.insert(cert.id(), cert.clone());
            c.hosts.push(VirtualHost {
                host: HostPattern::parse(&name).unwrap(),
                tenant: Some(TenantId::new(format!("t{}", i % 3))),
                tls: Some(HostTls::Certificate(cert.id())),
                wildcard: WildcardDepth::OneLabel,
                plain_http: Default::default(),
                routes: vec![Route::to_pool(
                    RouteName::new(format!("r{i}")),
                    PathMatch::prefix("/"),
                    PoolId::new(format!("p{}", (i / 2) % 3)),
                )],
            });
        }
        tweak(&mut c);
        c.hosts.sort_by(|a, b| a.host.cmp(&b.host));
        c.seal()
    }

    /// What a request to each host of `hosts` meets in `rt`.
    fn view(rt: &Runtime, hosts: usize) -> Vec<String> {
        (0..hosts + 2)
            .map(|i| {
                let host = format!("h{i}.test");
                let route = rt.routes.lookup(&host, "/").route().map(|r| {
                    let pool = r.action.pool().unwrap();
                    format!(
                        "{} {} {:?} limit={:?}",
                        r.name,
                        pool.id,
                        pool.spec,
                        r.limiter.as_ref().map(|l| l.local.limit),
                    )
                });
                let cert = rt.certs.select(Some(&host), None).is_some();
                format!("{host}: {route:?} cert={cert}")
            })
            .collect()
    }

    #[test]
    fn a_patched_runtime_serves_what_a_compiled_one_does_and_shares_the_rest() {
        let shared = Shared::new(Default::default(), "test".into()).unwrap();
        let certs: Vec<Certificate> = (0..18).map(|i| cert(&format!("h{i}.test"))).collect();
        let old = config(16, &certs, |_| {});
        let new = config(18, &certs, |c| {
            // A host removed, one's route changed, a pool's endpoints
            // changed, a tenant's limit changed, one pool gone.
            c.hosts.retain(|h| h.host.to_string() != "h4.test");
            c.hosts[0].routes[0].backend = Backend::Pool(PoolId::new("p2"));
            c.pools.insert(PoolId::new("p1"), Pool::Endpoints(vec![]));
            c.tenants.get_mut(&TenantId::new("t1")).unwrap().rate_limit = Some(RateLimit {
                requests_per_second: 5,
                burst: 1,
            });
            c.hosts.retain(|h| {
                !h.routes
                    .iter()
                    .any(|r| r.backend == Backend::Pool(PoolId::new("p0")))
            });
            c.pools.remove(&PoolId::new("p0"));
        });
        let base = Runtime::compile(&old, &Runtime::empty(), &shared).unwrap();
        let compiled = Runtime::compile(&new, &base, &shared).unwrap();
        let delta = ConfigDelta::between(&old, &new);
        assert!(delta.hosts.len() < new.hosts.len(), "{delta:?}");
        let patched = Runtime::patch(&base, &delta, Totals::of(&new), &shared);
        assert_eq!(view(&patched, 18), view(&compiled, 18));
        assert_eq!(patched.version, new.version);
        assert_eq!(patched.summary.hosts, compiled.summary.hosts);
        assert_eq!(patched.summary.pools, compiled.summary.pools);
        assert_eq!(patched.summary.endpoints, compiled.summary.endpoints);
        assert_eq!(patched.certs.len(), compiled.certs.len());
        // An untouched host's vhost is the same object as before.
        let untouched = HostPattern::parse("h5.test").unwrap();
        assert!(Arc::ptr_eq(
            base.routes.vhost_of(&untouched).unwrap(),
            patched.routes.vhost_of(&untouched).unwrap()
        ));
        // A host of the tenant whose limit changed was rebuilt (same model).
        let limited = HostPattern::parse("h10.test").unwrap();
        assert!(!Arc::ptr_eq(
            base.routes.vhost_of(&limited).unwrap(),
            patched.routes.vhost_of(&limited).unwrap()
        ));
        // A host on the changed pool was rebuilt onto the new pool object.
        let p1 = patched.routes.lookup("h3.test", "/").route().unwrap();
        assert!(Arc::ptr_eq(
            p1.action.pool().unwrap(),
            &patched.pools[&PoolId::new("p1")]
        ));
    }
}
