//! Tenant isolation at the edge, tried as an attacker would: spoofed tenant
//! and forwarding headers in any spelling (HTTP/1.1 and HTTP/2),
//! absolute-form targets, invalid hosts, dot-segments and odd request
//! lines. Real sockets to the gateway binary; echoing upstreams report the
//! target and headers they received.
#![allow(clippy::unwrap_used)]

mod common;
mod pki;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use pki::Pki;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use vestibule_config::model::{
    Backend, GatewayConfig, HostTls, PathMatch, PoolId, Tenant, TenantId,
};
use vestibule_config::HostPattern;

struct Lab {
    gw: Gateway,
    pki: Pki,
    _upstreams: Vec<Upstream>,
    _dir: TempDir,
}

/// Tenants `umbrella` (plain, `/app` Prefix, `/secret` Exact, `/` Prefix),
/// `acme` and `globex` (TLS, a certificate each), a `*.wild.test` vhost and
/// a default backend.
async fn lab(extra: &[&str]) -> Lab {
    let pki = Pki::new();
    let names = [
        "umbrella",
        "umbrella-app",
        "secret",
        "acme",
        "globex",
        "wild",
        "default",
    ];
    let mut upstreams = Vec::new();
    let mut config = GatewayConfig::default();
    for name in names {
        let up = Upstream::start(name).await;
        config.pools.insert(PoolId::new(name), pool(&[(&up, 1)]));
        upstreams.push(up);
    }
    for (tenant, domain) in [
        ("umbrella", "umbrella.example.com"),
        ("acme", "acme.example.com"),
        ("globex", "globex.example.com"),
    ] {
        config.tenants.insert(
            TenantId::new(tenant),
            Tenant {
                domains: vec![HostPattern::parse(domain).unwrap()],
                rate_limit: None,
                cluster_rate_limit: None,
            },
        );
    }
    let mut tls_host = |host: &str, tenant: &str| {
        let cert = pki.issue(&[host], &rcgen::PKCS_ECDSA_P256_SHA256);
        config.certificates.insert(cert.id(), cert.clone());
        let mut v = vhost(
            host,
            Some(tenant),
            vec![route(tenant, PathMatch::prefix("/"), tenant)],
        );
        v.tls = Some(HostTls::Certificate(cert.id()));
        v
    };
    let acme = tls_host("acme.example.com", "acme");
    let globex = tls_host("globex.example.com", "globex");
    config.hosts = vec![
        vhost(
            "umbrella.example.com",
            Some("umbrella"),
            vec![
                route("secret", PathMatch::Exact("/secret".into()), "secret"),
                route("app", PathMatch::prefix("/app"), "umbrella-app"),
                route("root", PathMatch::prefix("/"), "umbrella"),
            ],
        ),
        acme,
        globex,
        vhost(
            "*.wild.test",
            None,
            vec![route("wild", PathMatch::prefix("/"), "wild")],
        ),
    ];
    config.default_backend = Some(Backend::Pool(PoolId::new("default")));
    let (gw, dir) = serve_config("isolation", &config, extra).await;
    Lab {
        gw,
        pki,
        _upstreams: upstreams,
        _dir: dir,
    }
}

async fn plain(addr: SocketAddr, bytes: &[u8]) -> Response {
    exchange(TcpStream::connect(addr).await.unwrap(), bytes).await
}

impl Lab {
    fn tls_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        self.pki.client(alpn, false)
    }

    async fn tls(&self, sni: &str, bytes: &[u8]) -> Response {
        let tcp = TcpStream::connect(self.gw.https).await.unwrap();
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let tls = TlsConnector::from(self.tls_config(&[b"http/1.1"]))
            .connect(name, tcp)
            .await
            .unwrap();
        exchange(tls, bytes).await
    }

    /// One HTTP/2 request over TLS with SNI `sni`: (status, response).
    async fn h2(&self, sni: &str, url: &str, headers: &[(&str, &str)]) -> (u16, Response) {
        let tcp = TcpStream::connect(self.gw.https).await.unwrap();
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let tls = TlsConnector::from(self.tls_config(&[b"h2"]))
            .connect(name, tcp)
            .await
            .unwrap();
        let (send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder().uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let resp = Response {
            status,
            headers,
            body: pki::h2_body(resp.into_body()).await,
        };
        (status, resp)
    }
}

fn get(target: &str, host: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_can_speak_for_a_tenant_or_the_gateway() {
    let lab = lab(&[]).await;
    let http = lab.gw.http;

    // 1. Underscore spellings of protected headers, and underscores at all.
    let spoof = "X_Tenant_Id: acme\r\nX-Tenant_Id: acme\r\nX-Tenant-Id: acme\r\n\
                 X_Forwarded_For: 6.6.6.6\r\nX-Custom_Thing: 1\r\nX-Keep: 1\r\n";
    let r = plain(http, &get("/", "umbrella.example.com", spoof)).await;
    assert_eq!(r.upstream(), Some("umbrella"));
    let seen = r.seen();
    assert_eq!(seen["x-tenant-id"], "umbrella", "{seen:?}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-keep"], "1");
    assert!(seen.keys().all(|k| !k.contains('_')), "{seen:?}");

    // The same over HTTP/2 (lower-case names, `:authority`).
    let (status, r) = lab
        .h2(
            "globex.example.com",
            "https://globex.example.com/x",
            &[
                ("x_tenant_id", "acme"),
                ("x-tenant_id", "acme"),
                ("x_forwarded_for", "6.6.6.6"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let seen = r.seen();
    assert_eq!(seen["x-tenant-id"], "globex", "{seen:?}");
    assert!(seen.keys().all(|k| !k.contains('_')), "{seen:?}");

    // 2. Every forwarding header: set from what the gateway saw, or gone.
    let forwarding = "X-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /evil\r\n\
                      Forwarded: for=6.6.6.6;host=acme.example.com\r\nX-Real-IP: 6.6.6.6\r\n\
                      X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-Client-IP: 6.6.6.6\r\n\
                      True-Client-IP: 6.6.6.6\r\nX-Forwarded-Host: acme.example.com\r\n\
                      X-Forwarded-Proto: https\r\n";
    let r = plain(http, &get("/", "umbrella.example.com", forwarding)).await;
    let seen = r.seen();
    assert_eq!(seen["x-forwarded-port"], "80");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "umbrella.example.com");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["forwarded"],
        "for=127.0.0.1;host=\"umbrella.example.com\";proto=http"
    );
    for gone in [
        "x-forwarded-prefix",
        "x-original-url",
        "x-rewrite-url",
        "x-client-ip",
        "true-client-ip",
    ] {
        assert!(!seen.contains_key(gone), "{gone} passed: {seen:?}");
    }
    let r = lab
        .tls("acme.example.com", &get("/", "acme.example.com:8443", ""))
        .await;
    let seen = r.seen();
    assert_eq!(seen["x-forwarded-port"], "8443");
    assert_eq!(seen["x-forwarded-proto"], "https");

    // 3. Absolute-form targets route by their authority, like Host.
    let r = plain(
        http,
        b"GET http://umbrella.example.com/app/x HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(r.upstream(), Some("umbrella-app"));
    assert_eq!(r.headers["x-target"], "/app/x");
    let seen = r.seen();
    assert_eq!(seen["x-tenant-id"], "umbrella");
    assert_eq!(seen["host"], "umbrella.example.com");
    assert_eq!(seen["x-forwarded-host"], "umbrella.example.com");
    let r = plain(
        http,
        b"GET http://globex.example.com/api/x?q=1 HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 308, "a TLS host is redirected: {r:?}");
    assert!(r.headers["location"].starts_with("https://globex.example.com"));
    assert!(r.headers["location"].ends_with("/api/x?q=1"));
    let r = plain(
        http,
        b"GET http://umbrella.example.com/ HTTP/1.1\r\nHost: umbrella.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(r.upstream(), Some("umbrella"));
    let r = lab
        .tls(
            "acme.example.com",
            b"GET https://globex.example.com/x HTTP/1.0\r\n\r\n",
        )
        .await;
    assert_eq!(r.status, 421, "authority under another certificate: {r:?}");
    let r = lab
        .tls(
            "globex.example.com",
            b"GET https://globex.example.com/x HTTP/1.0\r\n\r\n",
        )
        .await;
    assert_eq!(r.upstream(), Some("globex"));
    assert_eq!(r.seen()["x-tenant-id"], "globex");

    // 4. Invalid hosts are 400, never the default backend.
    for host in [
        "umbrella.example.com..",
        "umbrella.example.com:80:80",
        "umbrella.example.com/x",
        "umbrella.example.com?x",
        "umbrella.example.com#x",
        "\"umbrella.example.com\"",
        "[umbrella.example.com]",
        "umbrella.example.com%2e",
        "umbrella%00.example.com",
        "a, umbrella.example.com",
        ".umbrella.example.com",
    ] {
        let r = plain(http, &get("/", host, "")).await;
        assert_eq!(r.status, 400, "Host {host:?}: {r:?}");
    }
    // A single trailing dot is the same host.
    let r = plain(http, &get("/", "umbrella.example.com.", "")).await;
    assert_eq!(r.upstream(), Some("umbrella"));
    let r = lab
        .tls("globex.example.com", &get("/", "acme.example.com..", ""))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    let (status, _) = lab
        .h2("globex.example.com", "https://acme.example.com../", &[])
        .await;
    assert_eq!(status, 400);
    // A wildcard stands for one DNS label.
    let r = plain(http, &get("/", "a-1.wild.test", "")).await;
    assert_eq!(r.upstream(), Some("wild"));
    for host in ["-.wild.test", "_x.wild.test", "x-.wild.test"] {
        let r = plain(http, &get("/", host, "")).await;
        assert_eq!(r.upstream(), Some("default"), "{host}: {r:?}");
    }
    for host in [".wild.test", "*.wild.test", "x y.wild.test"] {
        let r = plain(http, &get("/", host, "")).await;
        assert_eq!(r.status, 400, "{host}: {r:?}");
    }

    // 5. Dot-segments and escapes: matched and forwarded as one path.
    for (target, upstream, forwarded) in [
        ("/app/../secret", "secret", "/secret"),
        ("/app/%2e%2e/secret", "secret", "/secret"),
        ("/app/.%2E/secret?x=/../", "secret", "/secret?x=/../"),
        ("/app/./x/../y", "umbrella-app", "/app/y"),
        ("/%61pp/x", "umbrella-app", "/app/x"),
        ("/app%2F..%2Fsecret", "umbrella", "/app%2F..%2Fsecret"),
        ("/app/%2f/x", "umbrella-app", "/app/%2F/x"),
    ] {
        let r = plain(http, &get(target, "umbrella.example.com", "")).await;
        assert_eq!(r.upstream(), Some(upstream), "{target}: {r:?}");
        assert_eq!(r.headers["x-target"], forwarded, "{target}");
    }
    for bytes in [
        b"GET  /secret HTTP/1.1\r\nHost: umbrella.example.com\r\n\r\n".to_vec(),
        b"GET /app/\0/x HTTP/1.1\r\nHost: umbrella.example.com\r\n\r\n".to_vec(),
        b"GET /app/%00/x HTTP/1.1\r\nHost: umbrella.example.com\r\n\r\n".to_vec(),
        b"GET /app/%zz HTTP/1.1\r\nHost: umbrella.example.com\r\n\r\n".to_vec(),
        format!(
            "{} / HTTP/1.1\r\nHost: umbrella.example.com\r\n\r\n",
            "G".repeat(5000)
        )
        .into_bytes(),
    ] {
        let r = plain(http, &bytes).await;
        assert_eq!(
            r.status,
            400,
            "{:?}: {r:?}",
            String::from_utf8_lossy(&bytes[..40])
        );
    }
    // Pingora percent-encodes a raw space in the target before any handler
    // sees it: what goes upstream is one well-formed target.
    let r = plain(
        http,
        b"GET /app/a b HTTP/1.1\r\nHost: umbrella.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(r.headers["x-target"], "/app/a%20b");
    let (status, r) = lab
        .h2(
            "globex.example.com",
            "https://globex.example.com/a/../b",
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(r.headers["x-target"], "/b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_headers_pass_only_when_allowed_and_never_as_protected_names() {
    let lab = lab(&["--allow-underscores-in-headers"]).await;
    let spoof = "X_Tenant_Id: acme\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\n\
                 X-Custom_Thing: 1\r\n";
    let r = plain(lab.gw.http, &get("/", "umbrella.example.com", spoof)).await;
    let seen = r.seen();
    assert_eq!(seen["x-custom_thing"], "1", "{seen:?}");
    assert_eq!(seen["x-tenant-id"], "umbrella");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert!(!seen.contains_key("x_tenant_id") && !seen.contains_key("x_forwarded_for"));
    assert!(!seen.contains_key("x-real_ip"));
}
