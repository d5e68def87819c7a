//! The translator: a [`Snapshot`] of Kubernetes objects in, one
//! [`GatewayConfig`] and the statuses of the objects it read out. Pure and
//! deterministic: objects are processed in age order (creationTimestamp,
//! then namespace/name) whatever order they arrive in, and every output
//! collection is sorted.
//!
//! User mistakes are data: a bad rule becomes a condition on its object and
//! the rest of the config still applies.

pub mod backend;
pub mod status;
pub mod tenants;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass, IngressSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::hostname::HostPattern;
use crate::manifests::Snapshot;
use crate::model::{
    Backend, CertId, Certificate, GatewayConfig, HostTls, PathMatch, Pool, PoolId, Route,
    RouteName, Tenant as TenantConfig, TenantId, VirtualHost,
};
use crate::tenant::Tenant;

use backend::{merge_weighted, PortRef, ServiceIndex, Unresolved};
pub use status::{Condition, ConditionType, ObjectKind, ObjectRef, ObjectStatus, Reason};
use tenants::{AcceptedTenant, Ownership};
pub use tls::CertificateMemo;
use tls::SecretIndex;

/// The `spec.controller` of IngressClasses Vestibule serves.
pub const CONTROLLER_NAME: &str = "vestibule.dev/ingress-controller";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// IngressClasses with this `spec.controller` are ours.
    pub controller: String,
    /// Strict SaaS mode: only hosts owned by a Tenant are served.
    pub require_tenant: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            controller: CONTROLLER_NAME.to_string(),
            require_tenant: false,
        }
    }
}

/// The result of a translation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Translation {
    pub config: GatewayConfig,
    /// One entry per Ingress of ours and per Tenant, sorted by object.
    pub statuses: Vec<ObjectStatus>,
}

/// Translates a snapshot. Never fails: problems become statuses.
pub fn translate(snapshot: &Snapshot, options: &Options) -> Translation {
    run(snapshot, options, None).0
}

/// [`translate`], reusing the TLS Secret checks of the previous translation
/// for the Secret objects it sees again (shared `Arc`s). The output is the
/// same; `memo` is left holding this translation's checks.
pub fn translate_with(
    snapshot: &Snapshot,
    options: &Options,
    memo: &mut CertificateMemo,
) -> Translation {
    let (translation, next) = run(snapshot, options, Some(std::mem::take(memo)));
    *memo = next.unwrap_or_default();
    translation
}

/// A translation, with a memo (`Some`) or without (`None`: nothing recorded).
fn run(
    snapshot: &Snapshot,
    options: &Options,
    memo: Option<CertificateMemo>,
) -> (Translation, Option<CertificateMemo>) {
    let mut t = Translator::new(snapshot, options, memo);
    t.accept_tenants();
    for ingress in by_age(&snapshot.ingresses, |i| &i.metadata) {
        if t.is_ours(ingress) {
            t.add_ingress(ingress);
        }
    }
    t.add_tenant_backends_and_tls();
    t.finish()
}

/// A route as collected, before vhosts are assembled.
struct RouteEntry {
    name: RouteName,
    backend: Backend,
    owner: ObjectRef,
}

/// One host's routes as collected, keyed by path (unique). Most hosts have
/// one to three paths: a small vector is found by a scan, where a `BTreeMap`
/// per host allocated a node of eleven entries each (10k hosts: ~25 MB
/// allocated and dropped per translation).
#[derive(Default)]
struct PathRoutes(Vec<(PathMatch, RouteEntry)>);

impl PathRoutes {
    fn get(&self, path: &PathMatch) -> Option<&RouteEntry> {
        self.0.iter().find(|(p, _)| p == path).map(|(_, e)| e)
    }

    /// Adds the route for `path` unless one is there (the first claim wins).
    fn insert_new(&mut self, path: PathMatch, entry: impl FnOnce() -> RouteEntry) {
        if self.get(&path).is_none() {
            self.0.push((path, entry()));
        }
    }

    /// The routes in path order (what the map gave).
    fn into_sorted(mut self) -> Vec<(PathMatch, RouteEntry)> {
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        self.0
    }
}

/// A TLS choice for a host, with the object that made it.
struct TlsBinding {
    tls: HostTls,
    owner: ObjectRef,
}

struct Translator<'a> {
    options: &'a Options,
    services: ServiceIndex<'a>,
    secrets: SecretIndex<'a>,
    our_classes: BTreeSet<&'a str>,
    default_class_is_ours: bool,
    tenants_sorted: Vec<&'a Tenant>,
    tenants: Vec<AcceptedTenant<'a>>,
    ownership: Ownership,
    /// Routes per host pattern, keyed by path: the first (oldest) claim wins.
    routes: BTreeMap<HostPattern, PathRoutes>,
    tls: BTreeMap<HostPattern, TlsBinding>,
    default_backend: Option<(Backend, ObjectRef)>,
    pools: BTreeMap<PoolId, Pool>,
    certificates: BTreeMap<CertId, Certificate>,
    statuses: BTreeMap<ObjectRef, ObjectStatus>,
    /// Secret checks of the previous translation, and of this one (`None`:
    /// not remembering).
    memo: Option<(CertificateMemo, CertificateMemo)>,
}

impl<'a> Translator<'a> {
    fn new(snapshot: &'a Snapshot, options: &'a Options, memo: Option<CertificateMemo>) -> Self {
        let classes: Vec<&IngressClass> = by_age(&snapshot.ingress_classes, |c| &c.metadata)
            .into_iter()
            .filter(|c| {
                c.spec.as_ref().and_then(|s| s.controller.as_deref())
                    == Some(options.controller.as_str())
            })
            .collect();
        let default_class_is_ours = classes.iter().any(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
        });
        Translator {
            options,
            services: ServiceIndex::new(&snapshot.services, &snapshot.endpoint_slices),
            secrets: SecretIndex::new(&snapshot.secrets),
            our_classes: classes
                .iter()
                .filter_map(|c| c.metadata.name.as_deref())
                .collect(),
            default_class_is_ours,
            tenants_sorted: by_age(&snapshot.tenants, |t| &t.metadata),
            tenants: Vec::new(),
            ownership: Ownership::default(),
            routes: BTreeMap::new(),
            tls: BTreeMap::new(),
            default_backend: None,
            pools: BTreeMap::new(),
            certificates: BTreeMap::new(),
            statuses: BTreeMap::new(),
            memo: memo.map(|previous| (previous, CertificateMemo::default())),
        }
    }

    // === Ingress classes ===

    /// `spec.ingressClassName` first, then the legacy annotation, then the
    /// default class.
    fn is_ours(&self, ingress: &Ingress) -> bool {
        let class = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        let legacy = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .map(String::as_str);
        match class.or(legacy) {
            Some(name) => self.our_classes.contains(name),
            None => self.default_class_is_ours,
        }
    }

    // === Tenants ===

    /// Accepts tenants oldest first; each keeps the domains no older tenant claimed.
    fn accept_tenants(&mut self) {
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
    fn admit_host(&self, host: &HostPattern, namespace: &str) -> Result<Option<usize>, Condition> {
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

    // === Ingresses ===

    fn add_ingress(&mut self, ingress: &'a Ingress) {
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let name = ingress.metadata.name.as_deref().unwrap_or_default();
        let object = ObjectRef {
            kind: ObjectKind::Ingress,
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        };
        let route_name = RouteName::new(format!("ingress/{namespace}/{name}"));
        let mut conditions = Vec::new();
        // Routes (and the default backend) this Ingress serves, and hosts it sets TLS for.
        let mut served = 0usize;
        let mut tls_hosts = 0usize;
        let no_spec = Default::default();
        let spec: &IngressSpec = ingress.spec.as_ref().unwrap_or(&no_spec);

        // Rule hosts, for TLS entries that list none.
        let mut rule_hosts = Vec::new();

        for rule in spec.rules.iter().flatten() {
            let host = match rule.host.as_deref() {
                None | Some("") => HostPattern::Any,
                Some(raw) => match HostPattern::parse(raw) {
                    Ok(h) => h,
                    Err(e) => {
                        conditions.push(Condition::new(
                            ConditionType::Accepted,
                            false,
                            Reason::InvalidHost,
                            e.to_string(),
                        ));
                        continue;
                    }
                },
            };
            let tenant = match self.admit_host(&host, namespace) {
                Ok(t) => t,
                Err(c) => {
                    conditions.push(c);
                    continue;
                }
            };
            rule_hosts.push(host.clone());
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let matcher = match path_match(&path.path_type, path.path.as_deref()) {
                    Ok(m) => m,
                    Err(msg) => {
                        conditions.push(Condition::new(
                            ConditionType::Accepted,
                            false,
                            Reason::InvalidPath,
                            format!("host {host}: {msg}"),
                        ));
                        continue;
                    }
                };
                if let Some(existing) = self.routes.get(&host).and_then(|r| r.get(&matcher)) {
                    conditions.push(Condition::new(
                        ConditionType::Conflicted,
                        true,
                        Reason::RouteConflict,
                        format!("{host} {matcher} is already served by {}", existing.owner),
                    ));
                    continue;
                }
                let backend = self.ingress_backend(namespace, &path.backend, &mut conditions);
                self.routes
                    .entry(host.clone())
                    .or_default()
                    .insert_new(matcher, || RouteEntry {
                        name: route_name.clone(),
                        backend,
                        owner: object.clone(),
                    });
                served += 1;
                if let Some(t) = tenant {
                    self.count_tenant_route(t);
                }
            }
        }

        for entry in spec.tls.iter().flatten() {
            let hosts: Vec<HostPattern> = match &entry.hosts {
                Some(hosts) if !hosts.is_empty() => {
                    let mut parsed = Vec::new();
                    for raw in hosts {
                        match HostPattern::parse(raw) {
                            Ok(h) => parsed.push(h),
                            Err(e) => conditions.push(Condition::new(
                                ConditionType::Accepted,
                                false,
                                Reason::InvalidHost,
                                format!("spec.tls: {e}"),
                            )),
                        }
                    }
                    parsed
                }
                _ => rule_hosts.clone(),
            };
            let hosts: Vec<HostPattern> = hosts
                .into_iter()
                .filter(|h| *h != HostPattern::Any)
                .filter(|h| match self.admit_host(h, namespace) {
                    Ok(_) => true,
                    Err(c) => {
                        if !conditions.contains(&c) {
                            conditions.push(c);
                        }
                        false
                    }
                })
                .collect();
            if hosts.is_empty() {
                continue;
            }
            let tls = match entry.secret_name.as_deref() {
                Some(secret) => self.certificate(namespace, secret, &mut conditions),
                None => {
                    let msg = "spec.tls entry has no secretName".to_string();
                    conditions.push(Condition::new(
                        ConditionType::ResolvedRefs,
                        false,
                        Reason::SecretNotFound,
                        msg.clone(),
                    ));
                    HostTls::Unavailable(msg)
                }
            };
            for host in hosts {
                match self.tls.get(&host) {
                    Some(b) if b.owner != object && b.tls != tls => {
                        conditions.push(Condition::new(
                            ConditionType::Conflicted,
                            true,
                            Reason::TlsConflict,
                            format!("TLS for {host} is already set by {}", b.owner),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.tls.insert(
                            host,
                            TlsBinding {
                                tls: tls.clone(),
                                owner: object.clone(),
                            },
                        );
                        tls_hosts += 1;
                    }
                }
            }
        }

        if let Some(default) = &spec.default_backend {
            if self.options.require_tenant {
                conditions.push(Condition::new(
                    ConditionType::Accepted,
                    false,
                    Reason::TenantRequired,
                    "spec.defaultBackend is ignored with --require-tenant".into(),
                ));
            } else if let Some((_, owner)) = &self.default_backend {
                conditions.push(Condition::new(
                    ConditionType::Conflicted,
                    true,
                    Reason::DefaultBackendConflict,
                    format!("the default backend is already set by {owner}"),
                ));
            } else {
                let backend = self.ingress_backend(namespace, default, &mut conditions);
                self.default_backend = Some((backend, object.clone()));
                served += 1;
            }
        }

        let accepted = if served > 0 || tls_hosts > 0 {
            let tls = match tls_hosts {
                0 => String::new(),
                n => format!(", TLS for {n} host(s)"),
            };
            Condition::new(
                ConditionType::Accepted,
                true,
                Reason::Accepted,
                format!("serving {served} route(s){tls}"),
            )
        } else {
            Condition::new(
                ConditionType::Accepted,
                false,
                Reason::NoValidRules,
                "nothing in this Ingress can be served".into(),
            )
        };
        conditions.insert(0, accepted);
        self.statuses.insert(
            object.clone(),
            ObjectStatus {
                object,
                conditions,
                routes: None,
            },
        );
    }

    /// Resolves an Ingress backend to a pool. Unresolvable Services and
    /// unsupported (resource) backends still get an (empty) pool: the route
    /// answers 503 instead of vanishing and letting a shorter path catch it.
    fn ingress_backend(
        &mut self,
        namespace: &str,
        backend: &IngressBackend,
        conditions: &mut Vec<Condition>,
    ) -> Backend {
        let Some(service) = &backend.service else {
            // `ns/Kind/name`: no `:`, so never a Service pool; three parts,
            // so never a tenant pool.
            let (kind, name) = backend
                .resource
                .as_ref()
                .map_or(("", ""), |r| (r.kind.as_str(), r.name.as_str()));
            let id = format!("{namespace}/{kind}/{name}");
            let unsupported = Unresolved {
                reason: Reason::UnsupportedBackend,
                message: "only Service backends are supported (resource backends are not)".into(),
            };
            return self.install_pool(PoolId::new(id), Err(unsupported), conditions);
        };
        let port = service
            .port
            .as_ref()
            .and_then(|p| match (&p.name, p.number) {
                (Some(name), _) if !name.is_empty() => Some(PortRef::Name(name.clone())),
                (_, Some(n)) => Some(PortRef::Number(n)),
                _ => None,
            });
        let Some(port) = port else {
            // The API server requires a port; a manifest may still lack one.
            let missing = Unresolved {
                reason: Reason::ServicePortNotFound,
                message: format!("backend Service {namespace}/{} names no port", service.name),
            };
            let id = PoolId::new(format!("{namespace}/{}:", service.name));
            return self.install_pool(id, Err(missing), conditions);
        };
        let (id, pool) = self.services.resolve(namespace, &service.name, &port);
        self.install_pool(id, pool, conditions)
    }

    fn install_pool(
        &mut self,
        id: PoolId,
        pool: Result<Pool, Unresolved>,
        conditions: &mut Vec<Condition>,
    ) -> Backend {
        let pool = pool.unwrap_or_else(|u| {
            let c = Condition::new(ConditionType::ResolvedRefs, false, u.reason, u.message);
            if !conditions.contains(&c) {
                conditions.push(c);
            }
            Pool::Endpoints(Vec::new())
        });
        self.pools.entry(id.clone()).or_insert(pool);
        Backend::Pool(id)
    }

    /// The TLS setting for a Secret: its certificate, or `Unavailable` (the
    /// host stays a TLS host) with a condition saying why.
    fn certificate(
        &mut self,
        namespace: &str,
        name: &str,
        conditions: &mut Vec<Condition>,
    ) -> HostTls {
        let checked = match &mut self.memo {
            Some((previous, next)) => self
                .secrets
                .certificate_memo(namespace, name, previous, next),
            None => self.secrets.certificate_with_id(namespace, name),
        };
        match checked {
            Ok((cert, id)) => {
                self.certificates.entry(id.clone()).or_insert(cert);
                HostTls::Certificate(id)
            }
            Err(u) => {
                let c = Condition::new(
                    ConditionType::ResolvedRefs,
                    false,
                    u.reason,
                    u.message.clone(),
                );
                if !conditions.contains(&c) {
                    conditions.push(c);
                }
                HostTls::Unavailable(u.message)
            }
        }
    }

    fn count_tenant_route(&mut self, tenant: usize) {
        let object = tenant_ref(self.tenants[tenant].id.as_str());
        if let Some(routes) = self
            .statuses
            .get_mut(&object)
            .and_then(|s| s.routes.as_mut())
        {
            *routes += 1;
        }
    }

    // === Tenant backends and certificates ===

    fn add_tenant_backends_and_tls(&mut self) {
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
                    routes.insert_new(PathMatch::prefix("/"), || RouteEntry {
                        name: RouteName::new(format!("tenant/{id}")),
                        backend: backend.clone(),
                        owner: object.clone(),
                    });
                }
            }

            if let Some(spec) = &tenant.spec.tls {
                let r = &spec.secret_ref;
                let tls = self.certificate(&r.namespace, &r.name, &mut conditions);
                conditions.push(match &tls {
                    HostTls::Certificate(_) => Condition::new(
                        ConditionType::CertificateReady,
                        true,
                        Reason::CertificateReady,
                        format!("certificate from Secret {}/{}", r.namespace, r.name),
                    ),
                    HostTls::Unavailable(why) => {
                        let reason = conditions
                            .last()
                            .map(|c| c.reason)
                            .unwrap_or(Reason::SecretInvalid);
                        Condition::new(ConditionType::CertificateReady, false, reason, why.clone())
                    }
                });
                for d in &domains {
                    // An Ingress TLS entry for a specific host is more specific.
                    self.tls.entry(d.clone()).or_insert_with(|| TlsBinding {
                        tls: tls.clone(),
                        owner: object.clone(),
                    });
                }
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
    fn tenant_backend(
        &mut self,
        id: &TenantId,
        spec: &crate::tenant::TenantBackend,
        conditions: &mut Vec<Condition>,
    ) -> Backend {
        let pool_id = PoolId::new(format!("tenant/{id}"));
        let mut groups = Vec::new();
        let mut external = None;
        for svc in &spec.services {
            let port = PortRef::from_int_or_string(&svc.port);
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

    // === Output ===

    fn finish(self) -> (Translation, Option<CertificateMemo>) {
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
            let mut routes: Vec<Route> = routes
                .into_sorted()
                .into_iter()
                .map(|(path, e)| Route {
                    name: e.name,
                    path,
                    backend: e.backend,
                })
                .collect();
            routes.sort_by(|a, b| a.path.precedence_key().cmp(&b.path.precedence_key()));
            hosts.push(VirtualHost {
                host,
                tenant,
                tls,
                routes,
            });
        }
        let default_backend = self.default_backend.map(|(b, _)| b);

        // Keep only what the served config refers to.
        let used_pools: BTreeSet<&PoolId> = hosts
            .iter()
            .flat_map(|h| h.routes.iter().map(|r| r.backend.pool()))
            .chain(default_backend.as_ref().map(Backend::pool))
            .collect();
        let pools = self
            .pools
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
                    },
                )
            })
            .collect();

        let config = GatewayConfig {
            version: Default::default(),
            hosts,
            default_backend,
            pools,
            certificates,
            tenants,
        }
        .seal();
        let translation = Translation {
            config,
            statuses: self.statuses.into_values().collect(),
        };
        (translation, self.memo.map(|(_, next)| next))
    }
}

fn tenant_ref(name: &str) -> ObjectRef {
    ObjectRef {
        kind: ObjectKind::Tenant,
        namespace: None,
        name: name.to_string(),
    }
}

/// Objects oldest first; objects without a creationTimestamp (files) count
/// as newest; ties go by namespace/name.
fn by_age<T>(objects: &[Arc<T>], meta: impl Fn(&T) -> &ObjectMeta) -> Vec<&T> {
    let mut sorted: Vec<&T> = objects.iter().map(|o| &**o).collect();
    let key = |o: &&T| -> (bool, Option<Time>, Option<String>, Option<String>) {
        let m = meta(o);
        (
            m.creation_timestamp.is_none(),
            m.creation_timestamp.clone(),
            m.namespace.clone(),
            m.name.clone(),
        )
    };
    sorted.sort_by_cached_key(key);
    sorted
}

/// An Ingress path and pathType as a matcher, or why it is invalid.
fn path_match(path_type: &str, path: Option<&str>) -> Result<PathMatch, String> {
    let path = path.unwrap_or("/");
    let well_formed = path.starts_with('/')
        && !path
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#');
    if !well_formed {
        return Err(format!(
            "path {path:?} must be absolute and must not contain spaces, '?', '#' or control characters"
        ));
    }
    match path_type {
        "Exact" => Ok(PathMatch::Exact(path.to_string())),
        "Prefix" | "ImplementationSpecific" => Ok(PathMatch::prefix(path)),
        other => Err(format!(
            "pathType {other:?} is not Exact, Prefix or ImplementationSpecific"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifests::{load_text, Loaded};

    const CLASS: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\n\
        metadata: {name: v}\nspec: {controller: vestibule.dev/ingress-controller}\n";
    const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: tls, namespace: other}\n\
        type: kubernetes.io/tls\nstringData:\n  tls.crt: \"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"\n  \
        tls.key: \"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"\n";

    fn run(docs: &[&str]) -> GatewayConfig {
        let mut loaded = Loaded::default();
        load_text(Path::new("test.yaml"), &docs.join("---\n"), &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        translate(&loaded.snapshot, &Options::default()).config
    }

    fn vhost<'c>(config: &'c GatewayConfig, host: &str) -> &'c VirtualHost {
        let host = HostPattern::parse(host).unwrap();
        config.hosts.iter().find(|v| v.host == host).unwrap()
    }

    fn ingress(namespace: &str, host: &str, tls_host: Option<&str>) -> String {
        let tls = tls_host
            .map(|h| format!("  tls: [{{hosts: [\"{h}\"], secretName: tls}}]\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\n\
             metadata: {{name: i, namespace: {namespace}}}\nspec:\n  ingressClassName: v\n{tls}  \
             rules: [{{host: \"{host}\", http: {{paths: [{{path: /api, pathType: Prefix, \
             backend: {{service: {{name: s, port: {{number: 80}}}}}}}}]}}}}]\n"
        )
    }

    #[test]
    fn foreign_wildcard_certificate_does_not_cover_a_tenant_host() {
        let tenant = "apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
                      spec: {domains: [shop.acme.io], namespaces: [acme]}\n";
        let config = run(&[
            CLASS,
            SECRET,
            tenant,
            &ingress("other", "*.acme.io", Some("*.acme.io")),
        ]);
        assert!(vhost(&config, "*.acme.io").tls.is_some());
        assert_eq!(vhost(&config, "shop.acme.io").tls, None);

        // Without the tenant, the wildcard certificate covers the exact host.
        let config = run(&[
            CLASS,
            SECRET,
            &ingress("other", "*.acme.io", Some("*.acme.io")),
            &ingress("other2", "shop.acme.io", None),
        ]);
        assert!(vhost(&config, "shop.acme.io").tls.is_some());
    }

    #[test]
    fn tenant_backend_serves_exact_hosts_under_its_wildcard() {
        let tenant = "apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
                      spec:\n  domains: [\"*.acme.io\"]\n  namespaces: [acme]\n  \
                      backend: {namespace: saas, services: [{name: app, port: 80}]}\n";
        let config = run(&[CLASS, tenant, &ingress("acme", "shop.acme.io", None)]);
        let paths: Vec<String> = vhost(&config, "shop.acme.io")
            .routes
            .iter()
            .map(|r| format!("{} {}", r.path, r.name))
            .collect();
        assert_eq!(
            paths,
            ["Prefix /api ingress/acme/i", "Prefix / tenant/acme"]
        );
    }

    #[test]
    fn resource_backend_keeps_its_route_with_an_empty_pool() {
        let ing = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i, namespace: web}\n\
                   spec:\n  ingressClassName: v\n  rules: [{host: a.io, http: {paths: [\
                   {path: /static, pathType: Prefix, backend: {resource: {kind: Bucket, name: b}}}]}}]\n";
        let config = run(&[CLASS, ing]);
        let route = &vhost(&config, "a.io").routes[0];
        assert_eq!(route.path, PathMatch::prefix("/static"));
        assert_eq!(
            config.pools.get(route.backend.pool()),
            Some(&Pool::Endpoints(Vec::new()))
        );
    }
}
