//! The compiled route table: request host -> virtual host -> path route.
//!
//! Built once per config (off the request path) and then only read. Lookups
//! never allocate: the host is normalized into a stack buffer, exact hosts and
//! wildcard suffixes are single hash-map probes, so the cost does not grow
//! with the number of hosts. The table is generic over the route payload `R`
//! so this module stays pure (no pools, no metrics) and benchmarkable.

mod host;
mod hostmap;
mod path;
mod request;

pub use host::{normalize_host, wildcard_label, BadHost, HostBuf};
pub use hostmap::HostMap;
pub use path::PathTable;
pub use request::{cookie, RequestView};

use std::sync::Arc;

use vestibule_config::model::{GatewayConfig, Route, TenantId, VirtualHost};
use vestibule_config::HostPattern;

/// One virtual host after compilation.
#[derive(Debug)]
pub struct VhostEntry<R> {
    pub pattern: HostPattern,
    /// What it was compiled from: a patch recompiles it when a pool or a
    /// tenant limit it uses changes.
    pub model: Arc<VirtualHost>,
    pub tenant: Option<TenantId>,
    /// `X-Tenant-Id` value, built once so requests only clone a refcount.
    pub tenant_header: Option<http::HeaderValue>,
    /// Plain HTTP requests to the host are redirected to https (it has
    /// TLS, unless an annotation says to serve plain HTTP, or one says to
    /// redirect always).
    pub redirect_http: bool,
    pub paths: PathTable<R>,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<'a, R> {
    /// A route of the matched virtual host.
    Route {
        vhost: &'a VhostEntry<R>,
        route: &'a R,
    },
    /// No route matched (unknown host, or no path of its vhost matched) and
    /// a default backend is configured. `vhost` is the matched host, if any.
    Default {
        vhost: Option<&'a VhostEntry<R>>,
        route: &'a R,
    },
    /// A known host none of whose routes matches the path, no default backend.
    NoRoute { vhost: &'a VhostEntry<R> },
    /// No virtual host for this host, no default backend.
    NoHost,
}

impl<'a, R> Lookup<'a, R> {
    /// The matched virtual host, whatever the route outcome.
    pub fn vhost(&self) -> Option<&'a VhostEntry<R>> {
        match *self {
            Lookup::Route { vhost, .. } | Lookup::NoRoute { vhost } => Some(vhost),
            Lookup::Default { vhost, .. } => vhost,
            Lookup::NoHost => None,
        }
    }

    pub fn route(&self) -> Option<&'a R> {
        match *self {
            Lookup::Route { route, .. } | Lookup::Default { route, .. } => Some(route),
            _ => None,
        }
    }
}

// === impl RouteTable ===

/// Host -> vhost -> route, precedence: exact host, then `*.suffix` with one
/// extra label, then the `*` vhost; within the chosen vhost, Exact path, then
/// the longest Prefix by path element; then the default backend.
///
/// A request is served by the most specific vhost whose pattern matches its
/// host only: when that vhost has no route for the path, the request does not
/// fall through to a less specific vhost (as with nginx server blocks), but
/// goes to the default backend or gets 404.
#[derive(Debug)]
pub struct RouteTable<R> {
    /// Each pattern's vhost, shared with the tables patched from this one.
    hosts: HostMap<Arc<VhostEntry<R>>>,
    default: Option<R>,
}

impl<R> Default for RouteTable<R> {
    fn default() -> Self {
        Self {
            hosts: HostMap::default(),
            default: None,
        }
    }
}

impl<R> VhostEntry<R> {
    /// Compiles one vhost; `route` builds the payload of each route.
    pub fn compile<F>(model: Arc<VirtualHost>, mut route: F) -> Self
    where
        F: FnMut(&VirtualHost, &Route) -> R,
    {
        let vhost = &*model;
        let paths = PathTable::build(
            vhost
                .routes
                .iter()
                .map(|r| (&r.path, &r.conditions, route(vhost, r))),
        );
        VhostEntry {
            pattern: vhost.host.clone(),
            tenant: vhost.tenant.clone(),
            tenant_header: vhost
                .tenant
                .as_ref()
                .and_then(|t| http::HeaderValue::from_str(t.as_str()).ok()),
            redirect_http: vhost.plain_http.redirects(vhost.tls.is_some()),
            paths,
            model,
        }
    }
}

impl<R> RouteTable<R> {
    /// Compiles the config's virtual hosts. `route` builds the payload of
    /// each route; `default` is the payload of the default backend, if any.
    /// When two vhosts share a pattern (the translator never emits that) the
    /// first one wins.
    pub fn build<F>(config: &GatewayConfig, mut route: F, default: Option<R>) -> Self
    where
        F: FnMut(&VirtualHost, &Route) -> R,
    {
        let mut table = RouteTable {
            hosts: HostMap::with_capacity(config.hosts.len()),
            default,
        };
        for vhost in &config.hosts {
            if table.hosts.get_pattern(&vhost.host).is_some() {
                continue;
            }
            let entry = Arc::new(VhostEntry::compile(Arc::new(vhost.clone()), &mut route));
            table.hosts.insert(&vhost.host, vhost.wildcard, entry);
        }
        table
    }

    /// A copy sharing every vhost but those `removed` and `set`, and with
    /// `default` as its default route.
    pub fn patched(
        &self,
        removed: &[HostPattern],
        set: Vec<VhostEntry<R>>,
        default: Option<R>,
    ) -> Self {
        let mut hosts = self.hosts.clone();
        for p in removed {
            hosts.remove(p);
        }
        for entry in set {
            let (pattern, depth) = (entry.pattern.clone(), entry.model.wildcard);
            hosts.set(&pattern, depth, Arc::new(entry));
        }
        RouteTable { hosts, default }
    }

    /// Finds the route for a normalized host (see [`normalize_host`]) and a
    /// request (a bare path is a GET with no headers).
    #[inline]
    pub fn lookup<'a, Q: RequestView + ?Sized>(&'a self, host: &str, req: &Q) -> Lookup<'a, R> {
        match self.vhost(host) {
            Some(vhost) => match vhost.paths.lookup(req) {
                Some(route) => Lookup::Route { vhost, route },
                // A tenant's host never falls to the cluster-wide default
                // backend: that belongs to whichever namespace set it, and
                // serving tenant traffic from it would bypass hijack checks.
                None if vhost.tenant.is_some() => Lookup::NoRoute { vhost },
                None => match &self.default {
                    Some(route) => Lookup::Default {
                        vhost: Some(vhost),
                        route,
                    },
                    None => Lookup::NoRoute { vhost },
                },
            },
            None => match &self.default {
                Some(route) => Lookup::Default { vhost: None, route },
                None => Lookup::NoHost,
            },
        }
    }

    /// The most specific virtual host for a normalized host.
    #[inline]
    pub fn vhost(&self, host: &str) -> Option<&VhostEntry<R>> {
        self.hosts.get(host).map(|v| &**v)
    }

    /// The vhost of `pattern` itself (not a lookup).
    pub fn vhost_of(&self, pattern: &HostPattern) -> Option<&Arc<VhostEntry<R>>> {
        self.hosts.get_pattern(pattern)
    }

    /// Every vhost, in no order.
    pub fn vhosts(&self) -> impl Iterator<Item = &Arc<VhostEntry<R>>> {
        self.hosts.values()
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn default_route(&self) -> Option<&R> {
        self.default.as_ref()
    }

    /// Every route payload, for wiring (metrics, pools) after the build.
    pub fn routes(&self) -> impl Iterator<Item = &R> {
        self.hosts
            .values()
            .flat_map(|v| v.paths.routes())
            .chain(self.default.iter())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vestibule_config::model::{PathMatch, PoolId, RouteName};

    fn route(name: &str, path: PathMatch) -> Route {
        Route::to_pool(RouteName::new(name), path, PoolId::new("p"))
    }

    fn vhost(host: &str, routes: Vec<Route>) -> VirtualHost {
        VirtualHost {
            host: HostPattern::parse(host).unwrap(),
            tenant: None,
            tls: None,
            wildcard: Default::default(),
            plain_http: Default::default(),
            routes,
        }
    }

    fn table(hosts: Vec<VirtualHost>, default: bool) -> RouteTable<String> {
        let config = GatewayConfig {
            hosts,
            ..Default::default()
        };
        RouteTable::build(
            &config,
            |v, r| format!("{} {}", v.host, r.name),
            default.then(|| "default".to_string()),
        )
    }

    fn hit(t: &RouteTable<String>, host: &str, path: &str) -> Option<String> {
        t.lookup(host, path).route().cloned()
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let t = table(
            vec![
                vhost(
                    "a.example.com",
                    vec![route("exact", PathMatch::prefix("/"))],
                ),
                vhost("*.example.com", vec![route("wild", PathMatch::prefix("/"))]),
                vhost("*", vec![route("any", PathMatch::prefix("/"))]),
            ],
            false,
        );
        assert_eq!(
            hit(&t, "a.example.com", "/").unwrap(),
            "a.example.com exact"
        );
        assert_eq!(
            hit(&t, "b.example.com", "/x").unwrap(),
            "*.example.com wild"
        );
        // Wildcards match exactly one extra label.
        assert_eq!(hit(&t, "x.b.example.com", "/").unwrap(), "* any");
        assert_eq!(hit(&t, "example.com", "/").unwrap(), "* any");
        assert_eq!(hit(&t, "other.org", "/").unwrap(), "* any");
    }

    #[test]
    fn unknown_host_is_no_host_or_default() {
        let hosts = || vec![vhost("a.io", vec![route("r", PathMatch::prefix("/api"))])];
        let t = table(hosts(), false);
        assert!(matches!(t.lookup("b.io", "/"), Lookup::NoHost));
        assert!(matches!(t.lookup("a.io", "/web"), Lookup::NoRoute { .. }));
        let t = table(hosts(), true);
        assert!(matches!(
            t.lookup("b.io", "/"),
            Lookup::Default { vhost: None, .. }
        ));
        // A known host whose paths don't match also falls to the default
        // backend, and keeps its vhost (for the tenant header).
        assert!(matches!(
            t.lookup("a.io", "/web"),
            Lookup::Default { vhost: Some(_), .. }
        ));
        assert_eq!(hit(&t, "a.io", "/api/x").unwrap(), "a.io r");
    }

    #[test]
    fn tenant_hosts_never_use_the_default_backend() {
        let mut owned = vhost("acme.io", vec![route("api", PathMatch::prefix("/api"))]);
        owned.tenant = Some(TenantId::new("acme"));
        let t = table(vec![owned, vhost("b.io", vec![])], true);
        assert!(matches!(
            t.lookup("acme.io", "/web"),
            Lookup::NoRoute { .. }
        ));
        assert_eq!(hit(&t, "acme.io", "/api").unwrap(), "acme.io api");
        assert!(matches!(t.lookup("b.io", "/web"), Lookup::Default { .. }));
    }

    #[test]
    fn most_specific_vhost_does_not_fall_through() {
        let t = table(
            vec![
                vhost("a.io", vec![route("api", PathMatch::prefix("/api"))]),
                vhost("*", vec![route("any", PathMatch::prefix("/"))]),
            ],
            false,
        );
        assert!(matches!(t.lookup("a.io", "/web"), Lookup::NoRoute { .. }));
    }

    #[test]
    fn duplicate_patterns_keep_the_first() {
        let t = table(
            vec![
                vhost("a.io", vec![route("first", PathMatch::prefix("/"))]),
                vhost("a.io", vec![route("second", PathMatch::prefix("/"))]),
            ],
            false,
        );
        assert_eq!(hit(&t, "a.io", "/").unwrap(), "a.io first");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn routes_iterates_every_payload() {
        let t = table(
            vec![vhost(
                "a.io",
                vec![
                    route("x", PathMatch::Exact("/x".into())),
                    route("y", PathMatch::prefix("/y")),
                ],
            )],
            true,
        );
        assert_eq!(t.routes().count(), 3);
    }
}
