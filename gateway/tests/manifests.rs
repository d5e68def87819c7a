//! End-to-end through the embedded translator: `--manifests DIR` with real
//! Ingress, Service and EndpointSlice YAML, watched for edits.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const CLASS_AND_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: vestibule}
spec: {controller: vestibule.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: app, namespace: prod, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  ingressClassName: vestibule
  rules:
    - host: app.test
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 80}}}}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: prod}
spec: {ports: [{name: web, port: 80, targetPort: http}]}
"#;

/// The `app` Ingress of [`CLASS_AND_INGRESS`], named `name`, for `host`.
fn ingress(name: &str, host: &str) -> String {
    CLASS_AND_INGRESS
        .split("---")
        .nth(1)
        .unwrap()
        .replace("name: app, namespace", &format!("name: {name}, namespace"))
        .replace("app.test", host)
}

/// The gateway on a directory of [`CLASS_AND_INGRESS`] and a slice of one
/// upstream (`name`), once `app.test` answers.
async fn app_gateway(name: &str) -> (Upstream, TempDir, Gateway) {
    let (up, dir, gw) = app_gateway_with(name, &[]).await;
    assert_eq!(gw.client().get("app.test", "/").await.unwrap().status, 200);
    (up, dir, gw)
}

/// [`app_gateway`] with extra gateway flags, before any request.
async fn app_gateway_with(name: &str, extra: &[&str]) -> (Upstream, TempDir, Gateway) {
    let up = Upstream::start_on(name, "127.0.0.2:0").await;
    let dir = TempDir::new(&format!("manifests-{name}"));
    std::fs::write(dir.0.join("app.yaml"), CLASS_AND_INGRESS).unwrap();
    std::fs::write(dir.0.join("slice.yaml"), slice(up.addr.port())).unwrap();
    let gw = Gateway::start(&["--manifests", dir.0.to_str().unwrap()], extra).await;
    (up, dir, gw)
}

fn slice(port: u16) -> String {
    format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: app-1, namespace: prod, labels: {{kubernetes.io/service-name: app}}}}
addressType: IPv4
ports: [{{name: web, port: {port}}}]
endpoints:
  - addresses: [127.0.0.2]
    conditions: {{ready: true}}
  - addresses: [127.0.0.3]
  - addresses: [127.0.0.4]
    conditions: {{ready: false}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_endpoints_are_excluded_and_edits_go_live() {
    // One port on three loopback addresses, as pods of one Service would be.
    let a = Upstream::start_on("ready-a", "127.0.0.2:0").await;
    let port = a.addr.port();
    let b = Upstream::start_on("ready-b", &format!("127.0.0.3:{port}")).await;
    let not_ready = Upstream::start_on("not-ready", &format!("127.0.0.4:{port}")).await;

    let dir = TempDir::new("manifests");
    std::fs::write(dir.0.join("app.yaml"), CLASS_AND_INGRESS).unwrap();
    std::fs::write(dir.0.join("slice.yaml"), slice(port)).unwrap();
    let gw = Gateway::start(&["--manifests", dir.0.to_str().unwrap()], &[]).await;

    let mut c = gw.client();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let r = c.get("app.test", "/").await.unwrap();
        assert_eq!(r.status, 200);
        *seen.entry(r.upstream().unwrap().into()).or_default() += 1;
    }
    assert_eq!(seen.get("ready-a"), Some(&30), "{seen:?}");
    assert_eq!(seen.get("ready-b"), Some(&30), "{seen:?}");
    assert!(!seen.contains_key(&not_ready.name));

    // A new Ingress file is live within a second.
    std::fs::write(dir.0.join("new.yaml"), ingress("app2", "new.test")).unwrap();
    eventually(Duration::from_secs(1), || {
        let mut c = gw.client();
        async move {
            c.get("new.test", "/")
                .await
                .map(|r| r.status == 200)
                .unwrap_or(false)
        }
    })
    .await
    .expect("new Ingress not live within 1s");

    // A broken document keeps the last good config.
    std::fs::write(dir.0.join("broken.yaml"), "kind: [unclosed").unwrap();
    eventually(Duration::from_secs(2), || {
        let gw = &gw;
        async move { gw.admin_get("/config").await.body.contains("broken.yaml") }
    })
    .await
    .expect("error not reported on /config");
    assert_eq!(gw.client().get("new.test", "/").await.unwrap().status, 200);
    drop(b);
}

/// The first event of a burst loads at once; a file caught half-written
/// there is retried after the quiet period, not reported as a config error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_file_is_not_a_config_error() {
    let (_up, dir, gw) = app_gateway("half").await;
    for round in 0..3 {
        let host = format!("half{round}.test");
        let full = ingress(&format!("half{round}"), &host);
        let file = dir.0.join(format!("half-{round}.yaml"));
        // Cut inside a flow mapping: not valid YAML until completed.
        let cut = full.find("namespace: prod").unwrap();
        std::fs::write(&file, &full[..cut]).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        std::fs::write(&file, &full).unwrap();
        eventually(Duration::from_secs(2), || {
            let mut c = gw.client();
            let host = host.clone();
            async move { c.get(&host, "/").await.is_ok_and(|r| r.status == 200) }
        })
        .await
        .expect("completed file not live");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            gw.config_errors().await,
            0.0,
            "a half-written file was reported"
        );
    }
    let config = gw.admin_get("/config").await.body;
    assert!(!config.contains("half-0.yaml"), "{config}");
}

/// A new file written in two steps whose first part parses on its own (a
/// whole document, the next one missing) never goes live half-written: a
/// file created or written in place waits for the quiet period, and only
/// the complete file is swapped in.
#[tokio::test]
async fn a_new_file_goes_live_only_when_complete() {
    let (_up, dir, gw) = app_gateway("whole").await;
    let swaps = || async {
        let body = gw.admin_get("/config").await.body;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["swaps"].as_u64().unwrap()
    };
    let before = swaps().await;

    let first = ingress("one", "one.test");
    let whole = format!("{first}\n---\n{}", ingress("two", "two.test"));
    let file = dir.0.join("pair.yaml");
    std::fs::write(&file, &first).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    std::fs::write(&file, &whole).unwrap();
    eventually(Duration::from_secs(2), || {
        let mut c = gw.client();
        async move { c.get("two.test", "/").await.is_ok_and(|r| r.status == 200) }
    })
    .await
    .expect("completed file not live");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        swaps().await,
        before + 1,
        "the half-written file was swapped in before the complete one"
    );
    assert_eq!(gw.client().get("one.test", "/").await.unwrap().status, 200);
}

/// What `/config` says the last error was (`None` when there is none).
async fn last_error(gw: &Gateway) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&gw.admin_get("/config").await.body).unwrap();
    v["last_error"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_are_never_read_oversized_files_are_named_and_errors_clear() {
    let (_up, dir, gw) = app_gateway_with("side", &["--max-manifest-bytes", "65536"]).await;
    let http = gw.http;
    let serves = |host: &'static str| async move {
        Client::new(http)
            .get(host, "/")
            .await
            .is_ok_and(|r| r.status == 200)
    };
    assert!(serves("app.test").await);

    // A FIFO named like a manifest: a load that opened it would block
    // forever, and no later change would ever apply.
    let fifo = dir.0.join("zz.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let write = |name: &str, text: &str| {
        let tmp = dir.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.0.join(name)).unwrap();
    };
    write("b.yaml", &ingress("b", "b.test"));
    let applied = eventually(Duration::from_secs(5), || serves("b.test")).await;
    assert!(applied.is_some(), "a change after the FIFO never applied");

    // A file over the limit (1 GiB, sparse) is not read: the load fails
    // naming it, and the last good config keeps serving.
    let big = std::fs::File::create(dir.0.join("big.yaml")).unwrap();
    big.set_len(1 << 30).unwrap();
    drop(big);
    let named = eventually(Duration::from_secs(5), || async {
        last_error(&gw)
            .await
            .is_some_and(|e| e.contains("big.yaml") && e.contains("65536-byte limit"))
    })
    .await;
    assert!(named.is_some(), "last_error: {:?}", last_error(&gw).await);
    assert!(serves("app.test").await && serves("b.test").await);

    // Once a later load succeeds, the error is gone.
    std::fs::remove_file(dir.0.join("big.yaml")).unwrap();
    write("c.yaml", &ingress("c", "c.test"));
    let applied = eventually(Duration::from_secs(5), || serves("c.test")).await;
    assert!(applied.is_some(), "the fixed directory never applied");
    assert_error_clears(&gw).await;
}

/// `/config`'s `last_error` is gone within 2 s (a load succeeded).
async fn assert_error_clears(gw: &Gateway) {
    let cleared = eventually(Duration::from_secs(2), || async {
        last_error(gw).await.is_none()
    })
    .await;
    assert!(
        cleared.is_some(),
        "last_error kept: {:?}",
        last_error(gw).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_typos_are_named_in_last_error_and_the_last_good_config_stays() {
    let (_up, dir, gw) = app_gateway("typo").await;
    let http = gw.http;
    let tenant_of = |host: &'static str| async move {
        Client::new(http)
            .get(host, "/")
            .await
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.seen().get("x-tenant-id").cloned())
    };
    let write = |text: &str| {
        let tmp = dir.0.join(".tenant.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.0.join("tenant.yaml")).unwrap();
    };
    let tenant = |rate_limit_key: &str| {
        format!(
            "apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\n\
             spec:\n  domains: [app.test]\n  namespaces: [prod]\n  \
             {rate_limit_key}: {{requestsPerSecond: 1000, burst: 1000}}\n"
        )
    };
    // `rateLimt` must not load as a Tenant without a rate limit: the load
    // is refused naming the file, the document, the object and the field,
    // as any malformed document is, and the last good config keeps serving.
    write(&tenant("rateLimt"));
    let named = eventually(Duration::from_secs(5), || async {
        last_error(&gw).await.is_some_and(|e| {
            e.contains("tenant.yaml: document 1: Tenant \"acme\": unknown field `rateLimt`")
        })
    })
    .await;
    assert!(named.is_some(), "last_error: {:?}", last_error(&gw).await);
    assert_eq!(tenant_of("app.test").await, Some(None));

    // Fixed: the Tenant applies and the error clears.
    write(&tenant("rateLimit"));
    let applied = eventually(Duration::from_secs(5), || async {
        tenant_of("app.test").await == Some(Some("acme".to_string()))
    })
    .await;
    assert!(applied.is_some(), "the fixed Tenant never applied");
    assert_error_clears(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tenant_serves_only_hosts_a_tenant_owns() {
    let (_up, dir, gw) = app_gateway_with("strict", &["--require-tenant"]).await;
    // No Tenant owns app.test: not served.
    assert_eq!(gw.client().get("app.test", "/").await.unwrap().status, 404);
    // Once one does, its namespace's Ingress serves it.
    let tenant = "apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {name: app}\n\
                  spec: {domains: [app.test], namespaces: [prod]}\n";
    let tmp = dir.0.join(".tenant.tmp");
    std::fs::write(&tmp, tenant).unwrap();
    std::fs::rename(&tmp, dir.0.join("tenant.yaml")).unwrap();
    let http = gw.http;
    let served = eventually(Duration::from_secs(5), || async move {
        Client::new(http).get("app.test", "/").await.is_ok_and(|r| {
            r.status == 200 && r.seen().get("x-tenant-id").map(String::as_str) == Some("app")
        })
    })
    .await;
    assert!(served.is_some(), "the tenant's host never served");
}
