//! End-to-end tests: the gateway binary on loopback in front of real
//! upstreams, configured by a watched `--config` file.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vestibule_config::model::{Backend, GatewayConfig, PathMatch, PoolId, Tenant, TenantId};
use vestibule_config::HostPattern;

fn config_file(dir: &TempDir, config: &GatewayConfig) -> std::path::PathBuf {
    let path = dir.0.join("config.json");
    write_config(&path, config);
    path
}

async fn start_with(dir: &TempDir, config: &GatewayConfig) -> (Gateway, std::path::PathBuf) {
    let path = config_file(dir, config);
    let gw = Gateway::start(&["--config", path.to_str().unwrap()], &[]).await;
    (gw, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_paths_default_backend_and_404() {
    let names = [
        "exact",
        "prefix-api",
        "prefix-api-v2",
        "root",
        "wild",
        "any-host",
        "default",
    ];
    let mut ups = HashMap::new();
    for n in names {
        ups.insert(n, Upstream::start(n).await);
    }
    let mut config = GatewayConfig::default();
    for n in names {
        config.pools.insert(PoolId::new(n), pool(&[(&ups[n], 1)]));
    }
    config.hosts = vec![
        vhost(
            "a.test",
            None,
            vec![
                route("r-exact", PathMatch::Exact("/api".into()), "exact"),
                route("r-api", PathMatch::prefix("/api"), "prefix-api"),
                route("r-api-v2", PathMatch::prefix("/api/v2"), "prefix-api-v2"),
                route("r-root", PathMatch::prefix("/"), "root"),
            ],
        ),
        vhost(
            "*.wild.test",
            None,
            vec![route("r-wild", PathMatch::prefix("/"), "wild")],
        ),
        vhost(
            "only-api.test",
            None,
            vec![route("r-o", PathMatch::prefix("/api"), "prefix-api")],
        ),
    ];
    let dir = TempDir::new("routing");
    let (gw, path) = start_with(&dir, &config).await;
    let mut c = gw.client();
    let cases = [
        ("a.test", "/api", "exact"),
        ("a.test", "/api/", "prefix-api"),
        ("a.test", "/api/x", "prefix-api"),
        ("a.test", "/api/v2", "prefix-api-v2"),
        ("a.test", "/api/v2/users?q=1", "prefix-api-v2"),
        ("a.test", "/api/v20", "prefix-api"),
        ("a.test", "/apix", "root"),
        ("a.test", "/", "root"),
        ("A.Test:8080", "/api/x", "prefix-api"),
        ("x.wild.test", "/anything", "wild"),
        ("Y.WILD.test", "/", "wild"),
    ];
    for (host, path, want) in cases {
        let r = c.get(host, path).await.unwrap();
        assert_eq!(r.upstream(), Some(want), "{host}{path}: {r:?}");
    }
    // Unknown host, two-label wildcard miss, known host without a matching
    // path: 404 with a short plain-text body.
    for (host, path) in [
        ("nope.test", "/"),
        ("a.b.wild.test", "/"),
        ("only-api.test", "/web"),
    ] {
        let r = c.get(host, path).await.unwrap();
        assert_eq!(r.status, 404, "{host}{path}");
        assert!(r.headers["content-type"].starts_with("text/plain"));
        assert!(r.upstream().is_none());
    }

    // Same gateway, now with a default backend and a `*` vhost.
    config.default_backend = Some(Backend::Pool(PoolId::new("default")));
    write_config(&path, &config);
    let live = eventually(Duration::from_secs(2), || {
        let mut c = gw.client();
        async move {
            c.get("nope.test", "/")
                .await
                .map(|r| r.upstream() == Some("default"))
                .unwrap_or(false)
        }
    })
    .await;
    assert!(live.is_some(), "default backend never went live");
    let r = c.get("only-api.test", "/web").await.unwrap();
    assert_eq!(r.upstream(), Some("default"));
    config.hosts.push(vhost(
        "*",
        None,
        vec![route("r-any", PathMatch::prefix("/"), "any-host")],
    ));
    write_config(&path, &config);
    eventually(Duration::from_secs(2), || {
        let mut c = gw.client();
        async move {
            c.get("nope.test", "/")
                .await
                .map(|r| r.upstream() == Some("any-host"))
                .unwrap_or(false)
        }
    })
    .await
    .expect("* vhost never went live");
    // Exact and wildcard still beat `*`.
    assert_eq!(c.get("a.test", "/").await.unwrap().upstream(), Some("root"));
    assert_eq!(
        c.get("q.wild.test", "/").await.unwrap().upstream(),
        Some("wild")
    );
}

async fn tally(c: &mut Client, host: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = c.get(host, "/").await.unwrap();
        assert_eq!(r.status, 200);
        *counts.entry(r.upstream().unwrap().to_string()).or_default() += 1;
    }
    counts
}

/// Upstream keep-alive: requests from several client connections, spread
/// over the gateway's two worker threads, reuse pooled upstream connections
/// instead of opening one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_across_workers() {
    let up = Upstream::start("pooled").await;
    let dir = TempDir::new("pooled");
    let (gw, _path) = start_with(&dir, &one_host_config("pooled.test", up.addr)).await;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut c = gw.client();
            tokio::spawn(async move {
                for _ in 0..250 {
                    let r = c.get("pooled.test", "/").await.unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    // One upstream connection per concurrent client (each sends its next
    // request after the last response, when the connection is back in the
    // pool). Without pooling this is 1,000; a reuse lost to a race between
    // workers (Pingora's per-thread runtimes with several workers) makes
    // it 6 to 20.
    let opened = up.connections();
    assert!(
        opened <= 5,
        "1,000 requests over 4 clients opened {opened} upstream connections"
    );
}

/// An upstream that closes its idle keep-alive connections after 100 ms
/// (as Node's 5 s default does, sooner): the pooled connection it closed is
/// noticed and dropped, never sent a request (a 502), and a live pooled
/// one is still reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_upstream_closed_are_not_used() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let used = Arc::new(AtomicU64::new(0));
    let counted = used.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                let mut first = true;
                loop {
                    // The next request's head, or close after 100 ms idle.
                    let mut line = String::new();
                    let read = conn.read_line(&mut line);
                    match tokio::time::timeout(Duration::from_millis(100), read).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                    // Counted at its first request: the gateway's TCP health
                    // checks connect and close.
                    if std::mem::take(&mut first) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    while line != "\r\n" {
                        line.clear();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if conn.get_mut().write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dir = TempDir::new("closing");
    let (gw, _path) = start_with(&dir, &one_host_config("closing.test", addr)).await;
    let mut client = gw.client();
    for round in 0..5 {
        // Back to back: the pooled connection is reused.
        for _ in 0..3 {
            let r = client.get("closing.test", "/").await.unwrap();
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
        }
        // Idle past the upstream's timeout: it closes the pooled one.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // One connection per round: reused within it, replaced after the close.
    let used = used.load(Ordering::Relaxed);
    assert_eq!(
        used, 5,
        "upstream connections that carried requests in 5 rounds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_and_weighted_balancing() {
    let (a, b, c3) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let (heavy, light) = (
        Upstream::start("heavy").await,
        Upstream::start("light").await,
    );
    let mut config = GatewayConfig::default();
    config
        .pools
        .insert(PoolId::new("even"), pool(&[(&a, 1), (&b, 1), (&c3, 1)]));
    config
        .pools
        .insert(PoolId::new("weighted"), pool(&[(&heavy, 9), (&light, 1)]));
    config.hosts = vec![
        vhost(
            "even.test",
            None,
            vec![route("even", PathMatch::prefix("/"), "even")],
        ),
        vhost(
            "weighted.test",
            None,
            vec![route("w", PathMatch::prefix("/"), "weighted")],
        ),
    ];
    let dir = TempDir::new("balance");
    let (gw, _path) = start_with(&dir, &config).await;
    let mut c = gw.client();

    let even = tally(&mut c, "even.test", 300).await;
    assert_eq!(even.len(), 3, "{even:?}");
    for n in even.values() {
        assert!((90..=110).contains(n), "uneven: {even:?}");
    }
    let weighted = tally(&mut c, "weighted.test", 2000).await;
    let heavy_share = weighted["heavy"] as f64 / 2000.0;
    assert!(
        (0.85..=0.95).contains(&heavy_share),
        "90/10 off by more than 5%: {weighted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_tenant_forwarding_hop_by_hop_431_and_redirect() {
    let up = Upstream::start("echo").await;
    let mut config = GatewayConfig::default();
    config.pools.insert(PoolId::new("echo"), pool(&[(&up, 1)]));
    config.tenants.insert(
        TenantId::new("acme"),
        Tenant {
            domains: vec![HostPattern::parse("acme.test").unwrap()],
            rate_limit: None,
            cluster_rate_limit: None,
        },
    );
    config.hosts = vec![
        vhost(
            "acme.test",
            Some("acme"),
            vec![route("acme", PathMatch::prefix("/"), "echo")],
        ),
        vhost(
            "plain.test",
            None,
            vec![route("plain", PathMatch::prefix("/"), "echo")],
        ),
    ];
    let dir = TempDir::new("headers");
    let (gw, _path) = start_with(&dir, &config).await;
    let mut c = gw.client();

    let spoof = [
        ("x-tenant-id", "evil"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("x-end-to-end", "kept"),
    ];
    let r = c
        .request("GET", "acme.test:8080", "/p?q=1", &spoof)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = r.seen();
    assert_eq!(seen["x-tenant-id"], "acme", "client value replaced");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "acme.test:8080");
    assert_eq!(seen["x-end-to-end"], "kept");
    for hop in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(!seen.contains_key(hop), "{hop} forwarded: {seen:?}");
    }
    // A host with no tenant: a client-sent X-Tenant-Id is dropped, not kept.
    let r = c.request("GET", "plain.test", "/", &spoof).await.unwrap();
    assert!(!r.seen().contains_key("x-tenant-id"), "{:?}", r.seen());

    // Oversized headers: 431, and the upstream never sees the request.
    let big = "x".repeat(40 * 1024);
    let r = c
        .request("GET", "plain.test", "/", &[("x-big", &big)])
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    let mut c = gw.client();
    let r = c.get("plain.test", "/").await.unwrap();
    assert_eq!(r.status, 200, "gateway still serves after a 431");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_host_redirects_and_empty_pool_is_503() {
    let up = Upstream::start("echo").await;
    let mut config = GatewayConfig::default();
    config.pools.insert(PoolId::new("echo"), pool(&[(&up, 1)]));
    config.pools.insert(PoolId::new("empty"), pool(&[]));
    let mut secure = vhost(
        "secure.test",
        None,
        vec![route("s", PathMatch::prefix("/"), "echo")],
    );
    secure.tls = Some(vestibule_config::model::HostTls::Unavailable(
        vestibule_config::model::Unavailable {
            reason: vestibule_config::model::TlsUnavailable::SecretNotFound,
            message: "test".into(),
        },
    ));
    config.hosts = vec![
        secure,
        vhost(
            "empty.test",
            None,
            vec![route("e", PathMatch::prefix("/"), "empty")],
        ),
    ];
    let dir = TempDir::new("redirect");
    let path = config_file(&dir, &config);
    let https = free_addr();
    let gw = Gateway::start(
        &["--config", path.to_str().unwrap()],
        &["--https", &https.to_string()],
    )
    .await;
    let mut c = gw.client();
    let r = c.get("Secure.Test:8080", "/a/b?x=1&y=2").await.unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers["location"],
        format!("https://secure.test:{}/a/b?x=1&y=2", https.port())
    );
    let r = c.get("empty.test", "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    // Every 503 has one shape: a reason, Retry-After, and the connection
    // closed (the request body may be unread).
    assert_eq!(r.body, "no healthy upstream\n");
    assert_eq!(r.headers["connection"], "close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_run() {
    let ups = [
        Upstream::start("k1").await,
        Upstream::start("k2").await,
        Upstream::start("k3").await,
    ];
    let mut config = GatewayConfig::default();
    config.pools.insert(
        PoolId::new("p"),
        pool(&[(&ups[0], 1), (&ups[1], 1), (&ups[2], 1)]),
    );
    config.hosts = vec![vhost(
        "k.test",
        None,
        vec![route("k", PathMatch::prefix("/"), "p")],
    )];
    let dir = TempDir::new("killed");
    let (gw, _path) = start_with(&dir, &config).await;
    let mut c = gw.client();
    for _ in 0..60 {
        assert_eq!(c.get("k.test", "/").await.unwrap().status, 200);
    }
    ups[1].kill();
    let mut failures = 0;
    for _ in 0..200 {
        match c.get("k.test", "/").await {
            Ok(r) if r.status == 200 => {}
            _ => failures += 1,
        }
    }
    assert!(failures <= 5, "{failures} failed requests after the kill");
    // Once the health check has seen it, nothing fails and nothing goes there.
    let down = r#"vestibule_pool_endpoints{pool="p",state="unhealthy"} 1"#;
    assert!(
        gw.metrics_show(down).await,
        "the health check never marked k2 down"
    );
    for _ in 0..200 {
        let r = c.get("k.test", "/").await.unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.upstream(), Some("k2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_added_and_removed_by_editing_the_file_is_live_within_1s() {
    let up = Upstream::start("u").await;
    let mut config = GatewayConfig::default();
    config.pools.insert(PoolId::new("u"), pool(&[(&up, 1)]));
    config.hosts = vec![vhost(
        "a.test",
        None,
        vec![route("a", PathMatch::prefix("/"), "u")],
    )];
    let dir = TempDir::new("hotswap");
    let (gw, path) = start_with(&dir, &config).await;
    assert_eq!(gw.client().get("b.test", "/").await.unwrap().status, 404);

    config.hosts.push(vhost(
        "b.test",
        None,
        vec![route("b", PathMatch::prefix("/"), "u")],
    ));
    write_config(&path, &config);
    let took = eventually(Duration::from_secs(1), || {
        let mut c = gw.client();
        async move {
            c.get("b.test", "/")
                .await
                .map(|r| r.status == 200)
                .unwrap_or(false)
        }
    })
    .await
    .expect("added host not live within 1s");
    eprintln!("host added -> live in {took:?}");

    config.hosts.retain(|h| h.host.to_string() != "b.test");
    write_config(&path, &config);
    eventually(Duration::from_secs(1), || {
        let mut c = gw.client();
        async move {
            c.get("b.test", "/")
                .await
                .map(|r| r.status == 404)
                .unwrap_or(false)
        }
    })
    .await
    .expect("removed host still served after 1s");

    // A broken file keeps the last good config and shows the error.
    std::fs::write(&path, "hosts: [this is not a config").unwrap();
    let errored = eventually(Duration::from_secs(2), || {
        let gw = &gw;
        async move { gw.admin_get("/config").await.body.contains("not valid") }
    })
    .await;
    assert!(errored.is_some(), "{}", gw.admin_get("/config").await.body);
    assert_eq!(gw.client().get("a.test", "/").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_swaps_under_load_fail_no_request() {
    let (u1, u2) = (Upstream::start("s1").await, Upstream::start("s2").await);
    let base = |i: usize| {
        let mut config = GatewayConfig::default();
        config
            .pools
            .insert(PoolId::new("stable"), pool(&[(&u1, 1), (&u2, 1)]));
        // Each swap changes something real: a host and its pool come and go.
        config
            .pools
            .insert(PoolId::new(format!("p{i}")), pool(&[(&u2, 1)]));
        config.hosts = vec![
            vhost(
                "stable.test",
                None,
                vec![route("stable", PathMatch::prefix("/"), "stable")],
            ),
            vhost(
                &format!("h{i}.test"),
                None,
                vec![route("h", PathMatch::prefix("/"), &format!("p{i}"))],
            ),
        ];
        config
    };
    let dir = TempDir::new("swaploop");
    let (gw, path) = start_with(&dir, &base(0)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed, mut c) = (stop.clone(), ok.clone(), failed.clone(), gw.client());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get("stable.test", "/").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let admin = gw.admin;
    let swaps_now = || async move {
        let body = Client::new(admin)
            .get("admin", "/config")
            .await
            .unwrap()
            .body;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["swaps"].as_u64().unwrap()
    };
    let start_swaps = swaps_now().await;
    let started = Instant::now();
    for i in 1..=200 {
        write_config(&path, &base(i));
        // Wait until this config is live, so every edit is one real swap.
        let want = start_swaps + i as u64;
        eventually(Duration::from_secs(2), || async move {
            swaps_now().await >= want
        })
        .await
        .unwrap_or_else(|| panic!("swap {i} not applied"));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("200 swaps in {:?}; {ok} requests ok", started.elapsed());
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during swaps",
        ok + failed
    );
    assert!(ok > 200, "the client barely ran: {ok}");
    assert_eq!(
        gw.client().get("h200.test", "/").await.unwrap().upstream(),
        Some("s2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_metrics() {
    let up = Upstream::start("m").await;
    let mut config = GatewayConfig::default();
    config.pools.insert(PoolId::new("m"), pool(&[(&up, 1)]));
    config.tenants.insert(
        TenantId::new("acme"),
        Tenant {
            domains: vec![HostPattern::parse("m.test").unwrap()],
            rate_limit: None,
            cluster_rate_limit: None,
        },
    );
    config.hosts = vec![vhost(
        "m.test",
        Some("acme"),
        vec![route("ingress/ns/m", PathMatch::prefix("/"), "m")],
    )];
    let dir = TempDir::new("admin");
    let (gw, _path) = start_with(&dir, &config).await;
    for _ in 0..3 {
        gw.client().get("m.test", "/secret-path").await.unwrap();
    }
    gw.client().get("unknown.test", "/").await.unwrap();
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    // Requests are counted in the logging phase, just after the response
    // went out: poll briefly instead of racing it.
    let want_4xx = r#"vestibule_requests_total{class="4xx",route="",tenant=""} 1"#;
    eventually(Duration::from_secs(2), || {
        let gw = &gw;
        async move { gw.admin_get("/metrics").await.body.contains(want_4xx) }
    })
    .await;
    let metrics = gw.admin_get("/metrics").await.body;
    assert!(
        metrics.contains(
            r#"vestibule_requests_total{class="2xx",route="ingress/ns/m",tenant="acme"} 3"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(want_4xx), "{metrics}");
    assert!(metrics.contains("vestibule_upstream_response_seconds_bucket"));
    assert!(metrics.contains("vestibule_config_last_swap_timestamp_seconds"));
    // Pool gauges appear after the first health pass.
    let healthy = r#"vestibule_pool_endpoints{pool="m",state="healthy"} 1"#;
    assert!(
        gw.metrics_show(healthy).await,
        "no pool gauges after a health pass"
    );
    // Bounded labels: never raw hosts or paths.
    assert!(!metrics.contains("secret-path") && !metrics.contains("unknown.test"));
    let cfg: serde_json::Value = serde_json::from_str(&gw.admin_get("/config").await.body).unwrap();
    assert_eq!(cfg["ready"], true);
    assert_eq!(cfg["hosts"], 1);
    assert_eq!(cfg["version"].as_str().unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_bad_config_exits_2() {
    let up = Upstream::start("t").await;
    let mut config = GatewayConfig::default();
    config.pools.insert(PoolId::new("t"), pool(&[(&up, 1)]));
    let dir = TempDir::new("exit");
    let (mut gw, _path) = start_with(&dir, &config).await;
    gw.sigterm();
    let deadline = Instant::now() + Duration::from_secs(8);
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));

    let bin = env!("CARGO_BIN_EXE_vestibule-gateway");
    let bad = dir.0.join("bad.yaml");
    std::fs::write(
        &bad,
        "hosts: [{host: a.test, routes: [{name: r, path: {prefix: /}, backend: {pool: missing}}]}]",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    let out = std::process::Command::new(bin).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no source is a usage error");
}

/// RFC 9110 §6.2: an HTTP/1.0 upstream's answer reaches an HTTP/1.1 client
/// as HTTP/1.1, with its length or (delimited by the close upstream) chunked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upstream_answers_in_the_gateways_version() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut r = BufReader::new(sock);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let with_length = line.contains("/length");
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).await.unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let answer: &[u8] = if with_length {
                    b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nsized\n"
                } else {
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close\n"
                };
                r.get_mut().write_all(answer).await.unwrap();
                r.get_mut().shutdown().await.unwrap();
            });
        }
    });
    let dir = TempDir::new("http10");
    let (gw, _) = start_with(&dir, &one_host_config("old.test", addr)).await;
    for (path, body) in [("/length", "sized\n"), ("/close", "until close\n")] {
        let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: old.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.starts_with("HTTP/1.1 200"), "{path}: {raw}");
        // Close-delimited upstream bodies go out chunked to HTTP/1.1.
        assert!(raw.contains(body), "{path}: {raw}");
    }
}

/// The access log: one line per request with its fields, written in batches
/// by the background writer (`--log-format json`), unknown hosts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_a_line_per_request() {
    let up = Upstream::start("up").await;
    let dir = TempDir::new("access-log");
    let path = config_file(&dir, &one_host_config("a.test", up.addr));
    let log = dir.0.join("gateway.log");
    let gw = Gateway::start_logging(
        &["--config", path.to_str().unwrap()],
        &["--log-format", "json"],
        &log,
    )
    .await;
    let mut client = gw.client();
    for i in 0..5 {
        let r = client.get("a.test", &format!("/p{i}")).await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(client.get("nope.test", "/x").await.unwrap().status, 404);
    let mut lines: Vec<serde_json::Value> = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "vestibule::access")
            .collect();
        if lines.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 6, "{lines:?}");
    for (i, line) in lines[..5].iter().enumerate() {
        assert_eq!(line["path"], format!("/p{i}"));
        assert_eq!(line["host"], "a.test");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["status"], 200);
        assert_eq!(line["upstream"], up.addr.to_string());
        assert_eq!(line["client"], "127.0.0.1");
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(lines[5]["status"], 404);
    assert_eq!(lines[5]["host"], "nope.test");
    assert!(lines[5].get("upstream").is_none());
}
