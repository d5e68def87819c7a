//! Route lookup cost at 1k, 10k and 100k hosts: it must stay flat (hash
//! probes, no scan), and include host normalization as the proxy does it.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vestibule_config::model::{
    Backend, GatewayConfig, PathMatch, PoolId, Route, RouteName, VirtualHost,
};
use vestibule_config::HostPattern;
use vestibule_gateway::route::{normalize_host, HostBuf, RouteTable};

fn config(hosts: usize) -> GatewayConfig {
    let route = |name: &str, path: PathMatch| Route {
        name: RouteName::new(name),
        path,
        backend: Backend::Pool(PoolId::new("p")),
    };
    let mut config = GatewayConfig::default();
    for i in 0..hosts {
        // Every tenth host is a wildcard, as SaaS configs mix both.
        let host = if i % 10 == 0 {
            format!("*.tenant-{i}.example.com")
        } else {
            format!("tenant-{i}.example.com")
        };
        config.hosts.push(VirtualHost {
            host: HostPattern::parse(&host).unwrap(),
            tenant: None,
            tls: None,
            routes: vec![
                route("api", PathMatch::prefix("/api")),
                route("health", PathMatch::Exact("/healthz".into())),
                route("root", PathMatch::prefix("/")),
            ],
        });
    }
    config
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
                let host = if i % 10 == 0 {
                    format!("App.Tenant-{i}.example.com:8080")
                } else {
                    format!("Tenant-{i}.Example.com:8080")
                };
                let path = ["/api/v1/users", "/healthz", "/index.html"][k % 3];
                (host, path)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut k = 0usize;
            b.iter(|| {
                let (host, path) = &requests[k & 1023];
                k += 1;
                let mut buf = HostBuf::new();
                let host = normalize_host(black_box(host.as_bytes()), &mut buf).unwrap();
                black_box(table.lookup(host, path).route().is_some())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
