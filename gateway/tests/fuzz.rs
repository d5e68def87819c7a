//! Property-based fuzzing (runs in CI; see SECURITY.md for longer runs):
//! the manifest loader, the config parser, the translator and the route
//! matcher never panic on arbitrary input, and the compiled route table
//! agrees with a reference matcher written straight from DESIGN.md's
//! semantics on random configs, hosts and paths.
//!
//! Longer run: `PROPTEST_CASES=100000 cargo test --release -p vestibule-gateway --test fuzz`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::select;
use vestibule_config::manifests::{load_text, Loaded};
use vestibule_config::model::{
    Backend, GatewayConfig, PathMatch, Pool, PoolId, Route, RouteName, Tenant, TenantId,
    VirtualHost,
};
use vestibule_config::{translate, HostPattern, Options};
use vestibule_gateway::route::{normalize_host, HostBuf, Lookup, RouteTable};

// === no panics on arbitrary input ===

/// YAML-ish text: fragments of real manifests shuffled with noise, so the
/// parser gets past the first byte as often as it fails on it.
fn yamlish() -> impl Strategy<Value = String> {
    let fragments = select(vec![
        "apiVersion: networking.k8s.io/v1\n",
        "apiVersion: v1\n",
        "apiVersion: vestibule.dev/v1alpha1\n",
        "apiVersion: discovery.k8s.io/v1\n",
        "kind: Ingress\n",
        "kind: Service\n",
        "kind: Tenant\n",
        "kind: EndpointSlice\n",
        "kind: Secret\n",
        "kind: IngressClass\n",
        "metadata: {name: a, namespace: b}\n",
        "metadata:\n  name: x\n",
        "spec:\n",
        "  rules:\n  - host: a.test\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {service: {name: s, port: {number: 80}}}\n",
        "  domains: ['*.a.test', a.test]\n",
        "  rateLimit: {requestsPerSecond: -1, burst: 99999999999}\n",
        "  ports: [{port: 80, name: http}]\n",
        "  type: ExternalName\n  externalName: x..y\n",
        "endpoints: [{addresses: ['10.0.0.1'], conditions: {ready: true}}]\n",
        "data: {tls.crt: bm90IGEgY2VydA==, tls.key: ''}\n",
        "---\n",
        "- \n",
        "&a [*a]\n",
        "!!binary x\n",
        "{\n",
        "}\n",
        "\t\n",
        ": :\n",
        "\u{0}\u{feff}",
    ]);
    prop::collection::vec(
        prop_oneof![4 => fragments.prop_map(str::to_string), 1 => ".{0,40}"],
        0..24,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn manifest_loader_and_translator_never_panic(text in yamlish()) {
        let mut loaded = Loaded::default();
        load_text(Path::new("fuzz.yaml"), &text, &mut loaded);
        let out = translate(&loaded.snapshot, &Options::default());
        // Whatever came in, what comes out holds together.
        prop_assert!(out.config.validate().is_ok());
    }

    #[test]
    fn manifest_loader_takes_raw_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let mut loaded = Loaded::default();
        load_text(Path::new("fuzz.yaml"), &text, &mut loaded);
        let _ = translate(&loaded.snapshot, &Options::default());
    }

    #[test]
    fn config_parser_never_panics(text in prop_oneof![yamlish(), ".{0,200}", config_json()]) {
        let _ = GatewayConfig::from_text(&text);
    }

    #[test]
    fn host_normalization_and_lookup_never_panic(
        host in prop::collection::vec(any::<u8>(), 0..300),
        path in ".{0,64}",
    ) {
        let table = RouteTable::build(&sample_config(), |_, r| r.name.to_string(), Some("default".into()));
        let mut buf = HostBuf::new();
        let h = normalize_host(&host, &mut buf).unwrap_or("");
        let _ = table.lookup(h, path.as_str());
    }
}

/// A valid config serialized, then mangled.
fn config_json() -> impl Strategy<Value = String> {
    (0usize..400, any::<u8>()).prop_map(|(at, b)| {
        let mut s = serde_json::to_vec(&sample_config()).unwrap();
        let i = at % s.len();
        s[i] = b;
        String::from_utf8_lossy(&s).into_owned()
    })
}

fn sample_config() -> GatewayConfig {
    GatewayConfig {
        hosts: vec![VirtualHost {
            host: HostPattern::parse("*.a.test").unwrap(),
            tenant: None,
            tls: None,
            wildcard: Default::default(),
            plain_http: Default::default(),
            routes: vec![route("r", PathMatch::prefix("/x"))],
        }],
        pools: [(PoolId::new("p"), Pool::Endpoints(vec![]))].into(),
        ..Default::default()
    }
}

fn route(name: &str, path: PathMatch) -> Route {
    Route::to_pool(RouteName::new(name), path, PoolId::new("p"))
}

// === the route table against a reference matcher ===

const LABELS: &[&str] = &["a", "b", "www", "api"];
const DOMAINS: &[&str] = &["x.test", "a.x.test", "y.test"];
const SEGMENTS: &[&str] = &["foo", "bar", "foobar", "b", ""];

fn pattern() -> impl Strategy<Value = HostPattern> {
    prop_oneof![
        4 => (select(LABELS), select(DOMAINS)).prop_map(|(l, d)| HostPattern::parse(&format!("{l}.{d}")).unwrap()),
        3 => select(DOMAINS).prop_map(|d| HostPattern::parse(d).unwrap()),
        3 => select(DOMAINS).prop_map(|d| HostPattern::parse(&format!("*.{d}")).unwrap()),
        1 => Just(HostPattern::Any),
    ]
}

fn path_text() -> impl Strategy<Value = String> {
    prop::collection::vec(select(SEGMENTS), 0..4).prop_map(|s| format!("/{}", s.join("/")))
}

fn path_match() -> impl Strategy<Value = PathMatch> {
    prop_oneof![
        path_text().prop_map(PathMatch::Exact),
        path_text().prop_map(|p| PathMatch::prefix(&p)),
    ]
}

fn config() -> impl Strategy<Value = GatewayConfig> {
    let vhost = (
        pattern(),
        any::<bool>(),
        prop::collection::btree_set(path_match(), 0..5),
    );
    (prop::collection::vec(vhost, 0..8), any::<bool>()).prop_map(|(vhosts, default)| {
        // One vhost per pattern, as the translator emits.
        let mut by_pattern = BTreeMap::new();
        for (i, (p, tenant, paths)) in vhosts.into_iter().enumerate() {
            by_pattern.entry(p).or_insert((i, tenant, paths));
        }
        let mut tenants = BTreeMap::new();
        let hosts = by_pattern
            .into_iter()
            .map(|(host, (i, tenant, paths))| {
                let tenant = tenant.then(|| {
                    let id = TenantId::new(format!("t{i}"));
                    tenants.insert(
                        id.clone(),
                        Tenant {
                            domains: vec![host.clone()],
                            rate_limit: None,
                            cluster_rate_limit: None,
                        },
                    );
                    id
                });
                let mut routes: Vec<Route> = paths
                    .into_iter()
                    .enumerate()
                    .map(|(j, p)| route(&format!("v{i}r{j}"), p))
                    .collect();
                routes.sort_by(|a, b| a.path.precedence_key().cmp(&b.path.precedence_key()));
                VirtualHost {
                    host,
                    tenant,
                    tls: None,
                    wildcard: Default::default(),
                    plain_http: Default::default(),
                    routes,
                }
            })
            .collect();
        GatewayConfig {
            hosts,
            default_backend: default.then(|| Backend::Pool(PoolId::new("p"))),
            pools: [(PoolId::new("p"), Pool::Endpoints(vec![]))].into(),
            tenants,
            ..Default::default()
        }
    })
}

/// DESIGN.md, "Ingress semantics", read literally.
fn reference(config: &GatewayConfig, host: &str, path: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let host = host.split(':').next().unwrap_or("");
    let host = host.strip_suffix('.').unwrap_or(host);
    // Exact hosts, then `*.suffix` with exactly one extra label, then `*`.
    let vhost = config
        .hosts
        .iter()
        .find(|v| matches!(&v.host, HostPattern::Exact(h) if h.as_str() == host))
        .or_else(|| {
            config.hosts.iter().find(|v| match &v.host {
                HostPattern::Wildcard(s) => host
                    .strip_suffix(s.as_str())
                    .and_then(|l| l.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                _ => false,
            })
        })
        .or_else(|| config.hosts.iter().find(|v| v.host == HostPattern::Any));
    let default = config
        .default_backend
        .as_ref()
        .map(|_| "default".to_string());
    let Some(vhost) = vhost else { return default };
    // Exact: equal. Prefix: by path element. Longest wins; Exact beats a
    // Prefix of the same path.
    let matches = |m: &PathMatch| match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            let p = p.trim_end_matches('/');
            p.is_empty() || path == p || path.starts_with(&format!("{p}/"))
        }
        // The fuzzed configs hold no regex paths.
        PathMatch::Regex(_) => false,
    };
    let best = vhost
        .routes
        .iter()
        .filter(|r| matches(&r.path))
        .max_by_key(|r| (r.path.as_str().len(), matches!(r.path, PathMatch::Exact(_))));
    match best {
        Some(r) => Some(r.name.to_string()),
        // A tenant's host never falls to the default backend.
        None if vhost.tenant.is_some() => None,
        None => default,
    }
}

fn request_host() -> impl Strategy<Value = String> {
    (
        prop::option::of(select(LABELS)),
        prop::option::of(select(LABELS)),
        select(DOMAINS),
        any::<bool>(),
        prop::option::of(1u16..65535),
    )
        .prop_map(|(l1, l2, d, upper, port)| {
            let mut h = [l1, l2, Some(d)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(".");
            if upper {
                h = h.to_ascii_uppercase();
            }
            match port {
                Some(p) => format!("{h}:{p}"),
                None => h,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn route_table_agrees_with_the_reference(
        config in config(),
        requests in prop::collection::vec((request_host(), path_text()), 1..16),
    ) {
        let table = RouteTable::build(&config, |_, r| r.name.to_string(), config.default_backend.as_ref().map(|_| "default".to_string()));
        for (host, path) in requests {
            let mut buf = HostBuf::new();
            let h = normalize_host(host.as_bytes(), &mut buf).unwrap_or("");
            let got = match table.lookup(h, path.as_str()) {
                Lookup::Route { route, .. } | Lookup::Default { route, .. } => Some(route.clone()),
                Lookup::NoRoute { .. } | Lookup::NoHost => None,
            };
            prop_assert_eq!(got, reference(&config, &host, &path), "host {} path {}", host, path);
        }
    }
}
