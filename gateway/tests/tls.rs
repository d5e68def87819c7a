//! TLS at the edge, end to end: the gateway binary with certificates minted
//! here (rcgen, a test CA), real rustls clients (HTTP/1.1 and HTTP/2) on
//! loopback, configs from a watched `--config` file.
#![allow(clippy::unwrap_used)]

mod common;
mod pki;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pki::Pki;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use vestibule_config::model::{
    Certificate, GatewayConfig, HostTls, PathMatch, PoolId, Tenant, TenantId,
};
use vestibule_config::HostPattern;

/// Connects with SNI `sni`, verifying the certificate against `verify_as`.
async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    sni: Option<&str>,
    verify_as: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = if sni.is_none() {
        let mut c = (*config).clone();
        c.enable_sni = false;
        Arc::new(c)
    } else {
        config
    };
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.unwrap_or(verify_as).to_string()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("handshake timeout")))
}

/// The DNS names of the leaf the server presented, and the chain length.
fn presented(stream: &TlsStream<TcpStream>) -> (Vec<String>, usize) {
    let certs: &[CertificateDer] = stream.get_ref().1.peer_certificates().unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
    let names = leaf
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (names, certs.len())
}

async fn h1(
    conn: &mut BufReader<TlsStream<TcpStream>>,
    host: &str,
    path: &str,
) -> Result<Response, String> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n");
    conn.get_mut()
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), read_response(conn))
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

/// One HTTP/2 GET on an established h2 connection: (status, body).
async fn h2_get(send: &mut h2::client::SendRequest<bytes::Bytes>, url: &str) -> (u16, String) {
    let req = http::Request::builder().uri(url).body(()).unwrap();
    let mut send = send.clone().ready().await.unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    (status, pki::h2_body(resp.into_body()).await)
}

// === config ===

fn tls_vhost(
    host: &str,
    tenant: Option<&str>,
    tls: HostTls,
    pool: &str,
) -> vestibule_config::model::VirtualHost {
    let mut v = vhost(
        host,
        tenant,
        vec![route(&format!("r-{host}"), PathMatch::prefix("/"), pool)],
    );
    v.tls = Some(tls);
    v
}

fn tenant(config: &mut GatewayConfig, name: &str, domain: &str) {
    config.tenants.insert(
        TenantId::new(name),
        Tenant {
            domains: vec![HostPattern::parse(domain).unwrap()],
            rate_limit: None,
            cluster_rate_limit: None,
        },
    );
}

fn add_cert(config: &mut GatewayConfig, cert: &Certificate) -> HostTls {
    config.certificates.insert(cert.id(), cert.clone());
    HostTls::Certificate(cert.id())
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_certs_default_redirect_misdirected_h2_and_resumption() {
    let pki = Pki::new();
    let acme_up = Upstream::start("acme").await;
    let globex_up = Upstream::start("globex").await;
    let shared_up = Upstream::start("shared").await;

    let mut config = GatewayConfig::default();
    for (name, up) in [
        ("acme", &acme_up),
        ("globex", &globex_up),
        ("shared", &shared_up),
    ] {
        config.pools.insert(PoolId::new(name), pool(&[(up, 1)]));
    }
    tenant(&mut config, "acme", "a.acme.test");
    tenant(&mut config, "globex", "*.globex.test");
    let acme = add_cert(
        &mut config,
        &pki.issue(&["a.acme.test"], &rcgen::PKCS_ECDSA_P256_SHA256),
    );
    let globex = add_cert(
        &mut config,
        &pki.issue(&["*.globex.test"], &rcgen::PKCS_ECDSA_P384_SHA384),
    );
    // One SAN certificate for two hosts: they may share a connection.
    let san = add_cert(
        &mut config,
        &pki.issue(&["s1.test", "s2.test"], &rcgen::PKCS_ED25519),
    );
    config.hosts = vec![
        tls_vhost("a.acme.test", Some("acme"), acme, "acme"),
        tls_vhost("*.globex.test", Some("globex"), globex, "globex"),
        tls_vhost("s1.test", None, san.clone(), "shared"),
        tls_vhost("s2.test", None, san, "shared"),
    ];

    let dir = TempDir::new("tls-sni");
    let default = pki.issue(&["default.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (cert_file, key_file) = (dir.0.join("default.crt"), dir.0.join("default.key"));
    std::fs::write(&cert_file, &default.cert_pem).unwrap();
    std::fs::write(&key_file, &default.key_pem).unwrap();
    let path = dir.0.join("config.json");
    write_config(&path, &config);
    let gw = Gateway::start(
        &["--config", path.to_str().unwrap()],
        &[
            "--default-cert",
            cert_file.to_str().unwrap(),
            "--default-key",
            key_file.to_str().unwrap(),
        ],
    )
    .await;
    let h1_config = pki.client(&[b"http/1.1"], false);

    // Each SNI gets its own certificate, with the full chain.
    for (sni, want) in [
        ("a.acme.test", "a.acme.test"),
        ("x.globex.test", "*.globex.test"),
        ("s2.test", "s1.test"),
    ] {
        let s = connect(gw.https, h1_config.clone(), Some(sni), sni)
            .await
            .unwrap();
        let (names, chain) = presented(&s);
        assert_eq!(names[0], want, "SNI {sni}: {names:?}");
        assert_eq!(chain, 2, "SNI {sni}: leaf and CA are served");
    }
    // An unknown SNI gets the default certificate (which the client can't
    // verify for that name, so it only inspects it).
    let s = connect_inspecting(gw.https, "unknown.test").await;
    assert_eq!(presented(&s).0, ["default.test"]);
    // No SNI at all: the default certificate.
    let s = connect(gw.https, h1_config.clone(), None, "default.test")
        .await
        .unwrap();
    assert_eq!(presented(&s).0, ["default.test"]);

    // Requests: upstream sees https; a Host for another tenant's host on
    // this connection is misdirected; a host sharing the cert is fine.
    let mut acme_conn = BufReader::new(
        connect(
            gw.https,
            h1_config.clone(),
            Some("a.acme.test"),
            "a.acme.test",
        )
        .await
        .unwrap(),
    );
    let r = h1(&mut acme_conn, "a.acme.test", "/x?y=1").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream(), Some("acme"));
    let seen = r.seen();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-tenant-id"], "acme");
    let r = h1(&mut acme_conn, "x.globex.test", "/").await.unwrap();
    assert_eq!(r.status, 421, "{r:?}");
    assert!(r.upstream().is_none());
    let r = h1(&mut acme_conn, "s1.test", "/").await.unwrap();
    assert_eq!(r.status, 421);
    let mut s1 = BufReader::new(
        connect(gw.https, h1_config.clone(), Some("s1.test"), "s1.test")
            .await
            .unwrap(),
    );
    let r = h1(&mut s1, "s2.test", "/").await.unwrap();
    assert_eq!((r.status, r.upstream()), (200, Some("shared")));
    let r = h1(&mut s1, "a.acme.test", "/").await.unwrap();
    assert_eq!(r.status, 421);

    // Plain HTTP to a TLS host: 308 to the HTTPS port, path and query kept.
    let r = gw
        .client()
        .get("a.acme.test", "/p/q?x=1&y=2")
        .await
        .unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers["location"],
        format!("https://a.acme.test:{}/p/q?x=1&y=2", gw.https.port())
    );

    // HTTP/2 downstream to an HTTP/1 upstream; coalescing onto another
    // tenant's host is refused with 421.
    let h2_config = pki.client(&[b"h2", b"http/1.1"], false);
    let tls = connect(gw.https, h2_config, Some("a.acme.test"), "a.acme.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let (status, body) = h2_get(&mut send, "https://a.acme.test/h2?z=1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("acme\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    assert!(body.contains("host: a.acme.test"), "{body}");
    assert!(body.contains("x-forwarded-host: a.acme.test"), "{body}");
    let (status, _) = h2_get(&mut send, "https://x.globex.test/").await;
    assert_eq!(status, 421);

    // Session resumption: a second connection with the same client config
    // resumes (TLS 1.3 tickets from rustls' stateful cache).
    let resume = pki.client(&[b"http/1.1"], false);
    let mut first = BufReader::new(
        connect(gw.https, resume.clone(), Some("a.acme.test"), "a.acme.test")
            .await
            .unwrap(),
    );
    // A response makes the client read the post-handshake tickets.
    assert_eq!(
        h1(&mut first, "a.acme.test", "/").await.unwrap().status,
        200
    );
    let second = connect(gw.https, resume, Some("a.acme.test"), "a.acme.test")
        .await
        .unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    // TLS 1.2 clients are served too.
    let tls12 = connect(
        gw.https,
        pki.client(&[b"http/1.1"], true),
        Some("a.acme.test"),
        "a.acme.test",
    )
    .await
    .unwrap();
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // The server counts a handshake in its post-handshake callback, which can
    // run just after the client's side completes: wait for it.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = gw.admin_get("/metrics").await.body;
        let tls12_counted = metric(
            &metrics,
            "vestibule_tls_handshakes_total{result=\"ok\",version=\"TLSv1.2\"}",
        );
        if tls12_counted == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ok13 = metric(
        &metrics,
        "vestibule_tls_handshakes_total{result=\"ok\",version=\"TLSv1.3\"}",
    );
    assert!(ok13.unwrap() >= 8.0, "{metrics}");
    let ok12 = metric(
        &metrics,
        "vestibule_tls_handshakes_total{result=\"ok\",version=\"TLSv1.2\"}",
    );
    assert_eq!(ok12, Some(1.0));
    assert!(metric(&metrics, "vestibule_tls_handshake_seconds_count").unwrap() >= 4.0);
    assert!(metric(&metrics, "vestibule_tls_connections_total").unwrap() >= 9.0);
    let days = metric(&metrics, "vestibule_tls_cert_expiry_days{tenant=\"acme\"}").unwrap();
    assert!(days > 300.0, "{days}");
}

/// Connects with SNI `sni` without verifying the presented chain.
async fn connect_inspecting(addr: SocketAddr, sni: &str) -> TlsStream<TcpStream> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    connect(addr, Arc::new(config), Some(sni), sni)
        .await
        .unwrap()
}

/// Accepts any server certificate (the test inspects it instead).
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_problems_stay_per_host_and_swaps_change_certs_live() {
    let pki = Pki::new();
    let up = Upstream::start("up").await;
    let mut config = GatewayConfig::default();
    config.pools.insert(PoolId::new("up"), pool(&[(&up, 1)]));
    let good_cert = pki.issue(&["good.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let other = pki.issue(&["other.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    // A Secret whose key isn't the certificate's, an expired certificate,
    // garbage PEM, and a host the translator marked unavailable.
    let mismatched = Certificate {
        cert_pem: pki
            .issue(&["broken.test"], &rcgen::PKCS_ECDSA_P256_SHA256)
            .cert_pem,
        key_pem: other.key_pem.clone(),
    };
    let expired = pki.issue_dated(
        &["old.test"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
        Some((2020, 2021)),
    );
    let garbage = Certificate {
        cert_pem: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
        key_pem: other.key_pem.clone(),
    };
    for (t, d) in [
        ("good", "good.test"),
        ("broken", "broken.test"),
        ("old", "old.test"),
        ("junk", "junk.test"),
        ("gone", "gone.test"),
    ] {
        tenant(&mut config, t, d);
    }
    let good = add_cert(&mut config, &good_cert);
    let broken = add_cert(&mut config, &mismatched);
    let old = add_cert(&mut config, &expired);
    let junk = add_cert(&mut config, &garbage);
    config.hosts = vec![
        tls_vhost("good.test", Some("good"), good, "up"),
        tls_vhost("broken.test", Some("broken"), broken, "up"),
        tls_vhost("old.test", Some("old"), old, "up"),
        tls_vhost("junk.test", Some("junk"), junk, "up"),
        tls_vhost(
            "gone.test",
            Some("gone"),
            HostTls::Unavailable(vestibule_config::model::Unavailable {
                reason: vestibule_config::model::TlsUnavailable::SecretNotFound,
                message: "secret missing".into(),
            }),
            "up",
        ),
    ];
    let dir = TempDir::new("tls-problems");
    let path = dir.0.join("config.json");
    write_config(&path, &config);
    let gw = Gateway::start(&["--config", path.to_str().unwrap()], &[]).await;
    let client = pki.client(&[b"http/1.1"], false);

    // Keys are built lazily, but the background warm-up finds the
    // mismatched one before any handshake asks for it.
    let mismatch = "vestibule_tls_cert_errors{reason=\"key_mismatch\",tenant=\"broken\"}";
    let found = eventually(Duration::from_secs(3), || {
        let gw = &gw;
        async move { metric(&gw.admin_get("/metrics").await.body, mismatch) == Some(1.0) }
    })
    .await;
    assert!(
        found.is_some(),
        "the warm-up never reported the key mismatch"
    );

    // The good tenant works; every broken one fails its handshake (no
    // default certificate), as do unknown names and a missing SNI.
    let mut good_conn = BufReader::new(
        connect(gw.https, client.clone(), Some("good.test"), "good.test")
            .await
            .unwrap(),
    );
    let r = h1(&mut good_conn, "good.test", "/").await.unwrap();
    assert_eq!((r.status, r.upstream()), (200, Some("up")));
    for sni in [
        "broken.test",
        "old.test",
        "junk.test",
        "gone.test",
        "unknown.test",
    ] {
        let err = connect(gw.https, client.clone(), Some(sni), sni)
            .await
            .unwrap_err();
        // RFC 6066: a server name without certificate is refused with
        // `unrecognized_name`.
        assert!(err.to_string().contains("UnrecognisedName"), "{sni}: {err}");
    }
    // No SNI and no default certificate: rustls' own refusal.
    let err = connect(gw.https, client.clone(), None, "good.test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    // Never downgraded: plain HTTP to a broken TLS host still redirects.
    let r = gw.client().get("broken.test", "/").await.unwrap();
    assert_eq!(r.status, 308);

    let metrics = gw.admin_get("/metrics").await.body;
    for (tenant, reason) in [
        ("broken", "key_mismatch"),
        ("old", "expired"),
        ("junk", "bad_certificate"),
        ("gone", "unavailable"),
    ] {
        let m = format!("vestibule_tls_cert_errors{{reason=\"{reason}\",tenant=\"{tenant}\"}}");
        assert_eq!(metric(&metrics, &m), Some(1.0), "{m}\n{metrics}");
    }
    assert!(metric(&metrics, "vestibule_tls_cert_expiry_days{tenant=\"old\"}").unwrap() < -300.0);
    assert!(
        metric(
            &metrics,
            "vestibule_tls_handshakes_total{result=\"no_certificate\",version=\"\"}"
        )
        .unwrap()
            >= 6.0
    );

    // Swap: good.test gets a new certificate and broken.test a fixed one.
    // The next handshake sees the new leaf; the old connection keeps working.
    let renewed = pki.issue(
        &["good.test", "v2.good.test"],
        &rcgen::PKCS_ECDSA_P384_SHA384,
    );
    let fixed = pki.issue(&["broken.test"], &rcgen::PKCS_ED25519);
    config.certificates.clear();
    let good = add_cert(&mut config, &renewed);
    let broken = add_cert(&mut config, &fixed);
    let old = add_cert(&mut config, &expired);
    let junk = add_cert(&mut config, &garbage);
    for (v, tls) in config.hosts.iter_mut().zip([good, broken, old, junk]) {
        v.tls = Some(tls);
    }
    write_config(&path, &config);
    let live = eventually(Duration::from_secs(3), || {
        let client = client.clone();
        async move {
            match connect(gw.https, client, Some("good.test"), "good.test").await {
                Ok(s) => presented(&s).0.len() == 2,
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(live.is_some(), "the renewed certificate was never served");
    let r = h1(&mut good_conn, "good.test", "/again").await.unwrap();
    assert_eq!(
        r.status, 200,
        "the connection from before the swap keeps working"
    );
    let s = connect(gw.https, client.clone(), Some("broken.test"), "broken.test")
        .await
        .unwrap();
    assert_eq!(presented(&s).0, ["broken.test"]);
    let metrics = gw.admin_get("/metrics").await.body;
    assert!(!metrics.contains("reason=\"key_mismatch\""), "{metrics}");
    assert!(metrics.contains("reason=\"expired\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_default_cert_exits_2_naming_the_file() {
    let dir = TempDir::new("tls-default");
    let pki = Pki::new();
    let (a, b) = (
        pki.issue(&["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256),
        pki.issue(&["b.test"], &rcgen::PKCS_ECDSA_P256_SHA256),
    );
    let (cert, key) = (dir.0.join("d.crt"), dir.0.join("d.key"));
    std::fs::write(&cert, &a.cert_pem).unwrap();
    std::fs::write(&key, &b.key_pem).unwrap();
    let config = dir.0.join("config.json");
    write_config(&config, &GatewayConfig::default());
    let out = std::process::Command::new(gateway_bin())
        .args(["--config", config.to_str().unwrap()])
        .args(["--default-cert", cert.to_str().unwrap()])
        .args(["--default-key", key.to_str().unwrap()])
        .args(["--http", &free_addr().to_string()])
        .args(["--https", &free_addr().to_string()])
        .args(["--admin", &free_addr().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("d.crt") && err.contains("key_mismatch"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "keys never reach logs: {err}");
}
