//! Tenant domain ownership: which Tenant owns a host, in age order, so the
//! older of two Tenants keeps a contested domain and Ingresses outside a
//! Tenant's namespaces cannot route its hosts.

use std::collections::{BTreeSet, HashMap};

use crate::hostname::HostPattern;
use crate::model::TenantId;
use crate::tenant::{SecretRef, Tenant, TenantTls};

/// A Tenant that passed validation, with the domains it keeps.
pub struct AcceptedTenant<'a> {
    pub id: TenantId,
    pub object: &'a Tenant,
    pub domains: Vec<HostPattern>,
    pub namespaces: BTreeSet<&'a str>,
}

/// Domain -> owning tenant (index into the accepted list).
#[derive(Default)]
pub struct Ownership {
    exact: HashMap<String, usize>,
    /// `*.suffix` domains by suffix.
    wildcard: HashMap<String, usize>,
    /// Parents of exact domains, so a later `*.parent` claim is seen to overlap.
    exact_parents: HashMap<String, usize>,
}

impl Ownership {
    /// The tenant that owns every host `pattern` can match, if any.
    pub fn owner(&self, pattern: &HostPattern) -> Option<usize> {
        match pattern {
            HostPattern::Exact(h) => self
                .exact
                .get(h.as_str())
                .or_else(|| h.parent().and_then(|p| self.wildcard.get(p)))
                .copied(),
            HostPattern::Wildcard(s) => self.wildcard.get(s.as_str()).copied(),
            HostPattern::Any => None,
        }
    }

    /// The tenant whose domains overlap `pattern` (same domain, or one
    /// matching the other), if any.
    pub fn overlapping(&self, pattern: &HostPattern) -> Option<usize> {
        self.owner(pattern).or_else(|| match pattern {
            HostPattern::Wildcard(s) => self.exact_parents.get(s.as_str()).copied(),
            _ => None,
        })
    }

    pub fn claim(&mut self, pattern: &HostPattern, tenant: usize) {
        match pattern {
            HostPattern::Exact(h) => {
                self.exact.insert(h.as_str().to_string(), tenant);
                if let Some(p) = h.parent() {
                    self.exact_parents.entry(p.to_string()).or_insert(tenant);
                }
            }
            HostPattern::Wildcard(s) => {
                self.wildcard.insert(s.as_str().to_string(), tenant);
            }
            HostPattern::Any => {}
        }
    }
}

// === impl Translator: this phase ===

use super::*;

impl<'a> Translator<'a> {
    /// Accepts tenants oldest first; each keeps the domains no older tenant claimed.
    pub(super) fn accept_tenants(&mut self) {
        for tenant in self.tenants_sorted.clone() {
            let name = tenant.metadata.name.clone().unwrap_or_default();
            let object = tenant_ref(&name);
            let mut conditions = Vec::new();
            let mut domains: Vec<HostPattern> = Vec::new();
            let mut conflicts = Vec::new();
            for raw in &tenant.spec.domains {
                let domain = match HostPattern::parse(raw) {
                    Ok(HostPattern::Any) | Err(_) => {
                        conditions.push(Condition::new(
                            ConditionType::Accepted,
                            false,
                            Reason::InvalidDomain,
                            format!("domain {raw:?} is not a hostname or *.wildcard"),
                        ));
                        continue;
                    }
                    Ok(d) => d,
                };
                if domains.contains(&domain) {
                    continue;
                }
                match self.ownership.overlapping(&domain) {
                    Some(older) => conflicts.push(format!(
                        "{domain} (owned by Tenant {})",
                        self.tenants[older].id
                    )),
                    None => domains.push(domain),
                }
            }
            let index = self.tenants.len();
            for d in &domains {
                self.ownership.claim(d, index);
            }
            conditions.push(if conflicts.is_empty() {
                Condition::new(
                    ConditionType::DomainsConflict,
                    false,
                    Reason::NoConflict,
                    "no other Tenant claims these domains".into(),
                )
            } else {
                Condition::new(
                    ConditionType::DomainsConflict,
                    true,
                    Reason::DomainsConflict,
                    format!("domains owned by older Tenants: {}", conflicts.join(", ")),
                )
            });
            conditions.insert(
                0,
                if domains.is_empty() {
                    Condition::new(
                        ConditionType::Accepted,
                        false,
                        Reason::NoDomains,
                        "the Tenant owns no usable domain".into(),
                    )
                } else {
                    Condition::new(
                        ConditionType::Accepted,
                        true,
                        Reason::Accepted,
                        format!("serving {} domain(s)", domains.len()),
                    )
                },
            );
            self.statuses.insert(
                object.clone(),
                ObjectStatus {
                    object,
                    conditions,
                    routes: Some(0),
                    certificates: Vec::new(),
                    listeners: Vec::new(),
                    parents: Vec::new(),
                },
            );
            self.tenants.push(AcceptedTenant {
                id: TenantId::new(name),
                object: tenant,
                domains,
                namespaces: tenant.spec.namespaces.iter().map(String::as_str).collect(),
            });
        }
    }

    /// May an Ingress in `namespace` serve `host`? Tenant domains only from
    /// the tenant's namespaces; other hosts only without `--require-tenant`.
    pub(super) fn admit_host(
        &self,
        host: &HostPattern,
        namespace: &str,
    ) -> Result<Option<usize>, Condition> {
        match self.ownership.owner(host) {
            Some(t) if self.tenants[t].namespaces.contains(namespace) => Ok(Some(t)),
            Some(t) => Err(Condition::new(
                ConditionType::Accepted,
                false,
                Reason::HostNotAllowed,
                format!(
                    "host {host} belongs to Tenant {}, which does not allow namespace {namespace}",
                    self.tenants[t].id
                ),
            )),
            None if self.options.require_tenant => Err(Condition::new(
                ConditionType::Accepted,
                false,
                Reason::TenantRequired,
                format!("host {host} is owned by no Tenant and --require-tenant is set"),
            )),
            None => Ok(None),
        }
    }

    pub(super) fn count_tenant_route(&mut self, tenant: usize) {
        let object = tenant_ref(self.tenants[tenant].id.as_str());
        if let Some(routes) = self
            .statuses
            .get_mut(&object)
            .and_then(|s| s.routes.as_mut())
        {
            *routes += 1;
        }
    }

    pub(super) fn add_tenant_backends_and_tls(&mut self) {
        for index in 0..self.tenants.len() {
            let tenant = self.tenants[index].object;
            let id = self.tenants[index].id.clone();
            let domains = self.tenants[index].domains.clone();
            let object = tenant_ref(id.as_str());
            let mut conditions = Vec::new();

            // Every domain gets a vhost, even without routes, so a broader
            // wildcard or host-less rule elsewhere can never catch its traffic.
            for d in &domains {
                self.routes.entry(d.clone()).or_default();
            }

            if let Some(spec) = &tenant.spec.backend {
                let backend = self.tenant_backend(&id, spec, &mut conditions);
                // Every vhost the tenant owns: its domains, and exact hosts
                // that Ingresses added under its wildcards (which shadow the
                // wildcard vhost). Ingress rules of allowed namespaces win
                // for their paths.
                for (host, routes) in self.routes.iter_mut() {
                    if self.ownership.owner(host) != Some(index) {
                        continue;
                    }
                    routes.insert_new(RouteKey::path(PathMatch::prefix("/")), || {
                        RouteEntry::new(
                            RouteName::new(format!("tenant/{id}")),
                            backend.clone(),
                            object.clone(),
                        )
                    });
                }
            }

            match &tenant.spec.tls {
                Some(TenantTls::SecretRef(r)) => {
                    let tls = self.certificate(&r.namespace, &r.name, &mut conditions);
                    conditions.push(secret_certificate_ready(&tls, r));
                    for d in &domains {
                        // An Ingress TLS entry for a specific host is more specific.
                        self.tls.entry(d.clone()).or_insert_with(|| TlsBinding {
                            tls: tls.clone(),
                            owner: object.clone(),
                        });
                    }
                }
                Some(TenantTls::Acme(acme)) => conditions.push(self.tenant_acme(index, acme)),
                None => {}
            }

            if let Some(status) = self.statuses.get_mut(&object) {
                // ResolvedRefs duplicates are folded into CertificateReady.
                conditions.retain(|c| {
                    !(c.type_ == ConditionType::ResolvedRefs
                        && matches!(c.reason, Reason::SecretNotFound | Reason::SecretInvalid))
                });
                status.conditions.extend(conditions);
            }
        }
    }

    /// One weighted pool over all the tenant's backend Services.
    pub(super) fn tenant_backend(
        &mut self,
        id: &TenantId,
        spec: &crate::tenant::TenantBackend,
        conditions: &mut Vec<Condition>,
    ) -> Backend {
        let pool_id = PoolId::new(format!("tenant/{id}"));
        let mut groups = Vec::new();
        let mut external = None;
        for svc in &spec.services {
            let Some(port) = PortRef::from_int_or_string(&svc.port) else {
                conditions.push(Condition::new(
                    ConditionType::ResolvedRefs,
                    false,
                    Reason::ServicePortNotFound,
                    format!(
                        "backend Service {}/{} names no port",
                        spec.namespace, svc.name
                    ),
                ));
                continue;
            };
            match self.services.resolve(&spec.namespace, &svc.name, &port).1 {
                Ok(Pool::Endpoints(eps)) => {
                    groups.push((svc.weight, eps.into_iter().map(|e| e.address).collect()))
                }
                Ok(pool @ Pool::ExternalName { .. }) if spec.services.len() == 1 => {
                    external = Some(pool)
                }
                Ok(Pool::ExternalName { .. }) => conditions.push(Condition::new(
                    ConditionType::ResolvedRefs,
                    false,
                    Reason::UnsupportedBackend,
                    format!(
                        "Service {}/{} is ExternalName, which can't be weighted with other Services",
                        spec.namespace, svc.name
                    ),
                )),
                Err(u) => {
                    conditions.push(Condition::new(ConditionType::ResolvedRefs, false, u.reason, u.message))
                }
            }
        }
        let pool = external.unwrap_or_else(|| Pool::Endpoints(merge_weighted(&groups)));
        self.pools.insert(pool_id.clone(), pool);
        Backend::Pool(pool_id)
    }
}

/// A `tls.secretRef` tenant's `CertificateReady`.
fn secret_certificate_ready(tls: &HostTls, r: &SecretRef) -> Condition {
    match tls {
        HostTls::Certificate(_) => Condition::new(
            ConditionType::CertificateReady,
            true,
            Reason::CertificateReady,
            format!("certificate from Secret {}/{}", r.namespace, r.name),
        ),
        HostTls::Unavailable(why) => {
            let reason = match why.reason {
                TlsUnavailable::SecretNotFound => Reason::SecretNotFound,
                _ => Reason::SecretInvalid,
            };
            Condition::new(
                ConditionType::CertificateReady,
                false,
                reason,
                why.message.clone(),
            )
        }
    }
}
