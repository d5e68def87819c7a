//! ACME in operator mode, against a real CA (Debian's `pebble`): two
//! operator replicas (one leads) and two gateway replicas on the fake API
//! server. One order per domain reaches the CA, the certificate is written
//! to a `kubernetes.io/tls` Secret, the Tenant status says it is issued,
//! and both gateway replicas serve it.
#![allow(clippy::unwrap_used)]

#[path = "../../operator/tests/support/mod.rs"]
#[allow(clippy::all)]
mod op;

#[path = "../../gateway/tests/common/mod.rs"]
#[allow(clippy::all, dead_code)]
mod common;

#[path = "../../gateway/tests/pki/mod.rs"]
#[allow(clippy::all)]
mod pki;

#[path = "../../gateway/tests/pebble/mod.rs"]
#[allow(clippy::all)]
mod pebble;

use std::time::{Duration, Instant};

use common::{free_addr, Gateway, Upstream};
use op::FakeApi;
use pebble::{client, https_get, Pebble};
use serde_json::json;

const ACME_NS: &str = "vestibule";

fn orders(op: &vestibule_operator::Running) -> f64 {
    op.metrics
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"vestibule_acme_orders_total{kind="new",result="issued"}"#)?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_orders_once_stores_a_secret_and_every_gateway_serves_it() {
    let up = Upstream::start_on("app", "127.0.0.2:0").await;
    // Pebble validates HTTP-01 against replica A; both replicas must serve
    // the certificate afterwards.
    let (http_a, https_a) = (free_addr(), free_addr());
    let pebble = Pebble::start(http_a.port(), https_a.port()).await;

    let api = FakeApi::start().await;
    api.apply(op::service("saas", "app", 80));
    api.apply(op::endpoint_slice(
        "saas",
        "app",
        &["127.0.0.2"],
        i32::from(up.addr.port()),
    ));
    api.apply(json!({
        "apiVersion": "vestibule.dev/v1alpha1",
        "kind": "AcmeIssuer",
        "metadata": {"name": "pebble"},
        "spec": {
            "directoryUrl": pebble.directory,
            "caBundle": pebble.listener_ca_pem,
            "issue": "Onboarding",
            "default": true,
        },
    }));

    let operators: Vec<_> = {
        let mut v = Vec::new();
        for id in ["op-1", "op-2"] {
            let mut settings = op::test_settings(id);
            settings.translate.acme_namespace = ACME_NS.into();
            settings.acme_propagation = Duration::from_millis(1500);
            v.push(op::start(&api, settings).await);
        }
        v
    };
    let token = operators[0].config_addr;
    let token_file = op::test_settings("reader").token_file;
    let url = format!("http://{token}");
    let source = [
        "--operator",
        url.as_str(),
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    let (a_http, a_https) = (http_a.to_string(), https_a.to_string());
    let gw_a = Gateway::start(&source, &["--http", &a_http, "--https", &a_https]).await;
    let url_b = format!("http://{}", operators[1].config_addr);
    let source_b = [
        "--operator",
        url_b.as_str(),
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    let gw_b = Gateway::start(&source_b, &[]).await;

    // The Tenant onboards with tls.acme.
    let created = Instant::now();
    let mut tenant = op::tenant("shop", &["shop.customer.test"], &["saas"]);
    tenant["spec"]["backend"] =
        json!({"namespace": "saas", "services": [{"name": "app", "port": 80}]});
    tenant["spec"]["tls"] = json!({"acme": {}});
    api.apply(tenant);

    let config = client(&[&pebble.root_pem]);
    for (name, gw) in [("A", &gw_a), ("B", &gw_b)] {
        wait_served(gw, &config, "shop.customer.test", created)
            .await
            .unwrap_or_else(|last| {
                panic!(
                    "replica {name} never served the ACME certificate: {last}\n{}",
                    pebble.log()
                )
            });
    }
    eprintln!(
        "operator mode: Tenant created -> both replicas serve the ACME certificate in {} ms",
        created.elapsed().as_millis()
    );

    // One order in all, by the leader; the certificate is in its Secret.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(orders(&operators[0]) + orders(&operators[1]), 1.0);
    let secret = api
        .get("Secret", Some(ACME_NS), "acme.shop.customer.test")
        .expect("the certificate Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["labels"]["vestibule.dev/tenant"], "shop");
    let annotations = &secret["metadata"]["annotations"];
    for key in [
        "vestibule.dev/acme-not-after",
        "vestibule.dev/acme-renew-at",
        "vestibule.dev/acme-order",
    ] {
        assert!(annotations[key].is_string(), "{key}: {secret}");
    }
    assert!(api
        .list("Secret")
        .iter()
        .any(|s| s["metadata"]["labels"]["vestibule.dev/acme-account"] == "true"));

    // The Tenant's status says so, per domain.
    let mut status = json!(null);
    for _ in 0..60 {
        status = api.get("Tenant", None, "shop").unwrap()["status"].clone();
        if status["certificates"][0]["state"] == "Issued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["certificates"][0]["state"], "Issued", "{status}");
    assert!(
        status["certificates"][0]["notAfter"].is_string(),
        "{status}"
    );

    for o in operators {
        o.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_in_operator_mode_reaches_the_leader_through_any_replica() {
    let up = Upstream::start_on("app", "127.0.0.2:0").await;
    let (http_a, https_a) = (free_addr(), free_addr());
    let pebble = Pebble::start(http_a.port(), https_a.port()).await;
    let api = FakeApi::start().await;
    api.apply(op::service("saas", "app", 80));
    api.apply(op::endpoint_slice(
        "saas",
        "app",
        &["127.0.0.2"],
        i32::from(up.addr.port()),
    ));
    api.apply(json!({
        "apiVersion": "vestibule.dev/v1alpha1",
        "kind": "AcmeIssuer",
        "metadata": {"name": "pebble"},
        "spec": {"directoryUrl": pebble.directory, "caBundle": pebble.listener_ca_pem, "issue": "OnDemand", "default": true},
    }));
    let mut operators = Vec::new();
    for id in ["op-1", "op-2"] {
        let mut settings = op::test_settings(id);
        settings.translate.acme_namespace = ACME_NS.into();
        settings.acme_propagation = Duration::from_millis(1500);
        operators.push(op::start(&api, settings).await);
    }
    let started = Instant::now();
    while !operators.iter().any(|o| *o.leader.borrow()) {
        assert!(started.elapsed() < Duration::from_secs(10), "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = operators.iter().position(|o| *o.leader.borrow()).unwrap();
    let follower = 1 - leader;
    let token_file = op::test_settings("reader").token_file;
    let token = token_file.to_str().unwrap();
    let url = |i: usize| format!("http://{}", operators[i].config_addr);
    let (a_url, b_url) = (url(leader), url(follower));
    let (a_http, a_https) = (http_a.to_string(), https_a.to_string());
    let gw_a = Gateway::start(
        &["--operator", &a_url, "--token-file", token],
        &["--http", &a_http, "--https", &a_https],
    )
    .await;
    // Replica B talks to the operator that does not lead.
    let gw_b = Gateway::start(&["--operator", &b_url, "--token-file", token], &[]).await;

    let mut tenant = op::tenant("od", &["od.customer.test"], &["saas"]);
    tenant["spec"]["backend"] =
        json!({"namespace": "saas", "services": [{"name": "app", "port": 80}]});
    tenant["spec"]["tls"] = json!({"acme": {}});
    api.apply(tenant);
    // On demand: nothing is ordered until a handshake asks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(orders(&operators[0]) + orders(&operators[1]), 0.0);
    assert!(api
        .get("Secret", Some(ACME_NS), "acme.od.customer.test")
        .is_none());

    // A handshake on replica B (unrecognized_name meanwhile) reaches the
    // leader through the non-leading operator; both replicas then serve.
    let config = client(&[&pebble.root_pem]);
    let asked = Instant::now();
    assert!(https_get(gw_b.https, &config, "od.customer.test")
        .await
        .is_err());
    for (name, gw) in [("B", &gw_b), ("A", &gw_a)] {
        wait_served(gw, &config, "od.customer.test", asked)
            .await
            .unwrap_or_else(|last| {
                panic!(
                    "replica {name} never served the on-demand certificate: {last}\n{}",
                    pebble.log()
                )
            });
    }
    eprintln!(
        "operator mode, on demand: first handshake -> both replicas serve in {} ms",
        asked.elapsed().as_millis()
    );
    assert_eq!(orders(&operators[leader]), 1.0);
    assert_eq!(orders(&operators[follower]), 0.0);
    for o in operators {
        o.shutdown().await.unwrap();
    }
}

/// Waits up to 60 s from `since` until `gw` serves `host` from the app over
/// verified HTTPS; `Err` is the last answer.
async fn wait_served(
    gw: &Gateway,
    config: &std::sync::Arc<rustls::ClientConfig>,
    host: &str,
    since: Instant,
) -> Result<(), String> {
    let mut last = String::new();
    while since.elapsed() <= Duration::from_secs(60) {
        match https_get(gw.https, config, host).await {
            Ok(r) if r.status == 200 && r.upstream() == Some("app") => return Ok(()),
            Ok(r) => last = format!("{r:?}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}
