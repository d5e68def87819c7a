//! ACME issuance against a real CA (Debian's `pebble`, on loopback), in
//! `--manifests` mode with `--state-dir`: a Tenant with `tls.acme` gets a
//! certificate that verifies against pebble's root; on-demand issuance
//! starts at the first handshake and never for a name no Tenant owns; a CA
//! outage keeps issued certificates serving and pending orders back off.
#![allow(clippy::unwrap_used)]

mod common;
mod pebble;
mod pki;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pebble::{client, from_now, https_get, AriDirectory, Pebble};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn issuer(pebble: &Pebble, challenge: &str, issue: &str) -> String {
    issuer_at(
        &pebble.directory,
        &[&pebble.listener_ca_pem],
        challenge,
        issue,
    )
}

/// An AcmeIssuer for `directory`, whose endpoints' roots are `roots`.
fn issuer_at(directory: &str, roots: &[&str], challenge: &str, issue: &str) -> String {
    let bundle: String = roots
        .iter()
        .flat_map(|pem| pem.lines())
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        r#"
apiVersion: vestibule.dev/v1alpha1
kind: AcmeIssuer
metadata: {{name: pebble}}
spec:
  directoryUrl: {directory}
  email: ops@example.com
  challenge: {challenge}
  issue: {issue}
  default: true
  caBundle: |
{bundle}"#,
    )
}

fn tenant(name: &str, domains: &[&str]) -> String {
    format!(
        r#"
apiVersion: vestibule.dev/v1alpha1
kind: Tenant
metadata: {{name: {name}}}
spec:
  domains: [{domains}]
  backend: {{namespace: saas, services: [{{name: app, port: 80}}]}}
  tls: {{acme: {{}}}}
"#,
        domains = domains
            .iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Writes a manifest file whole (renamed into place).
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Waits until `host` answers 200 from the app over verified HTTPS.
async fn wait_served(
    gw: &Gateway,
    config: &Arc<rustls::ClientConfig>,
    host: &str,
    within: Duration,
    pebble: &Pebble,
) -> Duration {
    let start = Instant::now();
    loop {
        let last = match https_get(gw.https, config, host).await {
            Ok(r) if r.status == 200 && r.upstream() == Some("app") => return start.elapsed(),
            Ok(r) => format!("{r:?}"),
            Err(e) => e,
        };
        if start.elapsed() > within {
            panic!(
                "{host} not served over verified HTTPS within {within:?}: {last}\nmetrics:\n{}\npebble log:\n{}",
                acme_metrics(gw).await,
                pebble.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn acme_metrics(gw: &Gateway) -> String {
    gw.admin_get("/metrics")
        .await
        .body
        .lines()
        .filter(|l| l.starts_with("vestibule_acme_"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of the series `line` (name and labels), 0 when absent.
async fn metric(gw: &Gateway, series: &str) -> f64 {
    gw.admin_get("/metrics")
        .await
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const ISSUED_NEW: &str = r#"vestibule_acme_orders_total{kind="new",result="issued"}"#;
const FAILED_NEW: &str = r#"vestibule_acme_orders_total{kind="new",result="failed"}"#;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn issued_domains(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state.join("acme/certs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// One test's world: an upstream `app`, the gateway's listeners chosen
/// first so pebble validates against them, a manifests directory holding
/// the app's Service and an AcmeIssuer, and a state directory.
struct Scene {
    _up: Upstream,
    http: SocketAddr,
    https: SocketAddr,
    pebble: Pebble,
    dir: TempDir,
    state: TempDir,
    /// Trusts pebble's root only.
    verified: Arc<rustls::ClientConfig>,
}

impl Scene {
    async fn new(tag: &str, challenge: &str, issue: &str) -> Scene {
        let http = free_addr();
        Scene::validated_on(tag, challenge, issue, http, http.port()).await
    }

    /// A scene whose pebble sends HTTP-01 validations to `pebble_http`.
    async fn validated_on(
        tag: &str,
        challenge: &str,
        issue: &str,
        http: SocketAddr,
        pebble_http: u16,
    ) -> Scene {
        Scene::build(tag, challenge, issue, http, pebble_http, None).await
    }

    /// A scene whose pebble requires External Account Binding with `eab`
    /// (key id, base64url HMAC key).
    async fn bound(tag: &str, eab: (&str, &str)) -> Scene {
        let http = free_addr();
        Scene::build(tag, "HTTP-01", "Onboarding", http, http.port(), Some(eab)).await
    }

    async fn build(
        tag: &str,
        challenge: &str,
        issue: &str,
        http: SocketAddr,
        pebble_http: u16,
        eab: Option<(&str, &str)>,
    ) -> Scene {
        let up = Upstream::start_on("app", "127.0.0.2:0").await;
        let https = free_addr();
        let pebble = Pebble::start_with_eab(pebble_http, https.port(), eab).await;
        let dir = TempDir::new(&format!("{tag}-manifests"));
        let state = TempDir::new(&format!("{tag}-state"));
        put(&dir.0, "app.yaml", &app_manifests(&up));
        put(&dir.0, "issuer.yaml", &issuer(&pebble, challenge, issue));
        let verified = client(&[&pebble.root_pem]);
        Scene {
            _up: up,
            http,
            https,
            pebble,
            dir,
            state,
            verified,
        }
    }

    /// The gateway on this scene, short ACME backoff, and `extra` flags.
    async fn gateway(&self, extra: &[&str]) -> Gateway {
        let (http, https) = (self.http.to_string(), self.https.to_string());
        let state = self.state.0.to_string_lossy().into_owned();
        let mut args = vec![
            "--http",
            &http,
            "--https",
            &https,
            "--state-dir",
            &state,
            "--acme-retry-min",
            "500ms",
            "--acme-retry-max",
            "2s",
        ];
        args.extend(extra);
        Gateway::start(&["--manifests", self.dir.0.to_str().unwrap()], &args).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_at_onboarding_end_to_end_and_kept_across_restarts() {
    let s = Scene::new("acme-http01", "HTTP-01", "Onboarding").await;
    let (pebble, dir, state) = (&s.pebble, &s.dir, &s.state);
    let gw = s.gateway(&[]).await;
    let verified = &s.verified;

    // Tenant created -> first verified HTTPS request to its domain.
    let created = Instant::now();
    put(
        &dir.0,
        "shop.yaml",
        &tenant("shop", &["shop.customer.test"]),
    );
    wait_served(
        &gw,
        verified,
        "shop.customer.test",
        Duration::from_secs(60),
        pebble,
    )
    .await;
    eprintln!(
        "ACME HTTP-01: Tenant created -> first HTTPS request served in {} ms",
        created.elapsed().as_millis()
    );
    assert_eq!(metric(&gw, ISSUED_NEW).await, 1.0);

    // Stored under the state dir: key and account private to the process.
    let cert_dir = state.0.join("acme/certs/shop.customer.test");
    assert_eq!(mode(&cert_dir.join("tls.key")), 0o600);
    let accounts: Vec<_> = std::fs::read_dir(state.0.join("acme/accounts"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(accounts.len(), 1);
    assert_eq!(mode(&accounts[0].path()), 0o600);
    let account = std::fs::read(accounts[0].path()).unwrap();

    // A restart serves the stored certificate at once, orders nothing and
    // keeps the account.
    drop(gw);
    let gw = s.gateway(&[]).await;
    let r = https_get(gw.https, verified, "shop.customer.test")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&gw, ISSUED_NEW).await, 0.0);
    assert_eq!(std::fs::read(accounts[0].path()).unwrap(), account);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_orders_at_the_first_handshake_and_never_for_unowned_names() {
    let s = Scene::new("acme-ondemand", "HTTP-01", "OnDemand").await;
    let (pebble, dir, state) = (&s.pebble, &s.dir, &s.state);
    put(
        &dir.0,
        "tenant.yaml",
        &tenant("od", &["od.customer.test", "*.wild.customer.test"]),
    );
    let gw = s.gateway(&[]).await;
    let verified = &s.verified;

    // Names no Tenant owns, a wildcard tenant domain (DNS-01, never
    // attempted) and an owned name's sibling: handshakes fail, no order.
    for sni in [
        "evil.test",
        "other.customer.test",
        "x.wild.customer.test",
        "wild.customer.test",
    ] {
        assert!(https_get(gw.https, verified, sni).await.is_err(), "{sni}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        acme_metrics(&gw)
            .await
            .matches("vestibule_acme_orders_total{")
            .count(),
        0
    );
    assert!(issued_domains(&state.0).is_empty());

    // The first handshake for the tenant's domain has no certificate yet
    // (unrecognized_name) and starts the order; a later one is served.
    let first = https_get(gw.https, verified, "od.customer.test").await;
    assert!(first.is_err(), "{first:?}");
    wait_served(
        &gw,
        verified,
        "od.customer.test",
        Duration::from_secs(60),
        pebble,
    )
    .await;
    assert_eq!(metric(&gw, ISSUED_NEW).await, 1.0);
    assert_eq!(issued_domains(&state.0), ["od.customer.test"]);
    // Nothing else was ordered meanwhile.
    assert_eq!(
        acme_metrics(&gw)
            .await
            .matches("vestibule_acme_orders_total{")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_keeps_certificates_serving_and_pending_orders_back_off() {
    let s = Scene::new("acme-outage", "HTTP-01", "Onboarding").await;
    let (pebble, dir) = (&s.pebble, &s.dir);
    put(&dir.0, "a.yaml", &tenant("a", &["a.customer.test"]));
    let gw = s.gateway(&[]).await;
    let verified = &s.verified;
    wait_served(
        &gw,
        verified,
        "a.customer.test",
        Duration::from_secs(60),
        pebble,
    )
    .await;

    // The CA goes away; a new tenant's order fails and backs off, the
    // issued certificate keeps serving.
    pebble.set_down(true);
    put(&dir.0, "b.yaml", &tenant("b", &["b.customer.test"]));
    assert!(
        eventually(Duration::from_secs(20), || async {
            metric(&gw, FAILED_NEW).await >= 2.0
        })
        .await
        .is_some(),
        "no failed orders: {}",
        acme_metrics(&gw).await
    );
    for _ in 0..5 {
        let r = https_get(gw.https, verified, "a.customer.test")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(https_get(gw.https, verified, "b.customer.test")
        .await
        .is_err());

    // The CA is back: the pending order completes within the backoff cap.
    pebble.set_down(false);
    wait_served(
        &gw,
        verified,
        "b.customer.test",
        Duration::from_secs(30),
        pebble,
    )
    .await;
    assert_eq!(metric(&gw, ISSUED_NEW).await, 2.0);
}

/// The issuer with an External Account Binding whose HMAC key is in
/// Secret `vestibule-system/eab`, and that Secret holding `key`.
fn bound_issuer(pebble: &Pebble, kid: &str, key: &str) -> String {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(key);
    format!(
        r#"{issuer}
  externalAccountBinding:
    keyId: {kid}
    keySecretRef: {{namespace: vestibule-system, name: eab, key: hmac}}
---
apiVersion: v1
kind: Secret
metadata: {{name: eab, namespace: vestibule-system, labels: {{vestibule.dev/acme-eab: "true"}}}}
data: {{hmac: {data}}}
"#,
        issuer = issuer(pebble, "HTTP-01", "Onboarding").trim_end(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_from_a_secret_and_a_ca_that_refuses_a_wrong_key() {
    // 32 bytes, base64url, as CAs hand them out.
    const KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    const WRONG: &str = "aGVsbG8td3Jvbmcta2V5LWZvci1wZWJibGUtZWFiLXRlc3Q";
    let s = Scene::bound("acme-eab", ("kid-1", KEY)).await;
    let (pebble, dir) = (&s.pebble, &s.dir);

    // A wrong HMAC key: the CA refuses the account, no order is issued,
    // the failure is counted and the domain is not served.
    put(&dir.0, "issuer.yaml", &bound_issuer(pebble, "kid-1", WRONG));
    put(&dir.0, "a.yaml", &tenant("a", &["eab.customer.test"]));
    let gw = s.gateway(&[]).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            metric(&gw, FAILED_NEW).await >= 1.0
        })
        .await
        .is_some(),
        "no failed order with a wrong EAB key: {}",
        acme_metrics(&gw).await
    );
    assert_eq!(metric(&gw, ISSUED_NEW).await, 0.0);
    let config = gw.admin_get("/config").await.body;
    assert!(
        config.contains("external account binding") && config.contains("unauthorized"),
        "{config}"
    );
    assert!(https_get(gw.https, &s.verified, "eab.customer.test")
        .await
        .is_err());

    // The right key: the account is bound and the certificate issued.
    put(&dir.0, "issuer.yaml", &bound_issuer(pebble, "kid-1", KEY));
    wait_served(
        &gw,
        &s.verified,
        "eab.customer.test",
        Duration::from_secs(30),
        pebble,
    )
    .await;
    assert_eq!(metric(&gw, ISSUED_NEW).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_end_to_end_on_the_https_listener() {
    // Nothing listens on pebble's HTTP-01 port: only TLS-ALPN-01 can pass.
    let s = Scene::validated_on(
        "acme-alpn",
        "TLS-ALPN-01",
        "OnDemand",
        free_addr(),
        free_addr().port(),
    )
    .await;
    let (pebble, dir) = (&s.pebble, &s.dir);
    put(
        &dir.0,
        "tenant.yaml",
        &tenant("alpn", &["alpn.customer.test"]),
    );
    let gw = s.gateway(&[]).await;
    let verified = &s.verified;

    // acme-tls/1 with no pending challenge is refused, not served a
    // tenant certificate.
    let mut probe = Arc::unwrap_or_clone(client(&[&pebble.root_pem]));
    probe.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    assert!(https_get(gw.https, &Arc::new(probe), "alpn.customer.test")
        .await
        .is_err());

    let created = Instant::now();
    assert!(https_get(gw.https, verified, "alpn.customer.test")
        .await
        .is_err());
    wait_served(
        &gw,
        verified,
        "alpn.customer.test",
        Duration::from_secs(60),
        pebble,
    )
    .await;
    eprintln!(
        "ACME TLS-ALPN-01: first handshake -> HTTPS request served in {} ms",
        created.elapsed().as_millis()
    );
    assert_eq!(metric(&gw, ISSUED_NEW).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_with_no_failed_request() {
    let s = Scene::new("acme-renew", "HTTP-01", "OnDemand").await;
    let (pebble, dir, state) = (&s.pebble, &s.dir, &s.state);
    put(
        &dir.0,
        "tenant.yaml",
        &tenant("renew", &["renew.customer.test"]),
    );

    // A certificate issued earlier, valid for two more minutes, due for
    // renewal a few seconds after the gateway starts (by another CA, so the
    // swap to pebble's certificate is visible to a client).
    let old_ca = pki::Pki::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["renew.customer.test".to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::minutes(2);
    let leaf = params.signed_by(&key, old_ca.issuer_for_tests()).unwrap();
    let cert_dir = state.0.join("acme/certs/renew.customer.test");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::write(
        cert_dir.join("tls.crt"),
        format!("{}{}", leaf.pem(), old_ca.ca_pem),
    )
    .unwrap();
    std::fs::write(cert_dir.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(
        cert_dir.join("meta.json"),
        serde_json::json!({
            "tenant": "renew",
            "order": "https://old-ca.test/order/1",
            "notAfter": from_now(120),
            "renewAt": from_now(3),
        })
        .to_string(),
    )
    .unwrap();

    let gw = s.gateway(&[]).await;
    let either = client(&[&pebble.root_pem, &old_ca.ca_pem]);
    let pebble_only = client(&[&pebble.root_pem]);

    // The old certificate serves at once; requests run across the renewal
    // and the swap, and none fails.
    let r = https_get(gw.https, &client(&[&old_ca.ca_pem]), "renew.customer.test").await;
    assert_eq!(r.unwrap().status, 200);
    let start = Instant::now();
    let (mut ok, mut renewed_after) = (0, None);
    while start.elapsed() < Duration::from_secs(30) {
        let r = https_get(gw.https, &either, "renew.customer.test").await;
        assert_eq!(r.as_ref().map(|r| r.status), Ok(200), "request {ok}: {r:?}");
        ok += 1;
        if renewed_after.is_none()
            && https_get(gw.https, &pebble_only, "renew.customer.test")
                .await
                .is_ok()
        {
            renewed_after = Some(start.elapsed());
        }
        if renewed_after.is_some_and(|t| start.elapsed() > t + Duration::from_secs(1)) {
            break;
        }
    }
    let renewed_after = renewed_after.unwrap_or_else(|| panic!("not renewed: {}", pebble.log()));
    eprintln!("renewed after {renewed_after:?}; {ok} requests, none failed");
    assert_eq!(
        metric(
            &gw,
            r#"vestibule_acme_orders_total{kind="renewal",result="issued"}"#
        )
        .await,
        1.0
    );
}

/// Latencies of keep-alive HTTPS requests to `host` until `stop` is set.
async fn steady_load(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    host: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Duration> {
    use std::sync::atomic::Ordering;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(host).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut conn = BufReader::new(tls);
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        conn.get_mut()
            .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut conn).await.unwrap();
        assert_eq!(r.status, 200);
        latencies.push(start.elapsed());
    }
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// The issue's bench: p99 of requests to an issued tenant while 100 new
/// domains are issued, and how long the 100 take. Not a test (no figure
/// is asserted); run it with the release gateway:
/// `cargo test --release -p vestibule-gateway --test acme_issuance -- --ignored --nocapture bench_`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bench: run by hand, see the doc comment"]
async fn bench_p99_of_issued_tenants_while_100_domains_are_issued() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Scene::new("acme-bench", "HTTP-01", "Onboarding").await;
    let (pebble, dir, state) = (&s.pebble, &s.dir, &s.state);
    put(
        &dir.0,
        "steady.yaml",
        &tenant("steady", &["steady.customer.test"]),
    );
    let gw = s
        .gateway(&[
            "--acme-concurrency",
            "8",
            "--no-access-log",
            "--threads",
            "1",
        ])
        .await;
    let verified = &s.verified;
    wait_served(
        &gw,
        verified,
        "steady.customer.test",
        Duration::from_secs(60),
        pebble,
    )
    .await;

    let phase = |stop: Arc<AtomicBool>| {
        (0..4)
            .map(|_| {
                tokio::spawn(steady_load(
                    gw.https,
                    verified.clone(),
                    "steady.customer.test",
                    stop.clone(),
                ))
            })
            .collect::<Vec<_>>()
    };
    let collect = |tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>| async move {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        all
    };

    // Baseline: no issuance.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = phase(stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let base = collect(tasks).await;

    // 100 tenants onboard at once.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = phase(stop.clone());
    let started = Instant::now();
    let tenants: String = (0..100)
        .map(|i| tenant(&format!("t{i}"), &[&format!("t{i}.customer.test")]))
        .collect::<Vec<_>>()
        .join("---\n");
    put(&dir.0, "hundred.yaml", &tenants);
    while issued_domains(&state.0).len() < 101 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not issued: {}",
            acme_metrics(&gw).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let issued_in = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = collect(tasks).await;
    eprintln!(
        "bench: 100 domains issued in {:.1} s ({:.1}/s); steady tenant, 4 keep-alive TLS connections: \
         baseline {} requests p50 {:?} p99 {:?}; during issuance {} requests p50 {:?} p99 {:?}",
        issued_in.as_secs_f64(),
        100.0 / issued_in.as_secs_f64(),
        base.len(),
        percentile(&base, 0.5),
        percentile(&base, 0.99),
        during.len(),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_information_from_the_ca_renews_before_two_thirds_of_the_lifetime() {
    let s = Scene::new("acme-ari", "HTTP-01", "Onboarding").await;
    // Pebble 2.4 publishes no renewal information: a directory in front of
    // it adds RFC 9773's, with the first certificate's window already open.
    let ari = AriDirectory::start(&s.pebble).await;
    put(
        &s.dir.0,
        "issuer.yaml",
        &issuer_at(
            &ari.directory,
            &[&s.pebble.listener_ca_pem, &ari.ca_pem],
            "HTTP-01",
            "Onboarding",
        ),
    );
    put(&s.dir.0, "t.yaml", &tenant("ari", &["ari.customer.test"]));
    let gw = s.gateway(&[]).await;
    wait_served(
        &gw,
        &s.verified,
        "ari.customer.test",
        Duration::from_secs(60),
        &s.pebble,
    )
    .await;

    // The issued certificate is asked about, its window is open: it is
    // renewed at once, not at two thirds of pebble's five years; the new
    // one (window a month away) is not.
    let renewed = eventually(Duration::from_secs(30), || async {
        metric(
            &gw,
            r#"vestibule_acme_orders_total{kind="renewal",result="issued"}"#,
        )
        .await
            >= 1.0
    })
    .await;
    assert!(
        renewed.is_some(),
        "not renewed: {}\nasked: {:?}",
        acme_metrics(&gw).await,
        ari.asked.lock().unwrap()
    );
    let asked = eventually(Duration::from_secs(10), || async {
        let asked = ari.asked.lock().unwrap().clone();
        asked.iter().any(|id| Some(id) != asked.first())
    })
    .await;
    assert!(
        asked.is_some(),
        "the renewed certificate was never asked about: {:?}",
        ari.asked.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(
            &gw,
            r#"vestibule_acme_orders_total{kind="renewal",result="issued"}"#
        )
        .await,
        1.0
    );
    let first = ari.asked.lock().unwrap()[0].clone();
    assert!(first.contains('.'), "{first}");
    let r = https_get(gw.https, &s.verified, "ari.customer.test")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
