//! The real client address behind a load balancer, through real sockets:
//! PROXY protocol v1 and v2 headers written by the test client (on the
//! HTTP listener, and before a TLS handshake on the HTTPS one), and
//! X-Forwarded-For from trusted proxies. The address found feeds the
//! forwarding headers upstreams see, source-range rules and the per-IP
//! connection cap; a connection without a header is closed.
#![allow(clippy::unwrap_used)]

mod common;
mod pki;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use pki::Pki;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use vestibule_config::model::{ClientNetworks, Filter, GatewayConfig, HostTls, PathMatch, PoolId};

struct Lab {
    gw: Gateway,
    pki: Pki,
    _app: Upstream,
    _dir: TempDir,
}

/// `app.test` (open), `office.test` (only 203.0.113.0/24) and `tls.test`
/// (HTTPS), all to one echoing upstream.
async fn lab(extra: &[&str]) -> Lab {
    let pki = Pki::new();
    let app = Upstream::start("app").await;
    let mut config = GatewayConfig::default();
    config.pools.insert(PoolId::new("app"), pool(&[(&app, 1)]));
    let mut office = route("office", PathMatch::prefix("/"), "app");
    office.filters.push(Filter::ClientNetworks(ClientNetworks {
        allow: vec!["203.0.113.0/24".parse().unwrap()],
        deny: vec![],
    }));
    let cert = pki.issue(&["tls.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    config.certificates.insert(cert.id(), cert.clone());
    let mut tls = vhost(
        "tls.test",
        None,
        vec![route("tls", PathMatch::prefix("/"), "app")],
    );
    tls.tls = Some(HostTls::Certificate(cert.id()));
    config.hosts = vec![
        vhost(
            "app.test",
            None,
            vec![route("app", PathMatch::prefix("/"), "app")],
        ),
        vhost("office.test", None, vec![office]),
        tls,
    ];
    let (gw, dir) = serve_config("client-ip", &config, extra).await;
    Lab {
        gw,
        pki,
        _app: app,
        _dir: dir,
    }
}

fn v1(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let dst = if client.is_ipv4() { "127.0.0.1" } else { "::1" };
    format!(
        "PROXY {family} {} {dst} {} 80\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

fn v2(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let dst: SocketAddr = if client.is_ipv4() {
        "127.0.0.1:80".parse().unwrap()
    } else {
        "[::1]:80".parse().unwrap()
    };
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, dst),
    )
    .build()
    .unwrap()
}

fn get(host: &str, extra: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").into_bytes()
}

/// A request on a new connection to the HTTP listener that starts with
/// `preamble` (a PROXY header, or nothing).
async fn plain(addr: SocketAddr, preamble: &[u8], host: &str, extra: &str) -> Response {
    let bytes = [preamble, &get(host, extra)].concat();
    exchange(TcpStream::connect(addr).await.unwrap(), &bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_names_the_client_for_headers_rules_and_caps() {
    let lab = lab(&["--proxy-protocol", "--max-connections-per-ip", "2"]).await;
    let http = lab.gw.http;

    // v1: the header's client is the one upstreams see and rules judge; a
    // client's own X-Forwarded-For is not believed (no trusted proxy).
    let r = plain(
        http,
        &v1("203.0.113.7:5555"),
        "office.test",
        "X-Forwarded-For: 6.6.6.6\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.seen();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7");
    assert_eq!(seen["x-real-ip"], "203.0.113.7");
    // v2, another client: outside office.test's range, fine elsewhere.
    let r = plain(http, &v2("198.51.100.9:40000"), "office.test", "").await;
    assert_eq!(r.status, 403);
    let r = plain(http, &v2("198.51.100.9:40000"), "app.test", "").await;
    assert_eq!(r.seen()["x-forwarded-for"], "198.51.100.9");
    // IPv6 in v1.
    let r = plain(http, &v1("[2001:db8::7]:5555"), "app.test", "").await;
    assert_eq!(r.seen()["x-forwarded-for"], "2001:db8::7");

    // HTTPS: the header comes before the TLS handshake.
    let mut tcp = TcpStream::connect(lab.gw.https).await.unwrap();
    tcp.write_all(&v2("203.0.113.8:4000")).await.unwrap();
    let tls = TlsConnector::from(lab.pki.client(&[b"http/1.1"], false))
        .connect(ServerName::try_from("tls.test").unwrap(), tcp)
        .await
        .unwrap();
    let r = exchange(tls, &get("tls.test", "")).await;
    assert_eq!(r.seen()["x-forwarded-for"], "203.0.113.8");
    assert_eq!(r.seen()["x-forwarded-proto"], "https");

    // The per-IP cap counts the header's client, not the balancer: two
    // connections of 203.0.113.50 hold its slots...
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(&v1("203.0.113.50:1000")).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so its third is refused, while another client behind the same
    // balancer address is served.
    let r = plain(http, &v1("203.0.113.50:1001"), "app.test", "").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("too many connections"));
    let r = plain(http, &v1("203.0.113.51:1000"), "app.test", "").await;
    assert_eq!(r.status, 200);
    drop(held);

    // No header, or garbage: closed without an answer.
    for preamble in [&b""[..], b"PROXY TCP4 bogus\r\n", b"\r\n\r\n"] {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(&[preamble, &get("app.test", "")].concat())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "answered without a PROXY header ({preamble:?}): {read:?} {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // Tests connect from 127.0.0.1: trusted here.
    let trusting = lab(&["--trusted-proxies", "10.0.0.0/8,127.0.0.1"]).await;
    let r = plain(
        trusting.gw.http,
        b"",
        "office.test",
        "X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\nX-Forwarded-For: 10.1.1.1\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.seen();
    // Appended to, and read from the right past the trusted 10.1.1.1.
    assert_eq!(
        seen["x-forwarded-for"],
        "6.6.6.6, 203.0.113.7, 10.1.1.1, 127.0.0.1"
    );
    assert_eq!(seen["x-real-ip"], "203.0.113.7");
    assert!(seen["forwarded"].starts_with("for=203.0.113.7;"));
    // A client naming a trusted address only: it is not the client.
    let r = plain(
        trusting.gw.http,
        b"",
        "office.test",
        "X-Forwarded-For: 203.0.113.9, 6.6.6.6\r\n",
    )
    .await;
    assert_eq!(r.status, 403);

    // Not trusted: the header is replaced, and the peer is the client.
    let strict = lab(&["--trusted-proxies", "10.0.0.0/8"]).await;
    let r = plain(
        strict.gw.http,
        b"",
        "office.test",
        "X-Forwarded-For: 203.0.113.7\r\n",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = plain(
        strict.gw.http,
        b"",
        "app.test",
        "X-Forwarded-For: 203.0.113.7\r\n",
    )
    .await;
    assert_eq!(r.seen()["x-forwarded-for"], "127.0.0.1");
    assert_eq!(r.seen()["x-real-ip"], "127.0.0.1");
}
