//! Upstream and config-source faults through real sockets: a refused
//! connect, a hang, garbage, a reset mid-response, an ExternalName that does
//! not resolve, a dead endpoint among live ones (passive ejection), and a
//! config file that turns to garbage or disappears.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{route, vhost, write_config, Client, Gateway, TempDir, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vestibule_config::model::{Endpoint, GatewayConfig, PathMatch, Pool, PoolId};
use vestibule_config::Hostname;

#[derive(Clone, Copy)]
enum Behavior {
    /// Reads the request, never answers.
    Hang,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Sends a header and half the body, then resets the connection.
    Reset,
}

async fn faulty(behavior: Behavior) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                match behavior {
                    Behavior::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
                    Behavior::Garbage => {
                        let _ = sock
                            .write_all(b"SSH-2.0-OpenSSH\r\n\x00\x01\x02garbage\r\n\r\n")
                            .await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Behavior::Reset => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf of it")
                            .await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        // SO_LINGER 0: close with a RST, like a crashed upstream.
                        #[allow(deprecated)]
                        let _ = sock.set_linger(Some(Duration::ZERO));
                    }
                }
            });
        }
    });
    addr
}

fn dead_addr() -> SocketAddr {
    // Bound then released: nothing listens there.
    common::free_addr()
}

fn eps(addrs: &[SocketAddr]) -> Pool {
    let mut v: Vec<Endpoint> = addrs
        .iter()
        .map(|&address| Endpoint { address, weight: 1 })
        .collect();
    v.sort();
    Pool::Endpoints(v)
}

fn config(pools: Vec<(&str, Pool)>) -> GatewayConfig {
    let mut hosts: Vec<_> = pools
        .iter()
        .map(|(name, _)| {
            vhost(
                &format!("{name}.test"),
                None,
                vec![route(name, PathMatch::prefix("/"), name)],
            )
        })
        .collect();
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    GatewayConfig {
        hosts,
        pools: pools
            .into_iter()
            .map(|(n, p)| (PoolId::new(n), p))
            .collect(),
        ..Default::default()
    }
    .seal()
}

async fn timed_get(c: &mut Client, host: &str) -> (Result<common::Response, String>, Duration) {
    let t = Instant::now();
    let r = c.get(host, "/").await;
    (r, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_get_bounded_answers() {
    let good = Upstream::start("good").await;
    let config = config(vec![
        ("good", eps(&[good.addr])),
        ("refuse", eps(&[dead_addr(), dead_addr()])),
        ("hang", eps(&[faulty(Behavior::Hang).await])),
        ("garbage", eps(&[faulty(Behavior::Garbage).await])),
        ("reset", eps(&[faulty(Behavior::Reset).await])),
        (
            "dns",
            Pool::ExternalName {
                host: Hostname::parse("no-such-host.invalid").unwrap(),
                port: 80,
            },
        ),
    ]);
    let dir = TempDir::new("faults");
    let file = dir.0.join("config.json");
    write_config(&file, &config);
    let gw = Gateway::start(
        &["--config", file.to_str().unwrap()],
        &[
            "--upstream-timeout",
            "500ms",
            "--connect-timeout",
            "300ms",
            "--eject-after",
            "1000",
        ],
    )
    .await;
    let mut c = gw.client();

    // Every endpoint refuses: 503 + Retry-After, after one retry on the other.
    let (r, took) = timed_get(&mut c, "refuse.test").await;
    let r = r.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.headers["retry-after"], "1");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // A hanging upstream: 504 once --upstream-timeout passes, not 60 s.
    let (r, took) = timed_get(&mut c, "hang.test").await;
    assert_eq!(r.unwrap().status, 504);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // Garbage instead of HTTP: 502.
    let (r, took) = timed_get(&mut c, "garbage.test").await;
    assert_eq!(r.unwrap().status, 502);
    assert!(took < Duration::from_secs(2));

    // Reset mid-body: the header went out, so the client sees the response
    // cut short (never a complete 200, never a hang).
    let mut raw = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: reset.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), raw.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "client left hanging after an upstream reset");
    let text = String::from_utf8_lossy(&got);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(
        body.len() < 100,
        "a truncated body was passed off as complete: {text:?}"
    );

    // An ExternalName that does not resolve: an empty pool, 503.
    let (r, _) = timed_get(&mut c, "dns.test").await;
    let r = r.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");

    // None of it touched the healthy host.
    for _ in 0..20 {
        assert_eq!(c.get("good.test", "/").await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_costs_no_client_request_and_is_ejected() {
    let live = Upstream::start("live").await;
    let dead = dead_addr();
    let config = config(vec![("p", eps(&[live.addr, dead]))]);
    let dir = TempDir::new("eject");
    let file = dir.0.join("config.json");
    write_config(&file, &config);
    let gw = Gateway::start(
        &["--config", file.to_str().unwrap()],
        &["--eject-after", "2", "--eject-backoff", "60s"],
    )
    .await;
    // Fresh connections each time, so every request makes a new decision.
    let mut failed = 0;
    for _ in 0..100 {
        let r = Client::new(gw.http).get("p.test", "/").await.unwrap();
        if r.status != 200 {
            failed += 1;
        }
        assert!(r.status != 200 || r.upstream() == Some("live"));
    }
    assert_eq!(failed, 0, "a dead endpoint cost client requests");
    // The health gauges refresh on the controller's tick.
    let ejected = common::eventually(Duration::from_secs(3), || async {
        let m = gw.admin_get("/metrics").await.body;
        m.lines()
            .find(|l| l.starts_with("vestibule_pool_endpoints{pool=\"p\",state=\"unhealthy\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            == Some(1.0)
    })
    .await;
    assert!(ejected.is_some(), "the dead endpoint was never taken out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_source_garbage_or_gone_keeps_the_last_good_config() {
    let up = Upstream::start("up").await;
    let good = config(vec![("a", eps(&[up.addr]))]);
    let dir = TempDir::new("badsource");
    let file = dir.0.join("config.json");
    write_config(&file, &good);
    let gw = Gateway::start(&["--config", file.to_str().unwrap()], &[]).await;
    let mut c = gw.client();
    assert_eq!(c.get("a.test", "/").await.unwrap().status, 200);

    for garbage in [
        &b"{ this is not: [ yaml"[..],
        b"\x00\xff\xfe binary",
        b"hosts: [{host: 'x.test', routes: [{name: r, path: {prefix: /}, backend: {pool: missing}}]}]",
        b"",
    ] {
        let seen = gw.config_errors().await;
        std::fs::write(dir.0.join("tmp"), garbage).unwrap();
        std::fs::rename(dir.0.join("tmp"), &file).unwrap();
        let errors = common::eventually(Duration::from_secs(3), || async {
            gw.config_errors().await > seen
        })
        .await;
        assert!(errors.is_some(), "garbage not noticed: {:?}", String::from_utf8_lossy(garbage));
        for _ in 0..10 {
            assert_eq!(c.get("a.test", "/").await.unwrap().status, 200);
        }
    }
    // The source disappears entirely: once the gateway has noticed (an
    // error is counted), it still serves the last good config.
    let seen = gw.config_errors().await;
    std::fs::remove_file(&file).unwrap();
    let noticed = common::eventually(Duration::from_secs(3), || async {
        gw.config_errors().await > seen
    })
    .await;
    assert!(noticed.is_some(), "removal not noticed");
    for _ in 0..10 {
        assert_eq!(c.get("a.test", "/").await.unwrap().status, 200);
    }
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    // It comes back with a new config: applied.
    write_config(&file, &config(vec![("b", eps(&[up.addr]))]));
    let applied = common::eventually(Duration::from_secs(3), || async {
        Client::new(gw.http)
            .get("b.test", "/")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(applied.is_some());
}
