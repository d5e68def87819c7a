//! The translator: a [`Snapshot`] of Kubernetes objects in, one
//! [`GatewayConfig`] and the statuses of the objects it read out. Pure and
//! deterministic: objects are processed in age order (creationTimestamp,
//! then namespace/name) whatever order they arrive in, and every output
//! collection is sorted.
//!
//! User mistakes are data: a bad rule becomes a condition on its object and
//! the rest of the config still applies.
//!
//! `run` reads as the phases, each in its own module: which classes are
//! ours (`classes`), tenants accepted and their domains owned (`tenants`),
//! Ingresses to routes (`ingress`), Services to pools (`backend`), Secrets
//! to certificates (`tls`), the tenants' own backends and certificates
//! (`tenants`), then the sorted config and the statuses (`output`,
//! `status`).

mod acme;
pub mod annotations;
pub mod backend;
mod canary;
mod classes;
mod gateway_api;
mod incremental;
mod ingress;
mod output;
pub mod status;
pub mod tenants;
pub mod tls;
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass, IngressSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::acme::AcmePlan;
use crate::hostname::{HostPattern, Hostname};
use crate::manifests::Snapshot;
use crate::model::{
    Backend, CertId, Certificate, Conditions, Endpoint, Filter, GatewayConfig, Header, HeaderName,
    HeaderText, HostTls, PathMatch, PlainHttp, Pool, PoolId, Route, RouteName,
    Tenant as TenantConfig, TenantId, TlsUnavailable, Unavailable, VirtualHost, WildcardDepth,
};
use crate::tenant::Tenant;

use backend::{merge_weighted, PortRef, ServiceIndex, Unresolved};
pub use gateway_api::GATEWAY_CONTROLLER;
pub use incremental::{Incremental, Update};
pub use status::{Condition, ConditionType, ObjectKind, ObjectRef, ObjectStatus, Reason};
use tenants::{AcceptedTenant, Ownership};
pub use tls::CertificateMemo;
use tls::SecretIndex;

/// The `spec.controller` of IngressClasses Vestibule serves.
pub const CONTROLLER_NAME: &str = "vestibule.dev/ingress-controller";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// IngressClasses with this `spec.controller` are ours.
    pub controller: String,
    /// Only the IngressClass of this name (and whose controller is ours):
    /// `run --ingress-class NAME`, `translate --ingress-class NAME`.
    pub ingress_class: Option<String>,
    /// Strict SaaS mode: only hosts owned by a Tenant are served.
    pub require_tenant: bool,
    /// Where ACME-issued certificate Secrets live (`acme.<domain>`).
    pub acme_namespace: String,
}

/// The default of [`Options::acme_namespace`]: the chart's namespace.
pub const ACME_NAMESPACE: &str = "vestibule-system";

impl Default for Options {
    fn default() -> Self {
        Options {
            controller: CONTROLLER_NAME.to_string(),
            ingress_class: None,
            require_tenant: false,
            acme_namespace: ACME_NAMESPACE.to_string(),
        }
    }
}

/// The result of a translation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Translation {
    pub config: GatewayConfig,
    /// One entry per Ingress of ours, Tenant and AcmeIssuer, sorted by object.
    pub statuses: Vec<ObjectStatus>,
    /// What an ACME issuer should order and renew (not part of the config).
    #[serde(skip_serializing_if = "AcmePlan::is_empty")]
    pub acme: AcmePlan,
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
/// The phases of a translation.
fn run(
    snapshot: &Snapshot,
    options: &Options,
    memo: Option<CertificateMemo>,
) -> (Translation, Option<CertificateMemo>) {
    let mut t = Translator::new(snapshot, options, memo);
    t.accept_issuers(&snapshot.acme_issuers);
    t.accept_tenants();
    // Canary Ingresses are shares of their primaries' routes: after them.
    let mut canaries = Vec::new();
    for ingress in by_age(&snapshot.ingresses, |i| &i.metadata) {
        if t.is_ours(ingress) {
            let mut conditions = Vec::new();
            let mut read =
                annotations::read(ingress.metadata.annotations.as_ref(), &mut conditions);
            match read.canary.take() {
                Some(canary) => canaries.push((ingress, canary, read.use_regex, conditions)),
                None => t.add_ingress(ingress, &read, conditions),
            }
        }
    }
    for (ingress, canary, use_regex, conditions) in canaries {
        t.add_canary(ingress, &canary, use_regex, conditions);
    }
    t.add_gateway_api(snapshot);
    t.add_tenant_backends_and_tls();
    t.finish()
}

/// A route as collected, before vhosts are assembled.
struct RouteEntry {
    name: RouteName,
    filters: Vec<Filter>,
    timeout_ms: Option<u32>,
    connect_timeout_ms: Option<u32>,
    send_timeout_ms: Option<u32>,
    backend: Backend,
    owner: ObjectRef,
}

impl RouteEntry {
    /// The read, connect and send timeouts.
    fn timeouts(&self) -> [Option<u32>; 3] {
        [
            self.timeout_ms,
            self.connect_timeout_ms,
            self.send_timeout_ms,
        ]
    }

    fn set_timeouts(&mut self, [read, connect, send]: [Option<u32>; 3]) {
        self.timeout_ms = read;
        self.connect_timeout_ms = connect;
        self.send_timeout_ms = send;
    }

    /// A route with no filters.
    fn new(name: RouteName, backend: Backend, owner: ObjectRef) -> Self {
        RouteEntry {
            name,
            filters: Vec::new(),
            timeout_ms: None,
            connect_timeout_ms: None,
            send_timeout_ms: None,
            backend,
            owner,
        }
    }
}

/// What makes two routes of a host the same route: the path and the
/// request conditions.
#[derive(Clone, PartialEq, Eq)]
struct RouteKey {
    path: PathMatch,
    conditions: Conditions,
}

impl RouteKey {
    /// A path with no other condition (Ingress rules, tenant backends).
    fn path(path: PathMatch) -> Self {
        RouteKey {
            path,
            conditions: Conditions::default(),
        }
    }
}

/// One host's routes as collected, keyed by path and conditions (unique).
/// Most hosts have one to three paths: a small vector is found by a scan,
/// where a `BTreeMap` per host allocated a node of eleven entries each
/// (10k hosts: ~25 MB allocated and dropped per translation).
#[derive(Default)]
struct PathRoutes(Vec<(RouteKey, RouteEntry)>);

impl PathRoutes {
    fn get(&self, key: &RouteKey) -> Option<&RouteEntry> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    fn get_mut(&mut self, key: &RouteKey) -> Option<&mut RouteEntry> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    /// Adds the route for `key` unless one is there (the first claim wins).
    fn insert_new(&mut self, key: RouteKey, entry: impl FnOnce() -> RouteEntry) {
        if self.get(&key).is_none() {
            self.0.push((key, entry()));
        }
    }

    /// The routes, most specific first; routes of equal precedence stay in
    /// the order they were claimed (oldest object first).
    fn into_routes(self) -> Vec<Route> {
        let mut routes: Vec<Route> = self
            .0
            .into_iter()
            .map(|(key, e)| Route {
                name: e.name,
                path: key.path,
                conditions: key.conditions,
                filters: e.filters,
                timeout_ms: e.timeout_ms,
                connect_timeout_ms: e.connect_timeout_ms,
                send_timeout_ms: e.send_timeout_ms,
                backend: e.backend,
            })
            .collect();
        routes.sort_by(|a, b| a.precedence_key().cmp(&b.precedence_key()));
        routes
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
    /// Wildcard hosts of Gateway API routes: they match any depth.
    any_depth: BTreeSet<HostPattern>,
    /// Hosts whose plain HTTP an Ingress annotation decides (the oldest).
    plain_http: BTreeMap<HostPattern, PlainHttp>,
    default_backend: Option<(Backend, ObjectRef)>,
    pools: BTreeMap<PoolId, Pool>,
    /// Pools that speak h2c or TLS (`backend-protocol`).
    upstream_protocols: BTreeMap<PoolId, crate::model::UpstreamProtocol>,
    certificates: BTreeMap<CertId, Certificate>,
    statuses: BTreeMap<ObjectRef, ObjectStatus>,
    /// Secret checks of the previous translation, and of this one (`None`:
    /// not remembering).
    memo: Option<(CertificateMemo, CertificateMemo)>,
    /// Accepted issuers and the domains that want a certificate from them.
    acme: AcmePlan,
    default_issuer: Option<String>,
    acme_failures: &'a BTreeMap<Hostname, String>,
    /// Namespaces with labels (Gateway listeners' namespace selectors).
    namespaces: &'a [Arc<k8s_openapi::api::core::v1::Namespace>],
    /// ConfigMaps of upstream roots (`proxy-ssl-ca-configmap`).
    config_maps: &'a [Arc<k8s_openapi::api::core::v1::ConfigMap>],
}

impl<'a> Translator<'a> {
    fn new(snapshot: &'a Snapshot, options: &'a Options, memo: Option<CertificateMemo>) -> Self {
        let (our_classes, default_class_is_ours) = classes::ours(snapshot, options);
        Translator {
            options,
            services: ServiceIndex::new(&snapshot.services, &snapshot.endpoint_slices),
            secrets: SecretIndex::new(&snapshot.secrets),
            our_classes,
            default_class_is_ours,
            tenants_sorted: by_age(&snapshot.tenants, |t| &t.metadata),
            tenants: Vec::new(),
            ownership: Ownership::default(),
            routes: BTreeMap::new(),
            tls: BTreeMap::new(),
            any_depth: BTreeSet::new(),
            plain_http: BTreeMap::new(),
            default_backend: None,
            pools: BTreeMap::new(),
            upstream_protocols: BTreeMap::new(),
            certificates: BTreeMap::new(),
            statuses: BTreeMap::new(),
            memo: memo.map(|previous| (previous, CertificateMemo::default())),
            acme: AcmePlan::default(),
            default_issuer: None,
            acme_failures: &snapshot.acme_failures,
            namespaces: &snapshot.namespaces,
            config_maps: &snapshot.config_maps,
        }
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
            config.pools.get(route.backend.pool().unwrap()),
            Some(&Pool::Endpoints(Vec::new()))
        );
    }
}
