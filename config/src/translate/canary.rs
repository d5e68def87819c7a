//! Canary Ingresses (ingress-nginx's `canary: "true"`): after every primary
//! Ingress is in, each canary takes a share of the route its primary
//! serves on the same host and path: `canary-weight` of every
//! `canary-weight-total` requests (one weighted pool of both Services'
//! endpoints), with `canary-by-header` the requests whose header says
//! `always` (or `canary-by-header-value`), and with `canary-by-cookie` those
//! whose cookie says `always`, while `never` keeps a request on the
//! primary. A canary is never served on its own: without a primary it
//! only gets a condition, so it can never take the production traffic.

use super::annotations::Canary;
use super::ingress::{identity, rule_host, rule_path};
use super::*;
use crate::model::CookieMatch;

impl<'a> Translator<'a> {
    pub(super) fn add_canary(
        &mut self,
        ingress: &'a Ingress,
        canary: &Canary,
        use_regex: bool,
        mut conditions: Vec<Condition>,
    ) {
        let (namespace, object, route_name) = identity(ingress);
        let name = object.name.clone();
        let mut served = 0usize;
        let no_spec = Default::default();
        let spec: &IngressSpec = ingress.spec.as_ref().unwrap_or(&no_spec);
        for rule in spec.rules.iter().flatten() {
            let Some(host) = rule_host(rule, &mut conditions) else {
                continue;
            };
            if let Err(c) = self.admit_host(&host, namespace) {
                conditions.push(c);
                continue;
            }
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                // The canary's paths are read as its primary's are (a
                // use-regex primary's canary carries use-regex too).
                let Some(matcher) = rule_path(&host, path, use_regex, &mut conditions) else {
                    continue;
                };
                let key = RouteKey::path(matcher.clone());
                let primary = self
                    .routes
                    .get(&host)
                    .and_then(|r| r.get(&key))
                    .filter(|e| e.owner.kind == ObjectKind::Ingress)
                    .map(|e| (e.backend.clone(), e.filters.clone(), e.timeouts()));
                let Some((Backend::Pool(primary), primary_filters, primary_timeouts)) = primary
                else {
                    conditions.push(Condition::new(
                        ConditionType::Accepted,
                        false,
                        Reason::CanaryWithoutPrimary,
                        format!("{host} {matcher}: no Ingress serves it, and a canary is only ever a share of one"),
                    ));
                    continue;
                };
                // A canary speaks its primary's protocol (ingress-nginx
                // takes every non-canary annotation from the primary).
                let protocol = self.upstream_protocols.get(&primary).cloned();
                let backend = self.ingress_backend(namespace, &path.backend, None, &mut conditions);
                let backend = match (backend, protocol.clone()) {
                    (Backend::Pool(id), Some(p)) => self.speaking(id, p),
                    (backend, _) => backend,
                };
                let Backend::Pool(canary_pool) = backend else {
                    continue;
                };
                served += 1;
                // The weighted share: one pool of both Services' endpoints.
                if canary.weight > 0 {
                    let endpoints = |id: &PoolId| match self.pools.get(id) {
                        Some(Pool::Endpoints(eps)) => {
                            Some(eps.iter().map(|e| e.address).collect::<Vec<_>>())
                        }
                        _ => None,
                    };
                    match (endpoints(&primary), endpoints(&canary_pool)) {
                        (Some(p), Some(c)) => {
                            let id = PoolId::new(format!("canary/{namespace}/{name}/{host}{}", matcher.as_str()));
                            let merged = merge_weighted(&[(canary.total - canary.weight, p), (canary.weight, c)]);
                            self.pools.insert(id.clone(), Pool::Endpoints(merged));
                            if let Some(p) = protocol {
                                self.upstream_protocols.insert(id.clone(), p);
                            }
                            if let Some(entry) = self.routes.get_mut(&host).and_then(|r| r.get_mut(&key)) {
                                entry.backend = Backend::Pool(id);
                            }
                        }
                        _ => conditions.push(Condition::new(
                            ConditionType::Accepted,
                            false,
                            Reason::UnsupportedBackend,
                            format!("{host} {matcher}: canary-weight needs Services with endpoints on both sides (not ExternalName)"),
                        )),
                    }
                }
                // The header (`always`, or the given value, to the canary;
                // `never` to the primary), then the cookie (`always` /
                // `never`), whatever the weight: ingress-nginx's order.
                let by_header = |value: &str| {
                    let header = Header {
                        name: HeaderName::try_from(canary.header.clone()?).ok()?,
                        value: HeaderText::try_from(value.to_string()).ok()?,
                    };
                    Some(Conditions {
                        headers: vec![header],
                        ..Default::default()
                    })
                };
                let by_cookie = |value: &str| {
                    Some(Conditions {
                        cookies: vec![CookieMatch {
                            name: canary.cookie.clone()?,
                            value: HeaderText::try_from(value.to_string()).ok()?,
                        }],
                        ..Default::default()
                    })
                };
                let to_canary = canary.header_value.as_deref().unwrap_or("always");
                let routes = self.routes.entry(host.clone()).or_default();
                for (when, pool) in [
                    (by_header(to_canary), &canary_pool),
                    (by_header("never"), &primary),
                    (by_cookie("always"), &canary_pool),
                    (by_cookie("never"), &primary),
                ] {
                    let Some(conditions) = when else { continue };
                    let key = RouteKey {
                        path: matcher.clone(),
                        conditions,
                    };
                    // The primary's protections (source ranges, auth,
                    // limits, body size, rewrites, CORS, affinity) and
                    // timeouts hold on these routes too: a header or cookie
                    // must never be a way around them.
                    routes.insert_new(key, || {
                        let mut entry = RouteEntry::new(
                            route_name.clone(),
                            Backend::Pool(pool.clone()),
                            object.clone(),
                        );
                        entry.filters = primary_filters.clone();
                        entry.set_timeouts(primary_timeouts);
                        entry
                    });
                }
            }
        }
        self.finish_ingress_status(object, conditions, served, 0);
    }
}
