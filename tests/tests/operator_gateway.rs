//! The whole control path on loopback: a fake Kubernetes API server, the
//! real operator (in process, through a real `kube::Client`), the real
//! gateway binary long-polling it, and real upstream servers.

#[path = "../../operator/tests/support/mod.rs"]
#[allow(clippy::all)]
mod op;

#[path = "../../gateway/tests/common/mod.rs"]
#[allow(clippy::all)]
mod gw;

mod support;

use std::time::{Duration, Instant};

use gw::{Gateway, TempDir, Upstream};
use op::FakeApi;

/// Requests `host` until `check` holds on the answering upstream, or `within` passes.
async fn served_by(
    gateway: &Gateway,
    host: &str,
    want: &str,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut client = gateway.client();
    while start.elapsed() < within {
        if let Ok(r) = client.get(host, "/").await {
            if r.status == 200 && r.upstream() == Some(want) {
                return Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_edit_flows_from_api_server_to_gateway_and_survives_operator_loss() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let api = FakeApi::start().await;
    api.apply(op::ingress_class());
    for (name, up) in [("blue", &blue), ("green", &green)] {
        api.apply(op::service("shop", name, 80));
        api.apply(op::endpoint_slice(
            "shop",
            name,
            &["127.0.0.1"],
            i32::from(up.addr.port()),
        ));
    }
    api.apply(op::ingress("shop", "web", "shop.example.com", "blue", 80));

    let support::Scene {
        operator,
        gateway,
        state,
        flags,
    } = support::operator_and_gateway(&api, &[]).await;
    let source = support::args(&flags);

    // The first config arrived through the operator.
    assert!(
        served_by(&gateway, "shop.example.com", "blue", Duration::from_secs(5))
            .await
            .is_some(),
        "the gateway never served the Ingress through the operator"
    );

    // Editing the Ingress is live within 1 s (debounce + long-poll + swap).
    let edited = Instant::now();
    api.apply(op::ingress("shop", "web", "shop.example.com", "green", 80));
    let took = served_by(
        &gateway,
        "shop.example.com",
        "green",
        Duration::from_secs(5),
    )
    .await
    .expect("the edit never reached the gateway");
    let total = edited.elapsed();
    eprintln!("ingress edit -> served by the gateway in {total:?} (poll saw it after {took:?})");
    assert!(total < Duration::from_secs(1), "edit took {total:?}");

    // The operator goes away: the gateway keeps serving its config.
    operator.shutdown().await.expect("operator shutdown");
    let mut client = gateway.client();
    for _ in 0..20 {
        let r = client.get("shop.example.com", "/").await.expect("request");
        assert_eq!((r.status, r.upstream()), (200, Some("green")));
    }
    assert!(state.0.join("last-config.json").exists());

    // A restart with the operator still down starts from the persisted config.
    drop(gateway);
    let restarted = Gateway::start(&source, &[]).await;
    let r = restarted
        .client()
        .get("shop.example.com", "/")
        .await
        .expect("request after restart");
    assert_eq!((r.status, r.upstream()), (200, Some("green")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_with_a_bad_token_stays_unready_and_says_why() {
    let api = FakeApi::start().await;
    api.apply(op::ingress_class());
    let operator = op::start(&api, op::test_settings("op-2")).await;
    let dir = TempDir::new("badtoken");
    let bad = dir.0.join("token");
    std::fs::write(&bad, "not-the-token\n").expect("write token");
    let url = format!("http://{}", operator.config_addr);

    let http = gw::free_addr();
    let admin = gw::free_addr();
    let mut child = std::process::Command::new(gw::gateway_bin())
        .args([
            "--operator",
            &url,
            "--token-file",
            bad.to_str().expect("utf8"),
        ])
        .args(["--http", &http.to_string(), "--admin", &admin.to_string()])
        .args(["--https", &gw::free_addr().to_string()])
        .env("RUST_LOG", "error")
        .spawn()
        .expect("spawn gateway");
    let mut client = gw::Client::new(admin);
    let mut seen = None;
    for _ in 0..100 {
        if let Ok(r) = client.get("admin", "/config").await {
            if r.body.contains("401") {
                seen = Some(r);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = seen.expect("/config never reported the 401");
    assert!(config.body.contains("token"), "{}", config.body);
    let ready = client.get("admin", "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 503);
    let _ = child.kill();
    let _ = child.wait();
    operator.shutdown().await.expect("shutdown");
}

/// At 1,000 hosts a new host reaches the gateway as a delta (no whole
/// config is sent again), and a gateway restarted while hosts were added
/// starts from its persisted config and journal, then catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_more_host_of_a_thousand_travels_as_a_delta_and_a_restart_catches_up() {
    let up = Upstream::start("up").await;
    let api = FakeApi::start().await;
    support::hosts_on(&api, &up, 1000);
    let support::Scene {
        operator,
        gateway,
        state,
        flags,
    } = support::operator_and_gateway(&api, &[]).await;
    let source = support::args(&flags);
    let second = Duration::from_secs(10);
    assert!(served_by(&gateway, "h999.example.com", "up", second)
        .await
        .is_some());

    let (wholes, deltas) = (
        operator.metrics.configs_served.get(),
        operator.metrics.deltas_served.get(),
    );
    api.apply(op::ingress("shop", "new-1", "new1.example.com", "web", 80));
    let took = served_by(&gateway, "new1.example.com", "up", Duration::from_secs(2)).await;
    assert!(took.is_some(), "the new host never went live");
    assert_eq!(
        operator.metrics.configs_served.get(),
        wholes,
        "a whole config was sent"
    );
    assert!(operator.metrics.deltas_served.get() > deltas);
    assert!(
        state.0.join("last-config.deltas").exists(),
        "the delta was not journaled"
    );
    // They hold private keys: this user's only.
    #[cfg(unix)]
    for file in ["last-config.json", "last-config.deltas"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.0.join(file))
            .expect(file)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // Restarted while a host was added: the persisted config and journal
    // serve at once, the operator's delta brings the rest.
    drop(gateway);
    api.apply(op::ingress("shop", "new-2", "new2.example.com", "web", 80));
    let restarted = Gateway::start(&source, &[]).await;
    assert!(
        served_by(&restarted, "new1.example.com", "up", Duration::from_secs(2))
            .await
            .is_some()
    );
    assert!(
        served_by(&restarted, "new2.example.com", "up", Duration::from_secs(3))
            .await
            .is_some()
    );
    operator.shutdown().await.expect("operator shutdown");
}
