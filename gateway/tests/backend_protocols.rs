//! ingress-nginx's `backend-protocol` through real sockets: an HTTPS
//! upstream with a certificate from a test CA (verified against
//! `proxy-ssl-secret`'s ca.crt, refused without it, skipped only when
//! `proxy-ssl-verify: "off"` says so), with SNI and `proxy-ssl-name`.
#![allow(clippy::unwrap_used)]

mod common;
mod pki;

use std::net::SocketAddr;
use std::sync::Arc;

use common::nginx::*;
use pki::Pki;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// An HTTPS/1.1 upstream presenting `cert`; answers `secure sni=NAME`.
async fn tls_upstream(cert: &vestibule_config::model::Certificate) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                let mut conn = BufReader::new(tls);
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if conn.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    let body = format!("secure sni={sni}\n");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nx-upstream: secure\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn ca_secret(name: &str, labelled: bool, pem: &str) -> String {
    use base64::Engine;
    let labels = if labelled {
        "labels: {vestibule.dev/upstream-ca: \"true\"}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: saas, {labels}}}\ntype: Opaque\ndata: {{ca.crt: {}}}\n",
        base64::engine::general_purpose::STANDARD.encode(pem)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_unless_told_not_to() {
    let pki = Pki::new();
    let other = Pki::new();
    // The certificate names the Service's cluster DNS name and an alias.
    let cert = pki.issue(
        &["secure.saas.svc", "alias.internal"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let up = tls_upstream(&cert).await;
    const HTTPS: &str = r#"nginx.ingress.kubernetes.io/backend-protocol: "HTTPS""#;
    let with = |extra: &str| format!("{HTTPS}, {extra}");
    let ingresses = [
        // The CA from a Secret: verified, SNI the Service's DNS name.
        (
            "ca",
            with(r#"nginx.ingress.kubernetes.io/proxy-ssl-secret: "saas/backend-ca""#),
        ),
        // The system roots don't know the test CA: refused.
        ("system", HTTPS.to_string()),
        // The wrong CA: refused.
        (
            "wrong-ca",
            with(r#"nginx.ingress.kubernetes.io/proxy-ssl-secret: "saas/other-ca""#),
        ),
        // Explicitly unverified.
        (
            "unverified",
            with(r#"nginx.ingress.kubernetes.io/proxy-ssl-verify: "off""#),
        ),
        // proxy-ssl-name: the SNI sent and the name checked.
        (
            "alias",
            with(
                r#"nginx.ingress.kubernetes.io/proxy-ssl-secret: "saas/backend-ca", nginx.ingress.kubernetes.io/proxy-ssl-name: alias.internal"#,
            ),
        ),
        (
            "misnamed",
            with(
                r#"nginx.ingress.kubernetes.io/proxy-ssl-secret: "saas/backend-ca", nginx.ingress.kubernetes.io/proxy-ssl-name: elsewhere.internal"#,
            ),
        ),
    ];
    let mut manifests = vec![
        service_at("secure", up),
        ca_secret("backend-ca", true, &pki.ca_pem),
        ca_secret("other-ca", true, &other.ca_pem),
    ];
    for (name, annotations) in &ingresses {
        manifests.push(
            ingress(name, "secure", annotations, "2024-01-01T00:00:00Z")
                .replace("shop.test", &format!("{name}.test")),
        );
    }
    let (gw, _dir) = serve("backend-https", manifests).await;
    let mut client = gw.client();
    for (host, status, body) in [
        ("ca.test", 200, Some("secure sni=secure.saas.svc")),
        ("system.test", 502, None),
        ("wrong-ca.test", 502, None),
        ("unverified.test", 200, Some("secure sni=secure.saas.svc")),
        ("alias.test", 200, Some("secure sni=alias.internal")),
        ("misnamed.test", 502, None),
    ] {
        let r = client.get(host, "/").await.unwrap();
        // A refused handshake is a failed connect: 502, or 503 once the
        // only endpoint is ejected.
        let got = if r.status == 503 { 502 } else { r.status };
        assert_eq!(got, status, "{host}: {}", r.body);
        if let Some(body) = body {
            assert_eq!(r.body.trim(), body, "{host}");
        }
    }
}
