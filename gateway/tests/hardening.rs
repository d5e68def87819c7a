//! Slow and greedy clients, rate limits and connection caps, through real
//! sockets: slowloris (a head trickled byte by byte), a stalled body, an
//! idle keep-alive connection, too many connections from one IP, the RSS of
//! the gateway holding 2,000 slow connections, a tenant's token bucket
//! (429 + Retry-After, state kept across swaps), a pool's concurrent
//! connection cap (503 + Retry-After, never a queue), trickled bodies,
//! handshakes stalled mid-way, and the memory of idle connections.
#![allow(clippy::unwrap_used)]

mod common;
mod pki;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    one_host_config, pool, route, vhost, write_config, Client, Gateway, TempDir, Upstream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vestibule_config::model::{GatewayConfig, PathMatch, PoolId, RateLimit, Tenant, TenantId};
use vestibule_config::HostPattern;

fn config(up: &Upstream) -> GatewayConfig {
    GatewayConfig {
        hosts: vec![vhost(
            "a.test",
            None,
            vec![route("r", PathMatch::prefix("/"), "p")],
        )],
        pools: [(PoolId::new("p"), pool(&[(up, 1)]))].into(),
        ..Default::default()
    }
    .seal()
}

async fn start(
    dir: &TempDir,
    config: &GatewayConfig,
    extra: &[&str],
) -> (Gateway, std::path::PathBuf) {
    let file = dir.0.join("config.json");
    write_config(&file, config);
    let gw = Gateway::start(&["--config", file.to_str().unwrap()], extra).await;
    (gw, file)
}

/// Reads until the peer closes (or `within` passes); returns what was read
/// and whether the peer closed.
async fn read_until_close(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_slow_body_idle_keepalive_and_per_ip_cap_are_cut() {
    let up = Upstream::start("up").await;
    let dir = TempDir::new("slow");
    let (gw, _) = start(
        &dir,
        &config(&up),
        &[
            "--header-timeout",
            "1s",
            "--keepalive-timeout",
            "1s",
            "--client-timeout",
            "1s",
            "--max-connections-per-ip",
            "20",
        ],
    )
    .await;

    // Slowloris: a byte every 100 ms never finishes the head; Pingora alone
    // would wait 60 s per byte. Cut with 408 at ~1 s.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let head = b"GET / HTTP/1.1\r\nhost: a.test\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let (got, eof) = read_until_close(&mut s, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(closed || eof, "the trickling client was never cut");
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got:?}");

    // A client that connects and sends nothing is cut at the same deadline.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let (_, eof) = read_until_close(&mut s, Duration::from_secs(4)).await;
    assert!(eof, "silent connection kept");
    assert!(started.elapsed() < Duration::from_secs(3));

    // On the TLS port, a client that never finishes its ClientHello is cut
    // at the same deadline (Pingora alone waits 60 s for a handshake).
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.https).await.unwrap();
    // The first bytes of a handshake record, then nothing.
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let (_, eof) = read_until_close(&mut s, Duration::from_secs(4)).await;
    assert!(eof, "stalled ClientHello kept");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Slow body: the head is fine, the body stalls: cut by --client-timeout.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let (got, eof) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(eof, "stalled body kept open: {got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Trickled body: a byte every 400 ms never trips the per-operation
    // timeout, but falls far below the minimum body rate (1 KiB/s after a
    // grace of --header-timeout): cut at ~1 s, not after the 40 s it asks.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    let mut cut = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
        if s.write_all(b"x").await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
        {
            cut = n == 0 || probe.starts_with(b"HTTP/1.1 408");
            if cut {
                break;
            }
        }
    }
    let took = started.elapsed();
    assert!(cut, "trickled body never cut");
    assert!(
        took < Duration::from_secs(4),
        "trickled body cut after {took:?}"
    );
    let metrics = gw.admin_get("/metrics").await.body;
    // The stalled body above may have been cut by the rate rule too.
    let body_cuts: f64 = metrics
        .lines()
        .find(|l| l.contains("kind=\"body\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(
        body_cuts >= 1.0,
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("kind="))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Idle keep-alive: a served connection that goes quiet is closed.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut r = tokio::io::BufReader::new(s);
    let resp = common::read_response(&mut r).await.unwrap();
    assert_eq!(resp.status, 200);
    let started = Instant::now();
    let (_, eof) = read_until_close(r.get_mut(), Duration::from_secs(4)).await;
    assert!(eof, "idle keep-alive connection kept");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "{idle:?}"
    );

    // Busy keep-alive is not idle: requests 300 ms apart for 2 s all succeed
    // on one connection.
    let mut c = Client::new(gw.http);
    for _ in 0..7 {
        assert_eq!(c.get("a.test", "/").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Per-IP cap: 20 held connections; the 21st is refused with 503.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(gw.http).await.unwrap();
    let _ = extra
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await;
    let (got, eof) = read_until_close(&mut extra, Duration::from_secs(2)).await;
    assert!(eof);
    assert!(got.starts_with("HTTP/1.1 503"), "{got:?}");
    assert!(
        got.to_ascii_lowercase().contains("retry-after: 1"),
        "{got:?}"
    );
    drop(held);
    // Slots come back when connections close.
    let ok = common::eventually(Duration::from_secs(3), || async {
        Client::new(gw.http)
            .get("a.test", "/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(ok.is_some(), "slots not released");

    let m = String::from_utf8(gw.admin_get("/metrics").await.body.into_bytes()).unwrap();
    assert!(
        metric(&m, "vestibule_downstream_timeouts_total{kind=\"header\"}") >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "vestibule_downstream_timeouts_total{kind=\"keepalive\"}"
        ) >= 1.0
    );
    assert!(metric(&m, "vestibule_downstream_rejected_total") >= 1.0);
}

/// The first requests allocate runtime and pool state: serves some, lets
/// the gateway settle for `settle`, and returns its RSS (KiB) then.
async fn warm_up(gw: &Gateway, settle: Duration) -> u64 {
    let mut c = gw.client();
    for _ in 0..50 {
        assert_eq!(c.get("a.test", "/").await.unwrap().status, 200);
    }
    drop(c);
    tokio::time::sleep(settle).await;
    rss_kb(gw.child.id())
}

/// Opens `n` connections that each send part of a request head and stall;
/// returns them with the gateway's RSS growth in KiB.
async fn hold_slow_connections(gw: &Gateway, n: usize) -> (Vec<TcpStream>, u64, u64) {
    let pid = gw.child.id();
    let before = warm_up(gw, Duration::from_millis(300)).await;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        // From 127.0.0.2: thousands of ephemeral ports on 127.0.0.1 would
        // race the other tests' `free_addr()` listeners.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = sock.connect(gw.http).await.unwrap();
        s.write_all(format!("GET /{i} HTTP/1.1\r\nhost: a.test\r\nx-a: ").as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kb(pid);
    (held, before, after)
}

async fn slow_connections_memory(n: usize, bound_mb: u64) {
    let up = Upstream::start("up").await;
    let dir = TempDir::new("rss");
    let (gw, _) = start(
        &dir,
        &config(&up),
        &["--header-timeout", "2s", "--max-connections-per-ip", "0"],
    )
    .await;
    let (mut held, before, after) = hold_slow_connections(&gw, n).await;
    // Every connection is still open on the gateway's side...
    let mut buf = [0u8; 1];
    let probe = tokio::time::timeout(Duration::from_millis(50), held[0].read(&mut buf)).await;
    assert!(probe.is_err(), "connection closed before its deadline");
    let growth_mb = after.saturating_sub(before) / 1024;
    eprintln!(
        "{n} slow connections: RSS {before} KiB -> {after} KiB (+{growth_mb} MiB, {} B each)",
        after.saturating_sub(before) * 1024 / n as u64
    );
    assert!(
        after.saturating_sub(before) / 1024 < bound_mb,
        "RSS grew {growth_mb} MiB"
    );
    // ...and cut at the head deadline, every one of them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut open = 0;
    for s in &mut held {
        let (_, eof) = read_until_close(s, Duration::from_millis(2000)).await;
        open += usize::from(!eof);
    }
    assert_eq!(open, 0, "{open} slow connections survived the deadline");
    drop(held);
    // A second wave costs no more than the first: memory is reused, not leaked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (held, _, again) = hold_slow_connections(&gw, n).await;
    eprintln!("second wave of {n}: RSS {again} KiB (first wave peak {after} KiB)");
    assert!(
        again < after + (after - before.min(after)) / 5 + 5 * 1024,
        "RSS kept growing: {after} KiB -> {again} KiB"
    );
    drop(held);
    // The gateway still serves.
    assert_eq!(gw.client().get("a.test", "/").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_connections_keep_memory_flat() {
    slow_connections_memory(2_000, 100).await;
}

/// Heavy variant: `cargo test -p vestibule-gateway --test hardening -- --ignored`
/// (needs `ulimit -n` >= 20000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn eight_thousand_slow_connections_keep_memory_flat() {
    slow_connections_memory(8_000, 400).await;
}

fn tenant_config(up: &Upstream, limit: Option<RateLimit>, extra_host: bool) -> GatewayConfig {
    let mut hosts = vec![
        vhost(
            "acme.test",
            Some("acme"),
            vec![route("tenant/acme", PathMatch::prefix("/"), "p")],
        ),
        vhost(
            "free.test",
            None,
            vec![route("r", PathMatch::prefix("/"), "p")],
        ),
    ];
    if extra_host {
        hosts.push(vhost(
            "other.test",
            None,
            vec![route("o", PathMatch::prefix("/"), "p")],
        ));
    }
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    GatewayConfig {
        hosts,
        pools: [(PoolId::new("p"), pool(&[(up, 1)]))].into(),
        tenants: [(
            TenantId::new("acme"),
            Tenant {
                domains: vec![HostPattern::parse("acme.test").unwrap()],
                rate_limit: limit,
                cluster_rate_limit: None,
            },
        )]
        .into(),
        ..Default::default()
    }
    .seal()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_rate_limit_429_with_retry_after_and_state_survives_swaps() {
    let up = Upstream::start("up").await;
    let dir = TempDir::new("rate");
    let limit = RateLimit {
        requests_per_second: 2,
        burst: 5,
    };
    let (gw, file) = start(&dir, &tenant_config(&up, Some(limit), false), &[]).await;
    let mut c = gw.client();
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = c.get("acme.test", "/").await.unwrap();
        if r.status == 429 {
            let secs: u64 = r.headers["retry-after"].parse().unwrap();
            assert!((1..=1).contains(&secs), "retry-after {secs}");
            assert!(
                r.upstream().is_none(),
                "a refused request reached the upstream"
            );
        }
        codes.push(r.status);
    }
    assert_eq!(&codes[..5], &[200; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|&c| c == 429), "{codes:?}");
    // Other hosts are not limited.
    for _ in 0..20 {
        assert_eq!(c.get("free.test", "/").await.unwrap().status, 200);
    }
    // A swap that keeps the limit keeps the (empty) bucket.
    let before = gw.admin_get("/config").await.body;
    write_config(&file, &tenant_config(&up, Some(limit), true));
    let http = gw.http;
    common::eventually(Duration::from_secs(5), || async move {
        Client::new(http)
            .get("other.test", "/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await
    .expect("swap applied");
    assert_ne!(before, gw.admin_get("/config").await.body);
    assert_eq!(
        c.get("acme.test", "/").await.unwrap().status,
        429,
        "bucket refilled by a swap"
    );
    // After the refill interval one more passes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.get("acme.test", "/").await.unwrap().status, 200);
    // Removing the limit lifts it at once.
    write_config(&file, &tenant_config(&up, None, true));
    let lifted = common::eventually(Duration::from_secs(5), || async move {
        let mut c = Client::new(http);
        let mut all = true;
        for _ in 0..10 {
            all &= c.get("acme.test", "/").await.is_ok_and(|r| r.status == 200);
        }
        all
    })
    .await;
    assert!(lifted.is_some());
    let m = gw.admin_get("/metrics").await.body;
    assert!(metric(&m, "vestibule_rate_limited_total") >= 4.0, "{m}");
}

/// An upstream that accepts and holds every request until released.
async fn holding_upstream() -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        seen.clear();
                        while !*rx.borrow() {
                            if rx.changed().await.is_err() {
                                return;
                            }
                        }
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                            .await;
                    }
                }
            });
        }
    });
    (addr, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_connection_cap_refuses_with_503_instead_of_queueing() {
    let (addr, release) = holding_upstream().await;
    let config = one_host_config("a.test", addr);
    let dir = TempDir::new("poolcap");
    let (gw, _) = start(&dir, &config, &["--max-pool-connections", "4"]).await;
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let http = gw.http;
        waiting.push(tokio::spawn(async move {
            Client::new(http).get("a.test", "/").await
        }));
    }
    // The four hold the pool's slots: they are in flight at the upstream.
    let held = common::eventually(Duration::from_secs(3), || async {
        metric(
            &gw.admin_get("/metrics").await.body,
            "vestibule_active_requests",
        ) >= 4.0
    })
    .await;
    assert!(held.is_some(), "the four requests never got in flight");
    let started = Instant::now();
    let r = gw.client().get("a.test", "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.body, "upstream at its connection limit\n");
    assert_eq!(r.headers["connection"], "close");
    assert!(started.elapsed() < Duration::from_millis(500), "queued");
    release.send(true).unwrap();
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap().status, 200);
    }
    // Slots released: new requests pass.
    for _ in 0..10 {
        assert_eq!(gw.client().get("a.test", "/").await.unwrap().status, 200);
    }
    let m = gw.admin_get("/metrics").await.body;
    assert_eq!(metric(&m, "vestibule_pool_overloaded_total"), 1.0);
}

/// Idle keep-alive connections hold no buffers: each costs little while it
/// waits for its next request, and the memory of a flood of them goes back
/// to the OS once they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_cost_little_and_memory_returns() {
    const N: usize = 2_000;
    let up = Upstream::start("up").await;
    let dir = TempDir::new("idle-rss");
    let (gw, _) = start(
        &dir,
        &config(&up),
        // One worker, as deployed (one per core): the memory given back is
        // that of the worker where the flood ended.
        &[
            "--keepalive-timeout",
            "60s",
            "--max-connections-per-ip",
            "0",
            "--threads",
            "1",
        ],
    )
    .await;
    let pid = gw.child.id();
    let before = warm_up(&gw, Duration::from_millis(1500)).await;
    let mut idle = Vec::with_capacity(N);
    for i in 0..N {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        // Its own address: thousands of closed client ports linger in
        // TIME_WAIT, and other tests bind listeners on 127.0.0.2-4.
        sock.bind("127.0.0.31:0".parse().unwrap()).unwrap();
        let s = sock.connect(gw.http).await.unwrap();
        let mut r = tokio::io::BufReader::new(s);
        r.get_mut()
            .write_all(format!("GET /{i} HTTP/1.1\r\nhost: a.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(common::read_response(&mut r).await.unwrap().status, 200);
        idle.push(r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = rss_kb(pid);
    let per_conn = held.saturating_sub(before) * 1024 / N as u64;
    // Each is still open and usable.
    for r in idle.iter_mut().step_by(97) {
        r.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(common::read_response(r).await.unwrap().status, 200);
    }
    drop(idle);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = rss_kb(pid);
    eprintln!(
        "{N} idle keep-alive connections: RSS {before} KiB -> {held} KiB ({per_conn} B each) -> {after} KiB after they closed"
    );
    assert!(per_conn < 8 * 1024, "{per_conn} B per idle connection");
    assert!(
        after < before + (held - before.min(held)) / 2,
        "RSS stayed at {after} KiB after the flood (before {before}, peak {held})"
    );
}

/// TLS connections stalled after their ClientHello hold slots of their
/// client's per-IP cap, and give them back when they go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_count_against_the_per_ip_cap() {
    let up = Upstream::start("up").await;
    let pki = pki::Pki::new();
    let cert = pki.issue(&["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let mut config = config(&up);
    config.certificates.insert(cert.id(), cert.clone());
    config.hosts[0].tls = Some(vestibule_config::model::HostTls::Certificate(cert.id()));
    let dir = TempDir::new("handshakes");
    let (gw, _) = start(
        &dir,
        &config.seal(),
        &["--max-connections-per-ip", "3", "--handshake-timeout", "3s"],
    )
    .await;
    let client = pki.client(&[b"http/1.1"], false);
    let hello = || {
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let mut conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
        let mut bytes = Vec::new();
        conn.write_tls(&mut bytes).unwrap();
        bytes
    };
    // From their own address: the harness's readiness probes come from
    // 127.0.0.1.
    let connect = |to: SocketAddr| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.5:0".parse().unwrap()).unwrap();
        sock.connect(to).await.unwrap()
    };
    let plain = |http: SocketAddr| async move {
        let mut s = connect(http).await;
        s.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
            .await
            .unwrap();
        read_until_close(&mut s, Duration::from_secs(1)).await.0
    };
    // Three clients send their ClientHello and never finish the handshake.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = connect(gw.https).await;
        s.write_all(&hello()).await.unwrap();
        stalled.push(s);
    }
    // The gateway has taken the three hellos (and the harness's probe).
    let seen = common::eventually(Duration::from_secs(3), || async {
        let m = gw.admin_get("/metrics").await.body;
        metric(&m, "vestibule_tls_connections_total") >= 4.0
    })
    .await;
    assert!(seen.is_some(), "hellos not taken");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let http = gw.http;
    let got = plain(http).await;
    assert!(
        got.starts_with("HTTP/1.1 503"),
        "a fourth connection got in: {got:?}"
    );
    // A fourth handshake is refused before it costs anything.
    let mut s = connect(gw.https).await;
    let _ = s.write_all(&hello()).await;
    let (got, eof) = read_until_close(&mut s, Duration::from_secs(2)).await;
    assert!(eof && got.is_empty(), "{got:?}");
    // A handshake stalled after its hello is cut at --handshake-timeout
    // (3 s here; Pingora alone waits 60 s).
    let started = std::time::Instant::now();
    let (_, eof) = read_until_close(&mut stalled[0], Duration::from_secs(6)).await;
    assert!(eof, "stalled handshake kept");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    stalled.remove(0);
    // Gone handshakes give their slots back.
    drop(stalled);
    let back = common::eventually(Duration::from_secs(3), || async move {
        plain(http).await.starts_with("HTTP/1.1 308")
    })
    .await;
    assert!(back.is_some(), "slots of failed handshakes not released");
}

/// The admin listener: the proxy's head and idle deadlines, small caps,
/// GET and HEAD only, and a bearer token on `/metrics` and `/config` (the
/// probes stay open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_has_deadlines_caps_methods_and_a_token() {
    let up = Upstream::start("up").await;
    let dir = TempDir::new("admin");
    let token = dir.0.join("admin-token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let (gw, _) = start(
        &dir,
        &config(&up),
        &[
            "--header-timeout",
            "1s",
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
    )
    .await;
    let admin = gw.admin;
    let request = |method: &'static str, path: &'static str, auth: Option<&'static str>| async move {
        let mut c = Client::new(admin);
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        c.request(method, "admin", path, &headers).await.unwrap()
    };
    // Probes are open; the rest needs the token.
    assert_eq!(request("GET", "/healthz", None).await.status, 200);
    assert_eq!(request("GET", "/readyz", None).await.status, 200);
    for path in ["/metrics", "/config"] {
        let r = request("GET", path, None).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert_eq!(request("GET", path, Some("Bearer wrong")).await.status, 401);
        assert_eq!(
            request("GET", path, Some("Bearer s3cret")).await.status,
            200
        );
    }
    // Other methods: 405.
    for method in ["POST", "DELETE", "PUT"] {
        let r = request(method, "/config", Some("Bearer s3cret")).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.headers["allow"], "GET, HEAD");
    }

    // A trickled head and a silent connection are cut at the header timeout.
    let started = Instant::now();
    let mut trickle = TcpStream::connect(admin).await.unwrap();
    let mut cut = false;
    for b in b"GET /metrics HTTP/1.1\r\nhost: admin\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if trickle.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, eof) = read_until_close(&mut trickle, Duration::from_secs(3)).await;
    assert!(cut || eof, "trickling admin connection kept");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let mut silent = TcpStream::connect(admin).await.unwrap();
    let (_, eof) = read_until_close(&mut silent, Duration::from_secs(4)).await;
    assert!(
        eof && started.elapsed() < Duration::from_secs(3),
        "silent admin connection kept"
    );

    // Caps: 16 connections per client IP, 64 in all.
    let hold = |ip: &'static str| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let mut s = sock.connect(admin).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await
            .unwrap();
        let mut r = tokio::io::BufReader::new(s);
        let resp = common::read_response(&mut r).await;
        (resp.map(|r| r.status), r)
    };
    let mut held = Vec::new();
    for _ in 0..16 {
        let (status, conn) = hold("127.0.0.6").await;
        assert_eq!(status, Ok(200));
        held.push(conn);
    }
    let (status, _) = hold("127.0.0.6").await;
    assert_eq!(status, Ok(503), "a 17th connection from one IP");
    for ip in ["127.0.0.7", "127.0.0.8", "127.0.0.9"] {
        for _ in 0..16 {
            let (status, conn) = hold(ip).await;
            assert_eq!(status, Ok(200));
            held.push(conn);
        }
    }
    let (status, _) = hold("127.0.0.10").await;
    assert_eq!(status, Ok(503), "a 65th admin connection");
    drop(held);
    let back = common::eventually(Duration::from_secs(3), || async {
        Client::new(admin)
            .get("admin", "/healthz")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(back.is_some());
}
