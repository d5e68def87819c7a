//! Cost of `--manifests DIR` at 1k and 10k TLS hosts: a cold load plus
//! translation (startup), and a reload after one new Ingress file (change ->
//! live), laid out like the load test's directory: one file of Ingresses,
//! one of TLS Secrets, one with the class, Service and EndpointSlice.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vestibule_config::manifests::ManifestCache;
use vestibule_config::{load_paths, translate, translate_with, CertificateMemo, Loaded, Options};

/// A real P-256 certificate and key. Each Secret gets a distinct copy (one
/// base64 line replaced by its number) so certificates are not deduplicated:
/// the loader and translator only check the PEM shape.
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBhDCCASqgAwIBAgIUQSZUIlYoDXiXP3CxnHh8CG+WcpUwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSVmVzdGlidWxlIGJlbmNoIENBMB4XDTI2MTIwMzE4NTkxM1oX
DTI3MTIwNDE4NTkxM1owHzEdMBsGA1UEAwwUaDEuYmVuY2guZXhhbXBsZS5jb20w
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARrkNGFp3TPgFp7ixPFjYQ3KsPS1QPa
cOMW9VdDCNkyGAynEd9kxLEm/Q9hkp1VvnBph577Op7KoJS+mk48FR7Oo0YwRDAf
BgNVHREEGDAWghRoMS5iZW5jaC5leGFtcGxlLmNvbTAMBgNVHRMBAf8EAjAAMBMG
A1UdJQQMMAoGCCsGAQUFBwMBMAoGCCqGSM49BAMCA0gAMEUCIQCeFpAmhp87hyvd
LJS0YQZLyouk+ChbxHBOmtbtSAVDKwIgLigFdph0cx/K1iakjDFwA5WYaNC8u4JW
2DvKN99ha20=
-----END CERTIFICATE-----
";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQ9+of1LWaismW5CE
VV8tE0Wb8mCw57DRa3qxwj3cRYWhRANCAARrkNGFp3TPgFp7ixPFjYQ3KsPS1QPa
cOMW9VdDCNkyGAynEd9kxLEm/Q9hkp1VvnBph577Op7KoJS+mk48FR7O
-----END PRIVATE KEY-----
";

const BASE: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: vestibule
  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}
spec: {controller: vestibule.dev/ingress-controller}
---
apiVersion: v1
kind: Service
metadata: {name: up, namespace: bench}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: up-1, namespace: bench, labels: {kubernetes.io/service-name: up}}
addressType: IPv4
ports: [{name: http, port: 8081}]
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
";

fn ingress(i: usize) -> String {
    format!(
        "---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: site-{i}, namespace: bench}}
spec:
  tls: [{{hosts: [h{i}.bench.example.com], secretName: cert-{i}}}]
  rules:
  - host: h{i}.bench.example.com
    http:
      paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: up, port: {{name: http}}}}}}}}]
"
    )
}

fn secret(i: usize) -> String {
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("      {l}\n")).collect() };
    let cert = CERT.replacen(
        "HTEbMBkGA1UEAwwSVmVzdGlidWxlIGJlbmNoIENBMB4XDTI2MTIwMzE4NTkxM1oX",
        &format!("{i:0>64}"),
        1,
    );
    format!(
        "---
apiVersion: v1
kind: Secret
metadata: {{name: cert-{i}, namespace: bench}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}",
        indent(&cert),
        indent(KEY)
    )
}

/// A fresh directory with `hosts` TLS hosts.
fn generate(hosts: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vestibule-bench-load-{}-{hosts}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("base.yaml"), BASE).unwrap();
    let ingresses: String = (1..=hosts).map(ingress).collect();
    std::fs::write(dir.join("ingresses.yaml"), ingresses).unwrap();
    let secrets: String = (1..=hosts).map(secret).collect();
    std::fs::write(dir.join("secrets.yaml"), secrets).unwrap();
    dir
}

/// Renames a new one-Ingress file into `dir`, as the load test does.
fn add_file(dir: &Path, n: usize) {
    let tmp = dir.join(format!(".new-{n}.tmp"));
    std::fs::write(&tmp, ingress(1_000_000 + n)).unwrap();
    std::fs::rename(&tmp, dir.join(format!("new-{n}.yaml"))).unwrap();
}

fn load_and_translate(dir: &Path) -> usize {
    translated(load_paths(&[dir]))
}

fn translated(loaded: Loaded) -> usize {
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    translate(&loaded.snapshot, &Options::default())
        .config
        .hosts
        .len()
}

fn bench_load(c: &mut Criterion) {
    let mut group = c.benchmark_group("manifests");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    for hosts in [1_000, 10_000] {
        let dir = generate(hosts);
        group.bench_with_input(BenchmarkId::new("load_translate", hosts), &dir, |b, dir| {
            b.iter(|| black_box(load_and_translate(dir)))
        });
        group.bench_with_input(BenchmarkId::new("load", hosts), &dir, |b, dir| {
            b.iter(|| black_box(load_paths(&[dir]).snapshot.ingresses.len()))
        });
        let snapshot = load_paths(&[&dir]).snapshot;
        group.bench_with_input(BenchmarkId::new("translate", hosts), &snapshot, |b, s| {
            b.iter(|| black_box(translate(s, &Options::default()).config.hosts.len()))
        });
        // The gateway's reload: the cache holds the last load's files, the
        // memo the last translation's certificate checks.
        let mut cache = ManifestCache::new();
        let mut memo = CertificateMemo::default();
        translate_with(
            &cache.load(&[&dir]).snapshot,
            &Options::default(),
            &mut memo,
        );
        let mut n = 0;
        group.bench_with_input(
            BenchmarkId::new("reload_one_file", hosts),
            &dir,
            |b, dir| {
                b.iter(|| {
                    n += 1;
                    add_file(dir, n);
                    let loaded = cache.load(&[dir]);
                    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
                    let t = translate_with(&loaded.snapshot, &Options::default(), &mut memo);
                    black_box(t.config.hosts.len())
                })
            },
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
