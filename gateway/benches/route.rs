//! Route lookup cost at 1k, 10k and 100k hosts: it must stay flat (hash
//! probes, no scan), and include host normalization as the proxy does it.
//! And with Gateway API conditions in the mix (method, header and query
//! matches) from 100 to 10,000 routes: flat as well, and allocation-free.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vestibule_config::model::{
    Conditions, GatewayConfig, PathMatch, PoolId, Route, RouteName, VirtualHost,
};
use vestibule_config::HostPattern;
use vestibule_gateway::route::{normalize_host, HostBuf, RouteTable};

fn route(name: &str, path: PathMatch) -> Route {
    Route::to_pool(RouteName::new(name), path, PoolId::new("p"))
}

fn host_name(i: usize) -> String {
    // Every tenth host is a wildcard, as SaaS configs mix both.
    if i.is_multiple_of(10) {
        format!("*.tenant-{i}.example.com")
    } else {
        format!("tenant-{i}.example.com")
    }
}

fn config(hosts: usize) -> GatewayConfig {
    let mut config = GatewayConfig::default();
    for i in 0..hosts {
        config.hosts.push(VirtualHost {
            host: HostPattern::parse(&host_name(i)).unwrap(),
            tenant: None,
            tls: None,
            wildcard: Default::default(),
            plain_http: Default::default(),
            routes: vec![
                route("api", PathMatch::prefix("/api")),
                route("health", PathMatch::Exact("/healthz".into())),
                route("root", PathMatch::prefix("/")),
            ],
        });
    }
    config
}

/// `hosts` hosts of five HTTPRoute-like routes each: a header match and a
/// method + query match on `/api`, a two-header match on `/`, and the
/// unconditioned `/api` and `/` behind them.
fn conditional_config(hosts: usize) -> GatewayConfig {
    let when = |json: &str| -> Conditions { serde_json::from_str(json).unwrap() };
    let with = |name: &str, path: PathMatch, c: Conditions| Route {
        conditions: c,
        ..route(name, path)
    };
    let mut config = GatewayConfig::default();
    for i in 0..hosts {
        config.hosts.push(VirtualHost {
            host: HostPattern::parse(&host_name(i)).unwrap(),
            tenant: None,
            tls: None,
            wildcard: Default::default(),
            plain_http: Default::default(),
            routes: vec![
                with(
                    "api-canary",
                    PathMatch::prefix("/api"),
                    when(r#"{"headers": [{"name": "x-canary", "value": "true"}]}"#),
                ),
                with(
                    "api-post-v2",
                    PathMatch::prefix("/api"),
                    when(r#"{"method": "POST", "query": [{"name": "v", "value": "2"}]}"#),
                ),
                route("api", PathMatch::prefix("/api")),
                with(
                    "root-beta",
                    PathMatch::prefix("/"),
                    when(
                        r#"{"headers": [{"name": "x-env", "value": "beta"}, {"name": "x-region", "value": "eu"}]}"#,
                    ),
                ),
                route("root", PathMatch::prefix("/")),
            ],
        });
    }
    config
}

fn request_host(i: usize) -> String {
    if i.is_multiple_of(10) {
        format!("App.Tenant-{i}.example.com:8080")
    } else {
        format!("Tenant-{i}.Example.com:8080")
    }
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [1_000usize, 10_000, 100_000] {
        let table = RouteTable::build(&config(n), |_, r| r.name.clone(), None);
        // The same number of distinct request hosts (a working set of 1024)
        // spread over the whole table, so only the table size varies; with
        // the port and mixed case real Host headers carry.
        let requests: Vec<(String, &str)> = (0..1024)
            .map(|k| {
                let i = (k * 7919) % n;
                let path = ["/api/v1/users", "/healthz", "/index.html"][k % 3];
                (request_host(i), path)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut k = 0usize;
            b.iter(|| {
                let (host, path) = &requests[k & 1023];
                k += 1;
                let mut buf = HostBuf::new();
                let host = normalize_host(black_box(host.as_bytes()), &mut buf).unwrap();
                black_box(table.lookup(host, *path).route().is_some())
            })
        });
    }
    group.finish();
}

/// A request: method, URI, headers.
type Shape = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Distinct request hosts of the conditions bench: as many as the smallest
/// table has, spread over the table, so every size sees the same working
/// set and only the table size varies. (`route_lookup_conditions_spread`
/// spreads 1024 hosts instead: that adds the cache misses of a larger
/// working set, as `route_lookup` shows for plain routes.)
const HOT_HOSTS: usize = 20;

fn lookup_with_conditions(c: &mut Criterion) {
    conditions_group(
        c,
        "route_lookup_conditions",
        &[100, 1_000, 10_000],
        HOT_HOSTS,
    );
    conditions_group(c, "route_lookup_conditions_spread", &[1_000, 10_000], 1024);
}

fn conditions_group(c: &mut Criterion, name: &str, sizes: &[usize], hosts: usize) {
    let mut group = c.benchmark_group(name);
    // Routes, five per host.
    for &routes in sizes {
        let n = routes / 5;
        let distinct = hosts.min(n);
        let table = RouteTable::build(&conditional_config(n), |_, r| r.name.clone(), None);
        // Requests that hit each kind of route, and ones that fall through
        // every condition to the plain routes.
        let shapes: [Shape; 5] = [
            ("GET", "/api/v1/users", &[("x-canary", "true")]),
            ("POST", "/api/orders?v=2", &[]),
            ("GET", "/api/orders?v=1", &[("x-canary", "false")]),
            (
                "GET",
                "/index.html",
                &[("x-env", "beta"), ("x-region", "eu")],
            ),
            (
                "GET",
                "/index.html",
                &[("x-env", "beta"), ("user-agent", "bench")],
            ),
        ];
        let requests: Vec<(String, http::request::Parts)> = (0..1024)
            .map(|k| {
                let (method, uri, headers) = shapes[k % shapes.len()];
                let mut b = http::Request::builder().method(method).uri(uri);
                for (name, value) in headers {
                    b = b.header(*name, *value);
                }
                let parts = b.body(()).unwrap().into_parts().0;
                (request_host((k % distinct) * (n / distinct)), parts)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(routes), &routes, |b, _| {
            let mut k = 0usize;
            b.iter(|| {
                let (host, parts) = &requests[k & 1023];
                k += 1;
                let mut buf = HostBuf::new();
                let host = normalize_host(black_box(host.as_bytes()), &mut buf).unwrap();
                black_box(table.lookup(host, parts).route().is_some())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, lookup_with_conditions);
criterion_main!(benches);
