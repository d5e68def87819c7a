//! Shared test support: the fake API server, object builders, a tiny HTTP
//! client for the config server, and polling helpers.
#![allow(dead_code)]

pub mod fake_api;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use vestibule_operator::leader::LeaseSettings;
use vestibule_operator::{Running, Settings};

pub use fake_api::FakeApi;

pub const TOKEN: &str = "test-token-123";

/// A scratch directory, removed by the caller when it likes.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vestibule-op-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Settings for fast tests: loopback ports, short lease and long-poll.
pub fn test_settings(identity: &str) -> Settings {
    let dir = temp_dir("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let mut s = Settings::new(token_file, identity.into());
    s.listen = "127.0.0.1:0".parse().expect("addr");
    s.metrics = "127.0.0.1:0".parse().expect("addr");
    s.lease =
        LeaseSettings::with_duration("vestibule".into(), identity.into(), Duration::from_secs(1));
    s.server.long_poll = Duration::from_millis(700);
    s.shutdown_grace = Duration::from_secs(2);
    s
}

/// Applies `object` and waits until the operator has translated the change,
/// so a check that nothing followed is a check of a processed change.
pub async fn apply_and_settle(api: &FakeApi, op: &Running, object: serde_json::Value) {
    let translations = || op.metrics.translate_seconds.get_sample_count();
    let before = translations();
    api.apply(object);
    eventually(Duration::from_secs(3), "a translation", || async {
        (translations() > before).then_some(())
    })
    .await;
}

pub async fn start(api: &FakeApi, settings: Settings) -> Running {
    vestibule_operator::start(api.client(), settings)
        .await
        .expect("operator starts")
}

pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn version(&self) -> Option<String> {
        self.headers
            .get("x-config-version")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// One GET over a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = sender
        .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
        .await
        .expect("response");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// GET /v1/config with the test token.
pub async fn get_config(addr: SocketAddr, after: Option<&str>) -> HttpResponse {
    let path = match after {
        Some(a) => format!("/v1/config?after={a}"),
        None => "/v1/config".into(),
    };
    let auth = format!("Bearer {TOKEN}");
    get(addr, &path, &[("authorization", &auth)]).await
}

/// Polls `check` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === object builders ===

pub fn ingress_class() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "vestibule"},
        "spec": {"controller": "vestibule.dev/ingress-controller"},
    })
}

pub fn service(ns: &str, name: &str, port: i32) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": port, "targetPort": port}]},
    })
}

pub fn load_balancer_service(ns: &str, name: &str, ip: &str) -> Value {
    let mut s = service(ns, name, 443);
    s["spec"]["type"] = json!("LoadBalancer");
    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
    s
}

pub fn endpoint_slice(ns: &str, service: &str, addresses: &[&str], port: i32) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": ns,
            "name": format!("{service}-abc"),
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })
}

pub fn ingress(ns: &str, name: &str, host: &str, service: &str, port: i32) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "ingressClassName": "vestibule",
            "rules": [{
                "host": host,
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": service, "port": {"number": port}}},
                }]},
            }],
        },
    })
}

pub fn tenant(name: &str, domains: &[&str], namespaces: &[&str]) -> Value {
    json!({
        "apiVersion": "vestibule.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"domains": domains, "namespaces": namespaces},
    })
}

/// The hosts of a served config JSON.
pub fn hosts(config: &Value) -> Vec<String> {
    config["hosts"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter_map(|h| h["host"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Endpoint addresses of a pool in a served config JSON.
pub fn pool_addresses(config: &Value, pool: &str) -> Vec<String> {
    let mut out: Vec<String> = config["pools"][pool]["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter_map(|e| e["address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
