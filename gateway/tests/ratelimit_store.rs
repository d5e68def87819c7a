//! Cluster-wide tenant rate limits on a real Redis (Debian's
//! `redis-server`, started on a free loopback port with no persistence;
//! `.ci/run` installs it): three gateway processes share one tenant's limit
//! of 100 requests/s under uneven traffic, fall back to their per-replica
//! limits within 100 ms when Redis dies and return to the global limit
//! within 2 s when it is back, and a slow Redis adds nothing to requests.
#![allow(clippy::unwrap_used)]

mod common;
mod pki;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A `redis-server` on a loopback port, without persistence.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    async fn start() -> Redis {
        let mut r = Redis {
            port: free_addr().port(),
            child: None,
        };
        r.restart().await;
        r
    }

    /// A store on TLS only (certificate from `pki`), requiring `password`.
    async fn start_tls(pki: &pki::Pki, password: &str, dir: &Path) -> Redis {
        let cert = pki.issue(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let (crt, key, ca) = (
            dir.join("redis.crt"),
            dir.join("redis.key"),
            dir.join("ca.crt"),
        );
        std::fs::write(&crt, &cert.cert_pem).unwrap();
        std::fs::write(&key, &cert.key_pem).unwrap();
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let port = free_addr().port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                crt.to_str().unwrap(),
                "--tls-key-file",
                key.to_str().unwrap(),
            ])
            .args([
                "--tls-ca-cert-file",
                ca.to_str().unwrap(),
                "--tls-auth-clients",
                "no",
            ])
            .args([
                "--requirepass",
                password,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..200 {
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Redis {
            port,
            child: Some(child),
        }
    }

    async fn restart(&mut self) {
        assert!(
            Command::new("redis-server")
                .arg("--version")
                .output()
                .is_ok(),
            "redis-server is not installed (apt-get install redis-server; .ci/run does it)"
        );
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..200 {
            if TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not listen on {addr}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Tenant `shop` (100 requests/s, burst 10) served by `up`.
fn manifests(dir: &Path, up: &Upstream) {
    let text = format!(
        r#"{app}
---
apiVersion: vestibule.dev/v1alpha1
kind: Tenant
metadata: {{name: shop}}
spec:
  domains: [shop.test]
  backend: {{namespace: saas, services: [{{name: app, port: 80}}]}}
  rateLimit: {{requestsPerSecond: 100, burst: 10}}
"#,
        app = app_manifests(up),
    );
    std::fs::write(dir.join("shop.yaml"), text).unwrap();
}

/// Gateways on one manifests directory, sharing the store at `url`.
async fn gateways(n: usize, url: &str, dir: &TempDir) -> Vec<Gateway> {
    let mut gws = Vec::new();
    for _ in 0..n {
        let gw = Gateway::start(
            &["--manifests", dir.0.to_str().unwrap()],
            &["--rate-limit-store", url, "--threads", "1"],
        )
        .await;
        gws.push(gw);
    }
    gws
}

/// One answered request: when it was sent (since the start), to which
/// gateway, its status, and how long it took.
#[derive(Clone, Copy, Debug)]
struct Sent {
    at: Duration,
    gateway: usize,
    status: u16,
    took: Duration,
}

/// Sends `rps` requests/s for `length`, spread over `gws` by `shares`
/// (percent), from 20 paced keep-alive clients.
async fn drive(gws: &[SocketAddr], shares: &[usize], rps: u32, length: Duration) -> Vec<Sent> {
    const WORKERS: usize = 20;
    let every = Duration::from_secs_f64(WORKERS as f64 / f64::from(rps));
    let start = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let mut worker = 0;
    for (g, share) in shares.iter().enumerate() {
        for _ in 0..(share * WORKERS / 100) {
            let (log, addr) = (log.clone(), gws[g]);
            let offset = every.mul_f64(worker as f64 / WORKERS as f64);
            worker += 1;
            tasks.push(tokio::spawn(async move {
                let mut client = Client::new(addr);
                let mut next = start + offset;
                while next < start + length {
                    tokio::time::sleep_until(next.into()).await;
                    let sent = Instant::now();
                    let status = match client.get("shop.test", "/").await {
                        Ok(r) => r.status,
                        Err(_) => 0,
                    };
                    log.lock().unwrap().push(Sent {
                        at: sent - start,
                        gateway: g,
                        status,
                        took: sent.elapsed(),
                    });
                    next += every;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut log = log.lock().unwrap().clone();
    log.sort_by_key(|s| s.at);
    log
}

/// 200s sent within [from, to).
fn admitted(log: &[Sent], from: Duration, to: Duration) -> usize {
    log.iter()
        .filter(|s| s.status == 200 && s.at >= from && s.at < to)
        .count()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_one_limit_under_uneven_traffic() {
    let redis = Redis::start().await;
    let up = Upstream::start("app").await;
    let dir = TempDir::new("rl-shared");
    manifests(&dir.0, &up);
    let gws = gateways(3, &redis.url(), &dir).await;
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.http).collect();
    // The store answers before the load starts.
    for g in &gws {
        assert!(g.metrics_show("vestibule_rate_limit_store_up 1").await);
    }
    let log = drive(&addrs, &[80, 15, 5], 1000, secs(10.0)).await;
    let failed = log
        .iter()
        .filter(|s| s.status != 200 && s.status != 429)
        .count();
    assert_eq!(failed, 0, "requests neither served nor limited");
    let per_second: Vec<usize> = (1..10)
        .map(|s| admitted(&log, secs(s as f64), secs(s as f64 + 1.0)))
        .collect();
    eprintln!(
        "global limit 100/s, 1,000 requests/s over 3 gateways (80/15/5%): admitted per second {per_second:?}"
    );
    for (i, n) in per_second.iter().enumerate() {
        assert!(
            (90..=110).contains(n),
            "second {}: {n} admitted ({per_second:?})",
            i + 1
        );
    }
    // Every gateway served some: the limit is the tenant's, not a replica's.
    for g in 0..3 {
        assert!(
            log.iter().any(|s| s.gateway == g && s.status == 200),
            "gateway {g} served none"
        );
    }
    // The 429s say which policy applied.
    let r = Client::new(addrs[0]).get("shop.test", "/").await.unwrap();
    if r.status == 429 {
        assert_eq!(
            r.headers.get("ratelimit-policy").map(String::as_str),
            Some("\"tenant\";q=100;w=1")
        );
        assert!(r.headers.contains_key("retry-after"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_store_falls_back_at_once_and_the_global_limit_returns() {
    let mut redis = Redis::start().await;
    let up = Upstream::start("app").await;
    let dir = TempDir::new("rl-failover");
    manifests(&dir.0, &up);
    let gws = gateways(3, &redis.url(), &dir).await;
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.http).collect();
    for g in &gws {
        assert!(g.metrics_show("vestibule_rate_limit_store_up 1").await);
    }
    let load = tokio::spawn(drive_owned(addrs.clone(), secs(7.0)));
    tokio::time::sleep(secs(2.0)).await;
    let killed = Instant::now();
    redis.kill();
    tokio::time::sleep(secs(2.0)).await;
    let restarted = Instant::now();
    redis.restart().await;
    let log = load.await.unwrap();
    // The load started about when the sleep did: times on its clock.
    let start = killed - secs(2.0);
    let (kill_at, back_at) = (killed - start, restarted - start);

    // Under the global limit before the kill.
    let before = admitted(&log, secs(1.0), secs(2.0));
    assert!((85..=115).contains(&before), "before: {before}");
    // No 100 ms window after the kill without a served request, and the
    // fallback (each replica's own 100/s: ~250/s for this spread) is on.
    for w in 0..19 {
        let from = kill_at + Duration::from_millis(100 * w);
        let n = admitted(&log, from, from + Duration::from_millis(100));
        assert!(
            n > 0,
            "no request served {}..{} ms after the kill",
            100 * w,
            100 * (w + 1)
        );
    }
    let fallback = admitted(&log, kill_at + secs(0.5), kill_at + secs(1.5));
    assert!(fallback >= 180, "fallback admitted {fallback}/s");
    // Within 2 s of the restart the global limit holds again.
    let after = admitted(&log, back_at + secs(2.0), back_at + secs(3.0));
    eprintln!("store killed and restarted: {before}/s before, {fallback}/s on fallback, {after}/s 2 s after the restart");
    assert!((85..=115).contains(&after), "after the restart: {after}");
    for g in &gws {
        assert!(
            g.metrics_show("vestibule_rate_limit_store_fallbacks_total 1")
                .await
        );
    }
}

async fn drive_owned(addrs: Vec<SocketAddr>, length: Duration) -> Vec<Sent> {
    drive(&addrs, &[80, 15, 5], 1000, length).await
}

/// A proxy to `to` that holds every chunk for `delay` in each direction.
async fn slow_proxy(to: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        tokio::time::sleep(delay).await;
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = sr.read(&mut buf).await {
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_store_adds_nothing_to_requests() {
    let redis = Redis::start().await;
    let slow = slow_proxy(
        SocketAddr::from(([127, 0, 0, 1], redis.port)),
        Duration::from_millis(50),
    )
    .await;
    let up = Upstream::start("app").await;
    let dir = TempDir::new("rl-slow");
    manifests(&dir.0, &up);
    let gws = gateways(1, &format!("redis://{slow}"), &dir).await;
    assert!(gws[0].metrics_show("vestibule_rate_limit_store_up 1").await);
    let log = drive(&[gws[0].http], &[100], 300, secs(3.0)).await;
    let mut took: Vec<Duration> = log.iter().map(|s| s.took).collect();
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    let max = took[took.len() - 1];
    eprintln!(
        "store 50 ms away: {} requests, p99 {p99:?}, max {max:?}",
        took.len()
    );
    // Nothing waits on the store: every request is far quicker than it.
    assert!(max < Duration::from_millis(40), "max {max:?}");
    assert!(p99 < Duration::from_millis(15), "p99 {p99:?}");
    // And the limit still holds, from leases renewed ahead of need.
    assert!(log.iter().any(|s| s.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_store_with_a_password_from_a_file() {
    let dir = TempDir::new("rl-tls");
    let pki = pki::Pki::new();
    let redis = Redis::start_tls(&pki, "s3cret-pass", &dir.0).await;
    let up = Upstream::start("app").await;
    manifests(&dir.0, &up);
    let (ca, good, bad) = (
        dir.0.join("ca.crt"),
        dir.0.join("pass"),
        dir.0.join("wrong"),
    );
    std::fs::write(&good, "s3cret-pass\n").unwrap();
    std::fs::write(&bad, "nope\n").unwrap();
    let url = format!("rediss://localhost:{}", redis.port);
    let start = |password: &Path| {
        let args = [
            "--rate-limit-store".to_string(),
            url.clone(),
            "--rate-limit-store-ca".into(),
            ca.to_string_lossy().into_owned(),
            "--rate-limit-store-password-file".into(),
            password.to_string_lossy().into_owned(),
            "--rate-limit-store-prefix".into(),
            "test:rl:".into(),
        ];
        let manifests = dir.0.to_string_lossy().into_owned();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Gateway::start(&["--manifests", &manifests], &args).await
        }
    };
    // TLS verified against the CA file, AUTH from the file: the store answers.
    let gw = start(&good).await;
    assert!(gw.metrics_show("vestibule_rate_limit_store_up 1").await);
    // Over the limit: the cluster-wide policy answers.
    let mut client = gw.client();
    let mut refused = None;
    for _ in 0..40 {
        let r = client.get("shop.test", "/").await.unwrap();
        if r.status == 429 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("no 429 within 40 requests of a 10-burst limit");
    assert_eq!(
        r.headers.get("ratelimit-policy").map(String::as_str),
        Some("\"tenant\";q=100;w=1")
    );
    // A wrong password: the store is down for this gateway (its rounds
    // fail), which serves on its per-replica limit.
    let wrong = start(&bad).await;
    let failing = eventually(Duration::from_secs(3), || async {
        let m = wrong.admin_get("/metrics").await.body;
        m.lines()
            .find_map(|l| l.strip_prefix("vestibule_rate_limit_store_failures_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    assert!(
        failing.is_some(),
        "rounds with a wrong password did not fail"
    );
    assert!(wrong.metrics_show("vestibule_rate_limit_store_up 0").await);
    assert_eq!(
        wrong.client().get("shop.test", "/").await.unwrap().status,
        200
    );
}
