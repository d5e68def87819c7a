//! An HTTPRoute rule's backendRefs and mirror backends, resolved to pools.
//! A reference that cannot be resolved keeps its share of the traffic,
//! which is answered 500 (the spec's rule), and sets `ResolvedRefs=False`.

use crate::gateway_api::httproutes::{
    HttpRouteRules, HttpRouteRulesFiltersRequestMirrorBackendRef,
};
use crate::gateway_api::ReferenceGrant;

use super::*;

/// The fields of a backend reference, whichever struct holds them.
struct BackendRef<'r> {
    group: Option<&'r str>,
    kind: Option<&'r str>,
    name: &'r str,
    namespace: Option<&'r str>,
    port: Option<i32>,
}

impl<'a> Translator<'a> {
    /// The backend of a rule's backendRefs, weighted.
    pub(super) fn route_backend(
        &mut self,
        ns: &str,
        route: &str,
        index: usize,
        rule: &HttpRouteRules,
        grants: &[Arc<ReferenceGrant>],
        resolved: &mut Condition,
    ) -> Backend {
        let mut groups = Vec::new();
        // The Service pool of a rule with one live backend, shared with every
        // other route to it (one health state, one connection pool).
        let mut single = None;
        let (mut weight, mut unresolved) = (0u32, 0u32);
        let refs = rule.backend_refs.as_deref().unwrap_or_default();
        let live = refs.iter().filter(|b| b.weight.unwrap_or(1) > 0).count();
        for b in refs {
            let w = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
            let r = BackendRef {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
            };
            match self.resolve_ref(ns, &r, grants) {
                Ok((id, eps)) => {
                    if live == 1 && w > 0 {
                        single = Some((id, Pool::Endpoints(eps.clone())));
                    }
                    weight = weight.saturating_add(w);
                    groups.push((w, eps.into_iter().map(|e| e.address).collect()));
                }
                Err((reason, message)) => {
                    unresolved = unresolved.saturating_add(w);
                    *resolved = condition(ConditionType::ResolvedRefs, false, reason, message);
                }
            }
        }
        if weight == 0 {
            // Nothing to forward to: every request is a 500.
            return Backend::Unresolved;
        }
        let pool = match single {
            Some((id, pool)) => self.install_pool(id, Ok(pool), &mut Vec::new()),
            None => {
                let id = PoolId::new(format!("httproute/{ns}/{route}/{index}"));
                self.pools
                    .insert(id.clone(), Pool::Endpoints(merge_weighted(&groups)));
                Backend::Pool(id)
            }
        };
        match (pool, unresolved) {
            (pool, 0) => pool,
            (Backend::Pool(pool), unresolved) => Backend::Split {
                pool,
                weight,
                unresolved,
            },
            (other, _) => other,
        }
    }

    /// The pool of a RequestMirror filter's backend; `None` (and
    /// `resolved` set) when it cannot be resolved: the rule is served
    /// without that mirror.
    pub(super) fn mirror_pool(
        &mut self,
        ns: &str,
        mirror: &HttpRouteRulesFiltersRequestMirrorBackendRef,
        grants: &[Arc<ReferenceGrant>],
        resolved: &mut Condition,
    ) -> Option<PoolId> {
        let r = BackendRef {
            group: mirror.group.as_deref(),
            kind: mirror.kind.as_deref(),
            name: &mirror.name,
            namespace: mirror.namespace.as_deref(),
            port: mirror.port,
        };
        match self.resolve_ref(ns, &r, grants) {
            Ok((id, eps)) => {
                self.install_pool(id.clone(), Ok(Pool::Endpoints(eps)), &mut Vec::new());
                Some(id)
            }
            Err((reason, message)) => {
                *resolved = condition(ConditionType::ResolvedRefs, false, reason, message);
                None
            }
        }
    }

    /// A Service reference's pool id and endpoints, or why not.
    fn resolve_ref(
        &self,
        ns: &str,
        b: &BackendRef<'_>,
        grants: &[Arc<ReferenceGrant>],
    ) -> Result<(PoolId, Vec<Endpoint>), (Reason, String)> {
        if b.group.is_some_and(|g| !g.is_empty()) || b.kind.is_some_and(|k| k != "Service") {
            return Err((
                Reason::InvalidKind,
                format!("backendRef {}: only core Services are supported", b.name),
            ));
        }
        let svc_ns = b.namespace.unwrap_or(ns);
        if svc_ns != ns && !granted(grants, "HTTPRoute", ns, "Service", svc_ns, b.name) {
            return Err((
                Reason::RefNotPermitted,
                format!("no ReferenceGrant in {svc_ns} allows Service {}", b.name),
            ));
        }
        let Some(port) = b.port else {
            return Err((
                Reason::BackendNotFound,
                format!("backendRef {}: no port", b.name),
            ));
        };
        let (id, pool) = self
            .services
            .resolve(svc_ns, b.name, &PortRef::Number(port));
        match pool {
            Ok(Pool::Endpoints(eps)) => Ok((id, eps)),
            Ok(Pool::ExternalName { .. }) => Err((
                Reason::InvalidKind,
                format!("Service {svc_ns}/{} is ExternalName", b.name),
            )),
            Err(u) => Err((Reason::BackendNotFound, u.message)),
        }
    }
}
