//! The output phase: the collected routes, TLS bindings, pools and
//! certificates assembled into a sorted, content-versioned `GatewayConfig`,
//! and the statuses of every object read.

use super::*;

impl<'a> Translator<'a> {
    pub(super) fn finish(self) -> (Translation, Option<CertificateMemo>) {
        let mut hosts = Vec::with_capacity(self.routes.len());
        for (host, routes) in self.routes {
            let tenant = self
                .ownership
                .owner(&host)
                .map(|t| self.tenants[t].id.clone());
            let tls = self
                .tls
                .get(&host)
                .or_else(|| match &host {
                    // A wildcard certificate covers an exact host one label
                    // below it, unless a Tenant owns one but not the other:
                    // a foreign `*.acme.io` must not put TLS on a tenant's
                    // `shop.acme.io`.
                    HostPattern::Exact(h) => h.parent().and_then(|p| {
                        let wildcard = HostPattern::parse(&format!("*.{p}")).ok()?;
                        let same_owner =
                            self.ownership.owner(&wildcard) == self.ownership.owner(&host);
                        same_owner.then(|| self.tls.get(&wildcard)).flatten()
                    }),
                    _ => None,
                })
                .map(|b| b.tls.clone());
            let routes = routes.into_routes();
            let plain_http = self.plain_http.get(&host).copied().unwrap_or_default();
            let wildcard = if self.any_depth.contains(&host) {
                WildcardDepth::AnyDepth
            } else {
                WildcardDepth::OneLabel
            };
            hosts.push(VirtualHost {
                host,
                tenant,
                tls,
                wildcard,
                plain_http,
                routes,
            });
        }
        let default_backend = self.default_backend.map(|(b, _)| b);

        // Keep only what the served config refers to.
        let used_pools: BTreeSet<&PoolId> = hosts
            .iter()
            .flat_map(|h| h.routes.iter().flat_map(Route::pools))
            .chain(default_backend.as_ref().and_then(Backend::pool))
            .collect();
        let pools = self
            .pools
            .into_iter()
            .filter(|(id, _)| used_pools.contains(id))
            .collect();
        let upstream_protocols = self
            .upstream_protocols
            .into_iter()
            .filter(|(id, _)| used_pools.contains(id))
            .collect();
        let used_certs: BTreeSet<&CertId> = hosts
            .iter()
            .filter_map(|h| h.tls.as_ref().and_then(HostTls::certificate))
            .collect();
        let certificates = self
            .certificates
            .into_iter()
            .filter(|(id, _)| used_certs.contains(id))
            .collect();
        let tenants = self
            .tenants
            .iter()
            .filter(|t| !t.domains.is_empty())
            .map(|t| {
                let mut domains = t.domains.clone();
                domains.sort();
                (
                    t.id.clone(),
                    TenantConfig {
                        domains,
                        rate_limit: t.object.spec.rate_limit,
                        // Set by the operator when it divides the limit.
                        cluster_rate_limit: None,
                    },
                )
            })
            .collect();

        let config = GatewayConfig {
            version: Default::default(),
            hosts,
            default_backend,
            pools,
            upstream_protocols,
            certificates,
            tenants,
            // Pending ACME challenges come from the issuer, not from objects.
            acme_http01: Default::default(),
            acme_tls_alpn01: Default::default(),
        }
        .seal();
        let translation = Translation {
            config,
            statuses: self.statuses.into_values().collect(),
            acme: self.acme,
        };
        (translation, self.memo.map(|(_, next)| next))
    }
}
