//! The Gateway API phase: GatewayClasses of our controller, their Gateways'
//! listeners, and the HTTPRoutes attached to them, oldest first, compiled
//! into the same routes, TLS bindings and pools as Ingresses, with the
//! tenant hijack rules applied to route hostnames. Statuses follow the
//! spec's conditions and reasons.
//!
//! Served: listeners on port 80 (HTTP) and 443 (HTTPS, TLS terminated
//! with `certificateRefs`), `allowedRoutes` from Same and All, parentRef
//! `sectionName` and `port`, hostname intersection, the rules' matches and
//! filters ([`rules`]), weighted Service backendRefs with the 500 share of
//! unresolvable ones ([`backends`]), ReferenceGrants for backends and
//! certificates. Rules using anything else (RegularExpression, CORS,
//! backendRef filters) are dropped with `Accepted=False, reason
//! UnsupportedValue` on their parent, never served with a broader match.

use std::collections::BTreeMap;

use crate::gateway_api::gateways::{
    GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From_,
};
use crate::gateway_api::httproutes::HttpRouteParentRefs;
use crate::gateway_api::{Gateway, GatewayClass, HttpRoute, ReferenceGrant};
use crate::translate::status::{ListenerStatus, ParentStatus};

use super::*;

mod backends;
mod rules;
mod selector;

use rules::Action;

/// The `controllerName` of GatewayClasses Vestibule serves.
pub const GATEWAY_CONTROLLER: &str = "vestibule.dev/gateway-controller";
const GROUP: &str = "gateway.networking.k8s.io";
/// The Service port a listener port names: the gateway's listeners.
const HTTP_PORT: i32 = 80;
const HTTPS_PORT: i32 = 443;

/// A listener of one of our Gateways, as checked.
pub(super) struct Listener {
    name: String,
    port: i32,
    /// `None`: any hostname.
    hostname: Option<HostPattern>,
    /// Certificate of an HTTPS listener.
    tls: Option<HostTls>,
    from: Allowed,
    /// Routes may attach (accepted and HTTPRoute among its kinds).
    usable: bool,
    status: ListenerStatus,
}

/// The namespaces a listener admits routes from.
enum Allowed {
    All,
    Same,
    Selector(selector::Selector),
}

/// One of our Gateways.
pub(super) struct OurGateway {
    object: ObjectRef,
    listeners: Vec<Listener>,
}

fn object_ref(kind: ObjectKind, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: Some(namespace.to_string()),
        name: name.to_string(),
    }
}

fn condition(
    type_: ConditionType,
    status: bool,
    reason: Reason,
    message: impl Into<String>,
) -> Condition {
    Condition::new(type_, status, reason, message.into())
}

/// Whether a ReferenceGrant in `to_namespace` lets `(from_kind, from_namespace)`
/// refer to `to_kind` (core group) named `to_name` there.
fn granted(
    grants: &[Arc<ReferenceGrant>],
    from_kind: &str,
    from_namespace: &str,
    to_kind: &str,
    to_namespace: &str,
    to_name: &str,
) -> bool {
    grants
        .iter()
        .filter(|g| g.metadata.namespace.as_deref() == Some(to_namespace))
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_namespace)
                && g.spec.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
}

/// The hostnames a route serves through a listener (Gateway API hostname
/// intersection). `None`: they do not intersect.
pub fn intersect(
    listener: Option<&HostPattern>,
    route: &[HostPattern],
) -> Option<Vec<HostPattern>> {
    let Some(listener) = listener else {
        return Some(if route.is_empty() {
            vec![HostPattern::Any]
        } else {
            route.to_vec()
        });
    };
    if route.is_empty() {
        return Some(vec![listener.clone()]);
    }
    // A wildcard covers names ending in `.suffix` (any depth, as the
    // Gateway API says).
    let covers = |wild: &str, name: &str| name.strip_suffix(wild).is_some_and(|p| p.ends_with('.'));
    let mut out = Vec::new();
    for r in route {
        let hit = match (listener, r) {
            (HostPattern::Exact(l), HostPattern::Exact(h)) => (l == h).then(|| r.clone()),
            (HostPattern::Wildcard(s), HostPattern::Exact(h)) => {
                covers(s.as_str(), h.as_str()).then(|| r.clone())
            }
            (HostPattern::Exact(l), HostPattern::Wildcard(s)) => {
                covers(s.as_str(), l.as_str()).then(|| listener.clone())
            }
            (HostPattern::Wildcard(l), HostPattern::Wildcard(s)) => {
                if l == s || covers(l.as_str(), s.as_str()) {
                    Some(r.clone())
                } else if covers(s.as_str(), l.as_str()) {
                    Some(listener.clone())
                } else {
                    None
                }
            }
            (_, HostPattern::Any) | (HostPattern::Any, _) => Some(r.clone()),
        };
        if let Some(h) = hit {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

impl<'a> Translator<'a> {
    /// GatewayClasses, Gateways and HTTPRoutes, in that order.
    pub(super) fn add_gateway_api(&mut self, snapshot: &'a Snapshot) {
        let classes: Vec<&str> = by_age(&snapshot.gateway_classes, |c| &c.metadata)
            .into_iter()
            .filter(|c| c.spec.controller_name == GATEWAY_CONTROLLER)
            .filter_map(|c| c.metadata.name.as_deref())
            .collect();
        for class in by_age(&snapshot.gateway_classes, |c| &c.metadata) {
            self.class_status(class, &classes);
        }
        let mut gateways: BTreeMap<(String, String), OurGateway> = BTreeMap::new();
        for gw in by_age(&snapshot.gateways, |g| &g.metadata) {
            if classes.contains(&gw.spec.gateway_class_name.as_str()) {
                let ours = self.gateway(gw, &snapshot.reference_grants);
                let ns = gw.metadata.namespace.clone().unwrap_or_default();
                let name = gw.metadata.name.clone().unwrap_or_default();
                gateways.insert((ns, name), ours);
            }
        }
        for route in by_age(&snapshot.http_routes, |r| &r.metadata) {
            self.http_route(route, &mut gateways, &snapshot.reference_grants);
        }
        for (_, gw) in gateways {
            let accepted = gw.listeners.iter().any(|l| l.usable);
            let conditions = vec![
                if accepted {
                    condition(
                        ConditionType::Accepted,
                        true,
                        Reason::Accepted,
                        "accepted by vestibule",
                    )
                } else {
                    condition(
                        ConditionType::Accepted,
                        false,
                        Reason::ListenersNotValid,
                        "no listener can be served",
                    )
                },
                condition(
                    ConditionType::Programmed,
                    accepted,
                    if accepted {
                        Reason::Programmed
                    } else {
                        Reason::Invalid
                    },
                    if accepted {
                        "served by every gateway replica"
                    } else {
                        "nothing to serve"
                    },
                ),
            ];
            let mut status = ObjectStatus::new(gw.object.clone(), conditions);
            status.listeners = gw.listeners.into_iter().map(|l| l.status).collect();
            self.statuses.insert(gw.object, status);
        }
    }

    /// A namespace's labels, with the name label every namespace has.
    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels: BTreeMap<String, String> = self
            .namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert(selector::NAME_LABEL.to_string(), ns.to_string());
        labels
    }

    fn class_status(&mut self, class: &GatewayClass, ours: &[&str]) {
        let name = class.metadata.name.as_deref().unwrap_or_default();
        if !ours.contains(&name) {
            return;
        }
        let object = ObjectRef {
            kind: ObjectKind::GatewayClass,
            namespace: None,
            name: name.to_string(),
        };
        let accepted = condition(
            ConditionType::Accepted,
            true,
            Reason::Accepted,
            format!("handled by {GATEWAY_CONTROLLER}"),
        );
        self.statuses
            .insert(object.clone(), ObjectStatus::new(object, vec![accepted]));
    }

    fn gateway(&mut self, gw: &Gateway, grants: &[Arc<ReferenceGrant>]) -> OurGateway {
        let ns = gw.metadata.namespace.as_deref().unwrap_or("default");
        let name = gw.metadata.name.as_deref().unwrap_or_default();
        let mut listeners: Vec<Listener> = gw
            .spec
            .listeners
            .iter()
            .map(|l| self.listener(ns, l, grants))
            .collect();
        // Two listeners on one port with the same hostname conflict: both
        // are refused (the spec's HostnameConflict).
        for i in 0..listeners.len() {
            let clash = listeners.iter().enumerate().any(|(j, o)| {
                j != i && o.port == listeners[i].port && o.hostname == listeners[i].hostname
            });
            let l = &mut listeners[i];
            l.status.conditions.push(if clash {
                l.usable = false;
                condition(
                    ConditionType::Conflicted,
                    true,
                    Reason::HostnameConflict,
                    "another listener has this port and hostname",
                )
            } else {
                condition(
                    ConditionType::Conflicted,
                    false,
                    Reason::NoConflicts,
                    "no conflict",
                )
            });
            let programmed = l.usable;
            l.status.conditions.push(condition(
                ConditionType::Programmed,
                programmed,
                if programmed {
                    Reason::Programmed
                } else {
                    Reason::Invalid
                },
                if programmed { "served" } else { "not served" },
            ));
        }
        OurGateway {
            object: object_ref(ObjectKind::Gateway, ns, name),
            listeners,
        }
    }

    fn listener(
        &mut self,
        ns: &str,
        l: &GatewayListeners,
        grants: &[Arc<ReferenceGrant>],
    ) -> Listener {
        let mut conditions = Vec::new();
        let mut usable = true;
        let mut refuse = |conditions: &mut Vec<Condition>, reason: Reason, message: String| {
            conditions.push(condition(ConditionType::Accepted, false, reason, message));
            usable = false;
        };
        let hostname = match l.hostname.as_deref() {
            None | Some("") => None,
            Some(raw) => match HostPattern::parse(raw) {
                Ok(h) => Some(h),
                Err(e) => {
                    refuse(&mut conditions, Reason::InvalidHost, e.to_string());
                    None
                }
            },
        };
        match (l.port, l.protocol.as_str()) {
            (HTTP_PORT, "HTTP") | (HTTPS_PORT, "HTTPS") => {}
            (HTTP_PORT | HTTPS_PORT, p) => refuse(
                &mut conditions,
                Reason::UnsupportedProtocol,
                format!(
                    "protocol {p} on port {}: port 80 serves HTTP and 443 HTTPS",
                    l.port
                ),
            ),
            (port, _) => refuse(
                &mut conditions,
                Reason::PortUnavailable,
                format!("port {port}: the gateway listens on 80 (--http) and 443 (--https)"),
            ),
        }
        let mut resolved = condition(
            ConditionType::ResolvedRefs,
            true,
            Reason::ResolvedRefs,
            "all references resolved",
        );
        let allowed = l.allowed_routes.as_ref();
        if let Some(kinds) = allowed.and_then(|a| a.kinds.as_ref()) {
            let http_route = kinds
                .iter()
                .any(|k| k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == GROUP));
            if !http_route {
                resolved = condition(
                    ConditionType::ResolvedRefs,
                    false,
                    Reason::InvalidRouteKinds,
                    "only HTTPRoute is supported",
                );
                usable = false;
            }
        }
        let namespaces = allowed.and_then(|a| a.namespaces.as_ref());
        let mut bad_selector = false;
        let from = match namespaces
            .and_then(|n| n.from.clone())
            .unwrap_or(From_::Same)
        {
            From_::All => Allowed::All,
            From_::Same => Allowed::Same,
            From_::Selector => {
                let raw = namespaces
                    .and_then(|n| n.selector.clone())
                    .unwrap_or_default();
                match selector::Selector::new(&raw) {
                    Ok(s) => Allowed::Selector(s),
                    Err(e) => {
                        conditions.push(condition(
                            ConditionType::Accepted,
                            false,
                            Reason::UnsupportedValue,
                            format!("allowedRoutes.namespaces.selector: {e}"),
                        ));
                        bad_selector = true;
                        Allowed::Same
                    }
                }
            }
        };
        let tls = if l.protocol == "HTTPS" {
            let cert = l
                .tls
                .as_ref()
                .and_then(|t| t.certificate_refs.as_ref())
                .and_then(|refs| refs.first());
            match cert {
                None => {
                    resolved = condition(
                        ConditionType::ResolvedRefs,
                        false,
                        Reason::InvalidCertificateRef,
                        "an HTTPS listener needs tls.certificateRefs",
                    );
                    usable = false;
                    None
                }
                Some(c)
                    if c.kind.as_deref().is_some_and(|k| k != "Secret")
                        || c.group.as_deref().is_some_and(|g| !g.is_empty()) =>
                {
                    resolved = condition(
                        ConditionType::ResolvedRefs,
                        false,
                        Reason::InvalidCertificateRef,
                        "certificateRefs must name a core Secret",
                    );
                    usable = false;
                    None
                }
                Some(c) => {
                    let secret_ns = c.namespace.as_deref().unwrap_or(ns);
                    if secret_ns != ns
                        && !granted(grants, "Gateway", ns, "Secret", secret_ns, &c.name)
                    {
                        resolved = condition(
                            ConditionType::ResolvedRefs,
                            false,
                            Reason::RefNotPermitted,
                            format!("no ReferenceGrant in {secret_ns} allows Secret {}", c.name),
                        );
                        usable = false;
                        None
                    } else {
                        let mut problems = Vec::new();
                        let tls = self.certificate(secret_ns, &c.name, &mut problems);
                        let problem = match &tls {
                            HostTls::Unavailable(u) => Some(u.message.clone()),
                            HostTls::Certificate(_) => {
                                problems.into_iter().next().map(|p| p.message)
                            }
                        };
                        if let Some(message) = problem {
                            resolved = condition(
                                ConditionType::ResolvedRefs,
                                false,
                                Reason::InvalidCertificateRef,
                                message,
                            );
                        }
                        Some(tls)
                    }
                }
            }
        } else {
            None
        };
        usable &= !bad_selector;
        if usable {
            conditions.push(condition(
                ConditionType::Accepted,
                true,
                Reason::Accepted,
                "accepted",
            ));
        }
        conditions.push(resolved);
        Listener {
            name: l.name.clone(),
            port: l.port,
            hostname,
            tls,
            from,
            usable,
            status: ListenerStatus {
                name: l.name.clone(),
                attached_routes: 0,
                conditions,
            },
        }
    }

    fn http_route(
        &mut self,
        route: &HttpRoute,
        gateways: &mut BTreeMap<(String, String), OurGateway>,
        grants: &[Arc<ReferenceGrant>],
    ) {
        let ns = route.metadata.namespace.as_deref().unwrap_or("default");
        let name = route.metadata.name.as_deref().unwrap_or_default();
        let object = object_ref(ObjectKind::HttpRoute, ns, name);
        let mut hostnames = Vec::new();
        for raw in route.spec.hostnames.iter().flatten() {
            if let Ok(h) = HostPattern::parse(raw) {
                hostnames.push(h);
            }
        }
        let mut parents = Vec::new();
        for parent in route.spec.parent_refs.iter().flatten() {
            if parent.group.as_deref().is_some_and(|g| g != GROUP)
                || parent.kind.as_deref().is_some_and(|k| k != "Gateway")
            {
                continue;
            }
            let gw_ns = parent.namespace.as_deref().unwrap_or(ns);
            let Some(gw) = gateways.get_mut(&(gw_ns.to_string(), parent.name.clone())) else {
                // Not one of our Gateways: another controller's business.
                continue;
            };
            let conditions = self.attach(route, ns, &object, parent, gw, &hostnames, grants);
            parents.push(ParentStatus {
                gateway: format!("{gw_ns}/{}", parent.name),
                section_name: parent.section_name.clone(),
                port: parent.port,
                conditions,
            });
        }
        if !parents.is_empty() {
            let mut status = ObjectStatus::new(object.clone(), Vec::new());
            status.parents = parents;
            self.statuses.insert(object, status);
        }
    }

    /// Attaches `route` to the listeners of `gw` that `parent` selects;
    /// returns the parent's conditions.
    #[allow(clippy::too_many_arguments)]
    fn attach(
        &mut self,
        route: &HttpRoute,
        ns: &str,
        object: &ObjectRef,
        parent: &HttpRouteParentRefs,
        gw: &mut OurGateway,
        hostnames: &[HostPattern],
        grants: &[Arc<ReferenceGrant>],
    ) -> Vec<Condition> {
        let gw_ns = gw.object.namespace.clone().unwrap_or_default();
        let selected: Vec<usize> = gw
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
            .filter(|(_, l)| parent.port.is_none_or(|p| p == l.port))
            .map(|(i, _)| i)
            .collect();
        if selected.is_empty() {
            return vec![condition(
                ConditionType::Accepted,
                false,
                Reason::NoMatchingParent,
                "no listener matches the parentRef's sectionName and port",
            )];
        }
        let allowed: Vec<usize> = selected
            .into_iter()
            .filter(|&i| gw.listeners[i].usable)
            .filter(|&i| match &gw.listeners[i].from {
                Allowed::All => true,
                Allowed::Same => ns == gw_ns,
                Allowed::Selector(s) => s.matches(&self.namespace_labels(ns)),
            })
            .collect();
        if allowed.is_empty() {
            return vec![condition(
                ConditionType::Accepted,
                false,
                Reason::NotAllowedByListeners,
                "no listener allows routes from this namespace",
            )];
        }
        let mut targets: Vec<(usize, Vec<HostPattern>)> = Vec::new();
        for i in allowed {
            if let Some(hosts) = intersect(gw.listeners[i].hostname.as_ref(), hostnames) {
                targets.push((i, hosts));
            }
        }
        if targets.is_empty() {
            return vec![condition(
                ConditionType::Accepted,
                false,
                Reason::NoMatchingListenerHostname,
                "no listener hostname intersects the route's hostnames",
            )];
        }

        let route_name = RouteName::new(format!("httproute/{ns}/{}", object.name));
        let mut resolved = condition(
            ConditionType::ResolvedRefs,
            true,
            Reason::ResolvedRefs,
            "all references resolved",
        );
        let mut unsupported = Vec::new();
        let mut not_allowed: Option<Condition> = None;
        let mut served = 0usize;
        for (index, rule) in route.spec.rules.iter().flatten().enumerate() {
            let converted = match rules::convert(rule) {
                Ok(r) => r,
                Err(why) => {
                    unsupported.push(format!("rule {index}: {why}"));
                    continue;
                }
            };
            let backend = match converted.action {
                Action::Redirect(r) => Backend::Redirect(Box::new(r)),
                Action::Forward => {
                    self.route_backend(ns, &object.name, index, rule, grants, &mut resolved)
                }
            };
            let mut filters = converted.filters;
            for mirror in converted.mirrors {
                if let Some(pool) = self.mirror_pool(ns, mirror, grants, &mut resolved) {
                    filters.push(Filter::Mirror(pool));
                }
            }
            for (i, hosts) in &targets {
                for host in hosts {
                    let tenant = match self.admit_host(host, ns) {
                        Ok(t) => t,
                        Err(c) => {
                            not_allowed.get_or_insert(c);
                            continue;
                        }
                    };
                    if let Some(tls) = &gw.listeners[*i].tls {
                        self.tls.entry(host.clone()).or_insert_with(|| TlsBinding {
                            tls: tls.clone(),
                            owner: gw.object.clone(),
                        });
                    }
                    if matches!(host, HostPattern::Wildcard(_)) {
                        self.any_depth.insert(host.clone());
                    }
                    for key in &converted.keys {
                        let entries = self.routes.entry(host.clone()).or_default();
                        entries.insert_new(key.clone(), || RouteEntry {
                            name: route_name.clone(),
                            filters: filters.clone(),
                            timeout_ms: converted.timeout_ms,
                            connect_timeout_ms: None,
                            send_timeout_ms: None,
                            backend: backend.clone(),
                            owner: object.clone(),
                        });
                        served += 1;
                    }
                    if let Some(t) = tenant {
                        self.count_tenant_route(t);
                    }
                }
            }
        }
        for (i, _) in &targets {
            gw.listeners[*i].status.attached_routes += 1;
        }
        // One condition per type: what is dropped is said in the message.
        let mut dropped = Vec::new();
        dropped.extend(unsupported.iter().cloned());
        if let Some(c) = &not_allowed {
            dropped.push(c.message.clone());
        }
        let accepted = match (served, &not_allowed) {
            (0, Some(c)) if unsupported.is_empty() => {
                condition(ConditionType::Accepted, false, c.reason, dropped.join("; "))
            }
            (0, _) if !dropped.is_empty() => condition(
                ConditionType::Accepted,
                false,
                Reason::UnsupportedValue,
                dropped.join("; "),
            ),
            (n, _) => {
                let mut message = format!("serving {n} route(s)");
                for d in &dropped {
                    message.push_str("; dropped: ");
                    message.push_str(d);
                }
                condition(ConditionType::Accepted, true, Reason::Accepted, message)
            }
        };
        vec![accepted, resolved]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(v: &[&str]) -> Vec<HostPattern> {
        v.iter().map(|h| HostPattern::parse(h).unwrap()).collect()
    }

    #[test]
    fn hostname_intersection_follows_the_spec() {
        let l = |h: &str| HostPattern::parse(h).unwrap();
        assert_eq!(intersect(None, &[]), Some(vec![HostPattern::Any]));
        assert_eq!(intersect(Some(&l("a.com")), &[]), Some(hosts(&["a.com"])));
        assert_eq!(intersect(Some(&l("a.com")), &hosts(&["b.com"])), None);
        // A wildcard listener covers names at any depth below it.
        assert_eq!(
            intersect(
                Some(&l("*.wildcard.io")),
                &hosts(&["foo.wildcard.io", "a.b.wildcard.io", "wildcard.io", "x.io"])
            ),
            Some(hosts(&["foo.wildcard.io", "a.b.wildcard.io"]))
        );
        // A wildcard route hostname narrows to the listener's exact name.
        assert_eq!(
            intersect(Some(&l("very.specific.com")), &hosts(&["*.specific.com"])),
            Some(hosts(&["very.specific.com"]))
        );
        assert_eq!(
            intersect(Some(&l("*.com")), &hosts(&["*.example.com"])),
            Some(hosts(&["*.example.com"]))
        );
    }
}
