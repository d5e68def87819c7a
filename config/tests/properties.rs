//! Property tests of the translator: it is deterministic whatever the object
//! order, it never panics on odd input, and the config it produces always
//! holds together (references resolve, routes are in precedence order, tenant
//! hosts are routed only from the tenant's namespaces).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

use vestibule_config::model::RateLimit;
use vestibule_config::tenant::{
    SecretRef, Tenant, TenantBackend, TenantSpec, TenantTls, WeightedService,
};
use vestibule_config::translate::{
    translate, translate_with, CertificateMemo, Options, CONTROLLER_NAME,
};
use vestibule_config::{HostPattern, Snapshot};

// === value pools: small, so objects collide on hosts, paths and names;
// each has usual values and odd ones, picked 4:1 ===

const NAMESPACES: &[&str] = &["a", "b", "c"];
const ODD_NAMESPACES: &[&str] = &["", "Weird NS"];
const HOSTS: &[&str] = &[
    "a.example.com",
    "b.example.com",
    "*.example.com",
    "x.b.example.com",
    "acme.io",
    "shop.acme.io",
    "*.acme.io",
    "API.Example.COM.",
];
const ODD_HOSTS: &[&str] = &[
    "",
    "*",
    "bad_host.io",
    "10.0.0.1",
    "*.*.io",
    "a..b",
    "host:8080",
    "ünïcode.io",
];
const PATHS: &[&str] = &["/", "/api", "/api/", "/api/v1", "/a"];
const ODD_PATHS: &[&str] = &["", "api", "/x?y", "//"];
const PATH_TYPES: &[&str] = &["Exact", "Prefix", "ImplementationSpecific"];
const ODD_PATH_TYPES: &[&str] = &["Regex", ""];
const SERVICES: &[&str] = &["web", "api", "ext"];
const ODD_SERVICES: &[&str] = &[""];
const PORT_NUMBERS: &[i32] = &[80, 8080];
const ODD_PORT_NUMBERS: &[i32] = &[0, -1, 65_535, 70_000, i32::MAX, i32::MIN];
const PORT_NAMES: &[&str] = &["http", "grpc"];
const ODD_PORT_NAMES: &[&str] = &[""];
const SECRETS: &[&str] = &["tls-a", "tls-b"];
const ODD_SECRETS: &[&str] = &[""];
const TENANTS: &[&str] = &["acme", "globex", "initech"];
const ODD_TENANTS: &[&str] = &[""];
const ADDRESSES: &[&str] = &["10.0.0.1", "10.0.0.2", "fd00::1"];
const ODD_ADDRESSES: &[&str] = &["not-an-ip", ""];
const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6"];
const ODD_ADDRESS_TYPES: &[&str] = &["FQDN", ""];
const WEIGHTS: &[u32] = &[1, 10, 90];
const ODD_WEIGHTS: &[u32] = &[0, u32::MAX];

/// A usual value most of the time, an odd one sometimes.
fn pick<T: Clone + std::fmt::Debug + 'static>(
    usual: &'static [T],
    odd: &'static [T],
) -> impl Strategy<Value = T> {
    prop_oneof![4 => select(usual), 1 => select(odd)]
}

const CERT_A: &str = "-----BEGIN CERTIFICATE-----\nYWFhYQ==\n-----END CERTIFICATE-----\n";
const CERT_B: &str = "-----BEGIN CERTIFICATE-----\nYmJiYg==\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n";

// === builders ===

fn meta(namespace: Option<&str>, name: &str, created: Option<i64>) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(str::to_string),
        name: Some(name.to_string()),
        creation_timestamp: created.map(|s| Time(Timestamp::from_second(s).unwrap())),
        ..Default::default()
    }
}

fn ingress_class(name: &str, controller: Option<&str>, default: bool) -> IngressClass {
    let mut metadata = meta(None, name, None);
    if default {
        metadata.annotations = Some(BTreeMap::from([(
            "ingressclass.kubernetes.io/is-default-class".to_string(),
            "true".to_string(),
        )]));
    }
    IngressClass {
        metadata,
        spec: Some(IngressClassSpec {
            controller: controller.map(str::to_string),
            ..Default::default()
        }),
    }
}

/// A Service backend; `port` is a number, a name, or nothing.
fn backend(service: &str, port: Option<Result<i32, &str>>) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: service.to_string(),
            port: port.map(|p| match p {
                Ok(number) => ServiceBackendPort {
                    number: Some(number),
                    name: None,
                },
                Err(name) => ServiceBackendPort {
                    number: None,
                    name: Some(name.to_string()),
                },
            }),
        }),
        resource: None,
    }
}

fn service(
    namespace: &str,
    name: &str,
    external: Option<&str>,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: meta(Some(namespace), name, None),
        spec: Some(ServiceSpec {
            type_: external.map(|_| "ExternalName".to_string()),
            external_name: external.map(str::to_string),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service_port(name: Option<&str>, port: i32, target: i32) -> ServicePort {
    ServicePort {
        name: name.map(str::to_string),
        port,
        target_port: Some(IntOrString::Int(target)),
        ..Default::default()
    }
}

fn secret(namespace: &str, name: &str, kind: u8) -> Secret {
    let (type_, crt, key) = match kind {
        0 => ("kubernetes.io/tls", Some(CERT_A), Some(KEY)),
        1 => ("kubernetes.io/tls", Some(CERT_B), Some(KEY)),
        2 => ("Opaque", Some(CERT_A), Some(KEY)),
        3 => ("kubernetes.io/tls", Some(CERT_A), None),
        _ => ("kubernetes.io/tls", Some("garbage"), Some("more garbage")),
    };
    let data = [("tls.crt", crt), ("tls.key", key)]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), ByteString(v?.as_bytes().to_vec()))))
        .collect();
    Secret {
        metadata: meta(Some(namespace), name, None),
        type_: Some(type_.to_string()),
        data: Some(data),
        ..Default::default()
    }
}

// === strategies ===

fn port_ref() -> impl Strategy<Value = Option<Result<i32, &'static str>>> {
    prop_oneof![
        4 => pick(PORT_NUMBERS, ODD_PORT_NUMBERS).prop_map(|n| Some(Ok(n))),
        2 => pick(PORT_NAMES, ODD_PORT_NAMES).prop_map(|n| Some(Err(n))),
        1 => Just(None),
    ]
}

fn timestamp() -> impl Strategy<Value = Option<i64>> {
    // Few distinct values, so ties and missing timestamps are common.
    prop::option::of(select(&[0i64, 100, 200][..]))
}

fn ingress_path() -> impl Strategy<Value = HTTPIngressPath> {
    (
        prop::option::of(pick(PATHS, ODD_PATHS)),
        pick(PATH_TYPES, ODD_PATH_TYPES),
        pick(SERVICES, ODD_SERVICES),
        port_ref(),
    )
        .prop_map(|(path, path_type, svc, port)| HTTPIngressPath {
            path: path.map(str::to_string),
            path_type: path_type.to_string(),
            backend: backend(svc, port),
        })
}

fn ingress_rule() -> impl Strategy<Value = IngressRule> {
    (
        prop::option::weighted(0.85, pick(HOSTS, ODD_HOSTS)),
        prop::option::weighted(0.9, prop::collection::vec(ingress_path(), 0..4)),
    )
        .prop_map(|(host, paths)| IngressRule {
            host: host.map(str::to_string),
            http: paths.map(|paths| HTTPIngressRuleValue { paths }),
        })
}

fn ingress_tls() -> impl Strategy<Value = IngressTLS> {
    (
        prop::option::of(prop::collection::vec(pick(HOSTS, ODD_HOSTS), 0..3)),
        prop::option::of(pick(SECRETS, ODD_SECRETS)),
    )
        .prop_map(|(hosts, secret)| IngressTLS {
            hosts: hosts.map(|h| h.into_iter().map(str::to_string).collect()),
            secret_name: secret.map(str::to_string),
        })
}

prop_compose! {
    fn ingress()(
        namespace in prop::option::weighted(0.9, pick(NAMESPACES, ODD_NAMESPACES)),
        name in pick(&["i1", "i2", "i3"], &[""]),
        created in timestamp(),
        class in prop::option::weighted(0.8, pick(&["v"], &["other", "missing"])),
        legacy in prop::option::weighted(0.2, select(&["v", "other"][..])),
        rules in prop::option::weighted(0.9, prop::collection::vec(ingress_rule(), 0..5)),
        tls in prop::option::weighted(0.3, prop::collection::vec(ingress_tls(), 0..3)),
        default_backend in prop::option::of((pick(SERVICES, ODD_SERVICES), port_ref())),
    ) -> Ingress {
        let mut metadata = meta(namespace, name, created);
        if let Some(class) = legacy {
            metadata.annotations = Some(BTreeMap::from([(
                "kubernetes.io/ingress.class".to_string(),
                class.to_string(),
            )]));
        }
        Ingress {
            metadata,
            spec: Some(IngressSpec {
                ingress_class_name: class.map(str::to_string),
                rules,
                tls,
                default_backend: default_backend.map(|(s, p)| backend(s, p)),
            }),
            status: None,
        }
    }
}

prop_compose! {
    fn any_service()(
        namespace in pick(NAMESPACES, ODD_NAMESPACES),
        name in pick(SERVICES, ODD_SERVICES),
        external in prop::option::weighted(0.2, pick(&["ext.example.net"], &["not a host", ""])),
        ports in prop::collection::vec(
            (prop::option::of(pick(PORT_NAMES, ODD_PORT_NAMES)), pick(PORT_NUMBERS, ODD_PORT_NUMBERS), pick(PORT_NUMBERS, ODD_PORT_NUMBERS)),
            0..3,
        ),
    ) -> Service {
        let ports = ports.into_iter().map(|(n, p, t)| service_port(n, p, t)).collect();
        service(namespace, name, external, ports)
    }
}

prop_compose! {
    fn endpoint_slice()(
        namespace in pick(NAMESPACES, ODD_NAMESPACES),
        name in select(&["s1", "s2", "s3"][..]),
        service in prop::option::of(pick(SERVICES, ODD_SERVICES)),
        address_type in pick(ADDRESS_TYPES, ODD_ADDRESS_TYPES),
        ports in prop::option::of(prop::collection::vec(
            (prop::option::of(pick(PORT_NAMES, ODD_PORT_NAMES)), prop::option::of(pick(PORT_NUMBERS, ODD_PORT_NUMBERS))),
            0..3,
        )),
        endpoints in prop::collection::vec(
            (prop::collection::vec(pick(ADDRESSES, ODD_ADDRESSES), 0..2), prop::option::of(any::<bool>())),
            0..4,
        ),
    ) -> EndpointSlice {
        let mut metadata = meta(Some(namespace), name, None);
        metadata.labels = service.map(|s| {
            BTreeMap::from([("kubernetes.io/service-name".to_string(), s.to_string())])
        });
        EndpointSlice {
            metadata,
            address_type: address_type.to_string(),
            ports: ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|(name, port)| EndpointPort {
                        name: name.map(str::to_string),
                        port,
                        ..Default::default()
                    })
                    .collect()
            }),
            endpoints: endpoints
                .into_iter()
                .map(|(addresses, ready)| Endpoint {
                    addresses: addresses.into_iter().map(str::to_string).collect(),
                    conditions: Some(EndpointConditions {
                        ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

prop_compose! {
    fn tenant()(
        name in pick(TENANTS, ODD_TENANTS),
        created in timestamp(),
        domains in prop::collection::vec(pick(HOSTS, ODD_HOSTS), 0..4),
        namespaces in prop::collection::vec(pick(NAMESPACES, ODD_NAMESPACES), 0..4),
        backend in prop::option::of((
            pick(NAMESPACES, ODD_NAMESPACES),
            prop::collection::vec((pick(SERVICES, ODD_SERVICES), pick(PORT_NUMBERS, ODD_PORT_NUMBERS), pick(WEIGHTS, ODD_WEIGHTS)), 0..3),
        )),
        tls in prop::option::of((pick(NAMESPACES, ODD_NAMESPACES), pick(SECRETS, ODD_SECRETS))),
        rate in prop::option::of((any::<u32>(), any::<u32>())),
    ) -> Tenant {
        let mut t = Tenant::new(
            name,
            TenantSpec {
                domains: domains.into_iter().map(str::to_string).collect(),
                namespaces: namespaces.into_iter().map(str::to_string).collect(),
                backend: backend.map(|(namespace, services)| TenantBackend {
                    namespace: namespace.to_string(),
                    services: services
                        .into_iter()
                        .map(|(name, port, weight)| WeightedService {
                            name: name.to_string(),
                            port: IntOrString::Int(port),
                            weight,
                        })
                        .collect(),
                }),
                tls: tls.map(|(namespace, name)| {
                    TenantTls::SecretRef(SecretRef {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                    })
                }),
                rate_limit: rate.map(|(requests_per_second, burst)| RateLimit {
                    requests_per_second,
                    burst,
                }),
            },
        );
        t.metadata.creation_timestamp = created.map(|s| Time(Timestamp::from_second(s).unwrap()));
        t
    }
}

/// Keeps the first object of each (namespace, name): the API server never
/// holds two, and with two the translator may pick either.
fn unique<T>(objects: Vec<T>, meta: impl Fn(&T) -> &ObjectMeta) -> Vec<Arc<T>> {
    let mut seen = BTreeSet::new();
    objects
        .into_iter()
        .filter(|o| {
            let m = meta(o);
            seen.insert((m.namespace.clone(), m.name.clone()))
        })
        .map(Arc::new)
        .collect()
}

prop_compose! {
    fn snapshot()(
        ours_default in any::<bool>(),
        classes in prop::collection::vec(
            (
                select(&["v", "other"][..]),
                prop::option::of(select(&[CONTROLLER_NAME, "example.com/other"][..])),
                any::<bool>(),
            ),
            0..3,
        ),
        ingresses in prop::collection::vec(ingress(), 0..8),
        services in prop::collection::vec(any_service(), 0..6),
        slices in prop::collection::vec(endpoint_slice(), 0..6),
        secrets in prop::collection::vec(
            (
                pick(NAMESPACES, ODD_NAMESPACES),
                pick(SECRETS, ODD_SECRETS),
                prop_oneof![3 => 0u8..2, 2 => 2u8..5],
            ),
            0..6,
        ),
        tenants in prop::collection::vec(tenant(), 0..5),
    ) -> Snapshot {
        // Our class first, so it always exists (`unique` keeps the first "v").
        let classes = std::iter::once(("v", Some(CONTROLLER_NAME), ours_default))
            .chain(classes)
            .map(|(name, controller, default)| ingress_class(name, controller, default))
            .collect();
        let secrets = secrets
            .into_iter()
            .map(|(ns, name, kind)| secret(ns, name, kind))
            .collect();
        Snapshot {
            ingress_classes: unique(classes, |o| &o.metadata),
            ingresses: unique(ingresses, |o| &o.metadata),
            services: unique(services, |o| &o.metadata),
            endpoint_slices: unique(slices, |o| &o.metadata),
            secrets: unique(secrets, |o| &o.metadata),
            tenants: unique(tenants, |o| &o.metadata),
            ..Snapshot::default()
        }
    }
}

fn options() -> impl Strategy<Value = Options> {
    any::<bool>().prop_map(|require_tenant| Options {
        require_tenant,
        ..Options::default()
    })
}

/// Fisher-Yates with a xorshift generator, seeded by proptest.
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for i in (1..items.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let j = (*seed % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn shuffled(snapshot: &Snapshot, seed: u64) -> Snapshot {
    let mut s = snapshot.clone();
    let mut seed = seed | 1;
    shuffle(&mut s.ingress_classes, &mut seed);
    shuffle(&mut s.ingresses, &mut seed);
    shuffle(&mut s.services, &mut seed);
    shuffle(&mut s.endpoint_slices, &mut seed);
    shuffle(&mut s.secrets, &mut seed);
    shuffle(&mut s.tenants, &mut seed);
    s
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        // Failing inputs are saved next to this file (properties.regressions).
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    /// Same objects in any order -> same bytes and same version.
    #[test]
    fn translation_is_deterministic(snapshot in snapshot(), options in options(), seed in any::<u64>()) {
        let first = translate(&snapshot, &options);
        let second = translate(&shuffled(&snapshot, seed), &options);
        prop_assert_eq!(&first.config.version, &second.config.version);
        prop_assert_eq!(
            serde_json::to_string(&first).unwrap(),
            serde_json::to_string(&second).unwrap()
        );
    }

    /// Reusing an earlier translation's Secret checks changes nothing, with
    /// Secrets shared from before, new ones, and ones gone.
    #[test]
    fn certificate_memo_changes_nothing(before in snapshot(), after in snapshot(), options in options()) {
        let mut memo = CertificateMemo::default();
        let _ = translate_with(&before, &options, &mut memo);
        let mut mixed = after.clone();
        mixed.secrets.extend(before.secrets.iter().cloned());
        let plain = serde_json::to_string(&translate(&mixed, &options)).unwrap();
        for _ in 0..2 {
            let memoized = translate_with(&mixed, &options, &mut memo);
            prop_assert_eq!(&serde_json::to_string(&memoized).unwrap(), &plain);
        }
    }

    /// Arbitrary combinations, duplicates included, never panic.
    #[test]
    fn translation_never_panics(
        mut snapshot in snapshot(),
        extra_ingresses in prop::collection::vec(ingress(), 0..3),
        extra_tenants in prop::collection::vec(tenant(), 0..2),
        options in options(),
    ) {
        // Same-named objects too: the loader can see them in two files.
        snapshot.ingresses.extend(extra_ingresses.into_iter().map(Arc::new));
        snapshot.tenants.extend(extra_tenants.into_iter().map(Arc::new));
        let t = translate(&snapshot, &options);
        prop_assert!(t.config.validate().is_ok());
    }

    /// The config holds together and respects tenant ownership.
    #[test]
    fn config_invariants(snapshot in snapshot(), options in options()) {
        let config = translate(&snapshot, &options).config;
        if let Err(e) = config.validate() {
            return Err(TestCaseError::fail(format!("invalid config: {e}")));
        }
        prop_assert_eq!(&config.version, &config.content_version());

        let namespaces: BTreeMap<&str, BTreeSet<&str>> = snapshot
            .tenants
            .iter()
            .map(|t| {
                let name = t.metadata.name.as_deref().unwrap_or_default();
                (name, t.spec.namespaces.iter().map(String::as_str).collect())
            })
            .collect();

        for vhost in &config.hosts {
            for route in &vhost.routes {
                prop_assert!(
                    route.backend.pool().is_some_and(|p| config.pools.contains_key(p)),
                    "{:?}", route
                );
            }
            for pair in vhost.routes.windows(2) {
                prop_assert!(
                    pair[0].path.precedence_key() < pair[1].path.precedence_key(),
                    "{}: {} before {}", vhost.host, pair[0].path, pair[1].path
                );
            }

            // A host inside a tenant's domains is marked as the tenant's...
            for (id, tenant) in &config.tenants {
                if tenant.domains.iter().any(|d| d.covers(&vhost.host)) {
                    prop_assert_eq!(vhost.tenant.as_ref(), Some(id), "{}", vhost.host);
                }
            }
            // ...and routed only by the tenant itself or its namespaces' Ingresses.
            if let Some(id) = &vhost.tenant {
                let allowed = &namespaces[id.as_str()];
                for route in &vhost.routes {
                    let name = route.name.as_str();
                    let ok = name == format!("tenant/{id}")
                        || name
                            .strip_prefix("ingress/")
                            .and_then(|rest| rest.split_once('/'))
                            .is_some_and(|(ns, _)| allowed.contains(ns));
                    prop_assert!(ok, "{} on tenant {} host {}", name, id, vhost.host);
                }
            }
            if options.require_tenant {
                prop_assert!(vhost.tenant.is_some(), "unowned host {} in strict mode", vhost.host);
            }
        }
        if options.require_tenant {
            prop_assert!(config.default_backend.is_none());
        }
        for pool in config.pools.values() {
            if let vestibule_config::model::Pool::Endpoints(eps) = pool {
                prop_assert!(eps.iter().all(|e| e.weight >= 1));
                prop_assert!(eps.windows(2).all(|w| w[0].address < w[1].address));
            }
        }
        // Every tenant in the config owns at least one valid, non-`*` domain.
        for tenant in config.tenants.values() {
            prop_assert!(!tenant.domains.is_empty());
            prop_assert!(!tenant.domains.contains(&HostPattern::Any));
        }
    }
}

// === incremental translation ===

/// Most objects made local (exact hosts, no default backend), so changes
/// take the partial path; one in four left as generated (wildcards,
/// host-less rules), which takes the full one.
fn localized(mut snapshot: Snapshot, keep_global: bool) -> Snapshot {
    if keep_global {
        return snapshot;
    }
    let exact = |h: &mut String| {
        if let Some(rest) = h.strip_prefix("*.") {
            *h = format!("w.{rest}");
        } else if h.is_empty() || h == "*" {
            *h = "a.example.com".to_string();
        }
    };
    for i in &mut snapshot.ingresses {
        let i = Arc::make_mut(i);
        i.metadata.namespace.get_or_insert_with(|| "a".to_string());
        if let Some(spec) = i.spec.as_mut() {
            spec.default_backend = None;
            for rule in spec.rules.iter_mut().flatten() {
                exact(rule.host.get_or_insert_with(String::new));
            }
            for tls in spec.tls.iter_mut().flatten() {
                tls.hosts.iter_mut().flatten().for_each(exact);
            }
        }
    }
    for t in &mut snapshot.tenants {
        Arc::make_mut(t).spec.domains.iter_mut().for_each(exact);
    }
    snapshot
}

/// One change to a snapshot: an object added or replaced (by namespace
/// and name), or removed.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // test data, built a few thousand times
enum Edit {
    Ingress(Ingress),
    Service(Service),
    Slice(EndpointSlice),
    Secret(Secret),
    Tenant(Tenant),
    Remove(u8, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => ingress().prop_map(Edit::Ingress),
        1 => any_service().prop_map(Edit::Service),
        1 => endpoint_slice().prop_map(Edit::Slice),
        1 => (pick(NAMESPACES, ODD_NAMESPACES), pick(SECRETS, ODD_SECRETS), 0u8..5)
            .prop_map(|(ns, name, kind)| Edit::Secret(secret(ns, name, kind))),
        2 => tenant().prop_map(Edit::Tenant),
        2 => (0u8..5, any::<usize>()).prop_map(|(kind, i)| Edit::Remove(kind, i)),
    ]
}

fn upsert<T: kube::Resource + Clone>(objects: &mut Vec<Arc<T>>, object: T) {
    let same = |o: &Arc<T>| {
        o.meta().namespace == object.meta().namespace && o.meta().name == object.meta().name
    };
    match objects.iter_mut().find(|o| same(o)) {
        Some(o) => *o = Arc::new(object),
        None => objects.push(Arc::new(object)),
    }
}

fn remove<T>(objects: &mut Vec<Arc<T>>, i: usize) {
    if !objects.is_empty() {
        let n = objects.len();
        objects.remove(i % n);
    }
}

/// Applies `edit`, localizing only the object it brings: the others keep
/// their `Arc`s, as in a reflector store or the manifest cache.
fn apply_edit(snapshot: &mut Snapshot, edit: Edit, keep_global: bool) {
    let one = |ingresses: Vec<Arc<Ingress>>, tenants: Vec<Arc<Tenant>>| {
        localized(
            Snapshot {
                ingresses,
                tenants,
                ..Snapshot::default()
            },
            keep_global,
        )
    };
    match edit {
        Edit::Ingress(i) => {
            let i = one(vec![Arc::new(i)], vec![]).ingresses.remove(0);
            upsert(&mut snapshot.ingresses, (*i).clone())
        }
        Edit::Service(s) => upsert(&mut snapshot.services, s),
        Edit::Slice(s) => upsert(&mut snapshot.endpoint_slices, s),
        Edit::Secret(s) => upsert(&mut snapshot.secrets, s),
        Edit::Tenant(t) => {
            let t = one(vec![], vec![Arc::new(t)]).tenants.remove(0);
            upsert(&mut snapshot.tenants, (*t).clone())
        }
        Edit::Remove(0, i) => remove(&mut snapshot.ingresses, i),
        Edit::Remove(1, i) => remove(&mut snapshot.services, i),
        Edit::Remove(2, i) => remove(&mut snapshot.endpoint_slices, i),
        Edit::Remove(3, i) => remove(&mut snapshot.secrets, i),
        Edit::Remove(_, i) => remove(&mut snapshot.tenants, i),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    /// The incremental translator's config, statuses and ACME plan after
    /// every change are the full translation's, byte for byte, and each
    /// delta turns the previous config into the new one.
    #[test]
    fn incremental_translation_is_the_full_translation(
        base in snapshot(),
        edits in prop::collection::vec(edit(), 1..24),
        options in options(),
        keep_global in prop::bool::weighted(0.25),
    ) {
        let mut snapshot = localized(base, keep_global);
        let mut inc = vestibule_config::translate::Incremental::new(options.clone());
        inc.update(&snapshot);
        for edit in edits {
            let before = inc.config().clone();
            apply_edit(&mut snapshot, edit, keep_global);
            let update = inc.update(&snapshot);
            let reference = translate(&snapshot, &options);
            prop_assert_eq!(
                serde_json::to_string(inc.config()).unwrap(),
                serde_json::to_string(&reference.config).unwrap()
            );
            let statuses: Vec<_> = inc.statuses().cloned().collect();
            prop_assert_eq!(&statuses, &reference.statuses);
            prop_assert_eq!(inc.acme(), &reference.acme);
            let mut patched = before;
            patched.apply(&update.delta).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&patched, &reference.config);
        }
    }
}

/// The local snapshots above do take the partial path: an Ingress added
/// for a new host re-translates that host only.
#[test]
fn partial_translations_happen() {
    let options = Options::default();
    let mut snapshot = Snapshot {
        ingress_classes: vec![Arc::new(ingress_class("v", Some(CONTROLLER_NAME), true))],
        ..Snapshot::default()
    };
    let mut inc = vestibule_config::translate::Incremental::new(options.clone());
    assert!(inc.update(&snapshot).full);
    for i in 0..20 {
        let host = format!("h{i}.example.com");
        let ingress = Ingress {
            metadata: meta(Some("a"), &format!("i{i}"), None),
            spec: Some(IngressSpec {
                rules: Some(vec![IngressRule {
                    host: Some(host),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".into()),
                            path_type: "Prefix".into(),
                            backend: backend("web", Some(Ok(80))),
                        }],
                    }),
                }]),
                ..Default::default()
            }),
            status: None,
        };
        snapshot.ingresses.push(Arc::new(ingress));
        let update = inc.update(&snapshot);
        let full = translate(&snapshot, &options);
        assert_eq!(inc.config(), &full.config);
        if i >= 1 {
            assert!(!update.full, "change {i} was translated in full");
            assert_eq!(update.delta.hosts.len(), 1, "{:?}", update.delta);
        }
    }
}
