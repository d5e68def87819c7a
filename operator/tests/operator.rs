//! The operator run in process against the fake API server through a real
//! `kube::Client`: watches, debounced translation, the config server's wire
//! contract, status write-back, Events and leader election.

mod support;

use std::io::Read;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;
use support::*;

/// A cluster with one app: class, Service, EndpointSlice, Ingress.
fn seed(api: &FakeApi) {
    api.apply(ingress_class());
    api.apply(service("shop", "web", 80));
    api.apply(endpoint_slice("shop", "web", &["10.0.0.1"], 8080));
    api.apply(ingress("shop", "shop", "shop.example.com", "web", 80));
}

async fn first_config(addr: std::net::SocketAddr) -> HttpResponse {
    eventually(Duration::from_secs(5), "the first config", || async {
        let r = get_config(addr, None).await;
        (r.status == StatusCode::OK).then_some(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_ingress_reaches_a_long_polling_gateway_within_a_second() {
    let api = FakeApi::start().await;
    seed(&api);
    let mut settings = test_settings("op-a");
    settings.server.long_poll = Duration::from_secs(5);
    let op = start(&api, settings).await;
    let first = first_config(op.config_addr).await;
    let v1 = first.version().expect("version header");
    assert_eq!(hosts(&first.json()), vec!["shop.example.com"]);
    assert_eq!(first.json()["version"], json!(v1));

    let addr = op.config_addr;
    let after = v1.clone();
    let poll = tokio::spawn(async move { get_config(addr, Some(&after)).await });
    // The long-poll parks and waits for a change.
    eventually(Duration::from_secs(2), "the long-poll parked", || async {
        (op.metrics.gateways_waiting.get() == 1).then_some(())
    })
    .await;
    assert!(!poll.is_finished(), "the long-poll must wait for a change");

    let changed_at = Instant::now();
    api.apply(ingress("shop", "blog", "blog.example.com", "web", 80));
    let res = poll.await.expect("poll task");
    let latency = changed_at.elapsed();
    assert_eq!(res.status, StatusCode::OK);
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    let v2 = res.version().expect("version");
    assert_ne!(v2, v1);
    let mut h = hosts(&res.json());
    h.sort();
    assert_eq!(h, vec!["blog.example.com", "shop.example.com"]);
    op.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slice_change_updates_the_pool() {
    let api = FakeApi::start().await;
    seed(&api);
    let mut settings = test_settings("op-a");
    settings.server.long_poll = Duration::from_secs(5);
    let op = start(&api, settings).await;
    let first = first_config(op.config_addr).await;
    assert_eq!(
        pool_addresses(&first.json(), "shop/web:80"),
        vec!["10.0.0.1:8080"]
    );

    let v1 = first.version().expect("version");
    api.apply(endpoint_slice(
        "shop",
        "web",
        &["10.0.0.1", "10.0.0.2"],
        8080,
    ));
    let res = get_config(op.config_addr, Some(&v1)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        pool_addresses(&res.json(), "shop/web:80"),
        vec!["10.0.0.1:8080", "10.0.0.2:8080"]
    );

    // A change that does not alter the output publishes no new version.
    let v2 = res.version().expect("version");
    let published = op.metrics.versions_published.get();
    let mut unrelated = service("shop", "unused", 81);
    api.apply(unrelated.clone());
    unrelated["metadata"]["labels"] = json!({"touched": "yes"});
    api.apply(unrelated);
    let res = get_config(op.config_addr, Some(&v2)).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert_eq!(op.metrics.versions_published.get(), published);
    op.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_annotations_are_never_ignored_in_silence() {
    let api = FakeApi::start().await;
    seed(&api);
    api.apply(service("shop", "web", 80));
    api.apply(endpoint_slice("shop", "web", &["10.0.0.1"], 8080));
    let mut ing = ingress("shop", "migrated", "shop.example.com", "web", 80);
    ing["metadata"]["annotations"] = json!({
        "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: 1\";",
        "nginx.ingress.kubernetes.io/server-alias": "www.shop.example.com",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "forever",
        "nginx.ingress.kubernetes.io/proxy-body-size": "8m",
    });
    api.apply(ing);
    let op = start(&api, test_settings("op-a")).await;
    let config = first_config(op.config_addr).await.json();
    // Served, with what is supported applied.
    let shop = config["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == "shop.example.com"))
        .expect("shop vhost");
    assert_eq!(shop["routes"][0]["filters"][0]["maxBody"], 8 << 20);
    // Each problem is a Warning Event on the Ingress, naming the annotation.
    let events = eventually(
        Duration::from_secs(5),
        "three annotation Events",
        || async {
            let evs: Vec<_> = api
                .list("Event")
                .into_iter()
                .filter(|e| e["regarding"]["name"] == "migrated")
                .collect();
            (evs.len() >= 3).then_some(evs)
        },
    )
    .await;
    for (reason, names) in [
        ("SnippetRefused", "configuration-snippet"),
        ("UnsupportedAnnotation", "server-alias"),
        ("InvalidAnnotation", "proxy-read-timeout"),
    ] {
        let e = events
            .iter()
            .find(|e| e["reason"] == reason)
            .unwrap_or_else(|| panic!("no {reason} Event in {events:?}"));
        assert_eq!(e["type"], "Warning");
        assert!(e["note"].as_str().unwrap_or("").contains(names), "{e}");
    }
    op.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hijack_attempt_yields_one_event_and_no_route() {
    let api = FakeApi::start().await;
    seed(&api);
    api.apply(tenant("acme", &["acme.example.com"], &["acme"]));
    api.apply(service("evil", "steal", 80));
    api.apply(endpoint_slice("evil", "steal", &["10.6.6.6"], 8080));
    api.apply(ingress("evil", "hijack", "acme.example.com", "steal", 80));
    let op = start(&api, test_settings("op-a")).await;
    let config = first_config(op.config_addr).await.json();

    // The tenant's domain has a vhost (so nothing broader catches it) but
    // no route from the foreign namespace, and the pool is not served.
    let acme = config["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == "acme.example.com"))
        .expect("acme vhost");
    assert_eq!(acme["routes"], json!([]));
    assert!(config["pools"].get("evil/steal:80").is_none());

    let events = eventually(Duration::from_secs(5), "a HostNotAllowed Event", || async {
        let evs: Vec<_> = api
            .list("Event")
            .into_iter()
            .filter(|e| e["reason"] == "HostNotAllowed")
            .collect();
        (!evs.is_empty()).then_some(evs)
    })
    .await;
    let e = &events[0];
    assert_eq!(e["metadata"]["namespace"], "evil");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["regarding"]["kind"], "Ingress");
    assert_eq!(e["regarding"]["name"], "hijack");
    assert_eq!(e["reportingController"], "vestibule.dev/operator");
    assert!(e["note"].as_str().unwrap_or("").contains("acme"), "{e}");

    // One Event per distinct problem: the dropped rule, and the Ingress
    // serving nothing at all.
    let reasons = |api: &FakeApi| {
        let mut r: Vec<String> = api
            .list("Event")
            .into_iter()
            .filter(|e| e["regarding"]["name"] == "hijack")
            .filter_map(|e| e["reason"].as_str().map(String::from))
            .collect();
        r.sort();
        r
    };
    eventually(Duration::from_secs(2), "both Events", || async {
        (reasons(&api).len() == 2).then_some(())
    })
    .await;
    assert_eq!(reasons(&api), vec!["HostNotAllowed", "NoValidRules"]);
    // More translations (unrelated changes) emit no more Events.
    for i in 0..3 {
        apply_and_settle(&api, &op, service("shop", &format!("other-{i}"), 80)).await;
    }
    assert_eq!(reasons(&api), vec!["HostNotAllowed", "NoValidRules"]);
    assert!(api
        .list("Event")
        .iter()
        .all(|e| e["regarding"]["name"] == "hijack"));
    op.shutdown().await.expect("clean shutdown");
}

/// A LoadBalancer Service to publish, and a Tenant with an Ingress of its own.
fn seed_statuses(api: &FakeApi) {
    api.apply(load_balancer_service("vestibule", "gateway", "203.0.113.7"));
    api.apply(tenant("acme", &["acme.example.com"], &["acme"]));
    api.apply(service("acme", "app", 80));
    api.apply(endpoint_slice("acme", "app", &["10.1.0.1"], 8080));
    api.apply(ingress("acme", "site", "acme.example.com", "app", 80));
}

/// Waits for the statuses [`seed_statuses`] calls for: the published
/// address on the Ingress, the route count on the Tenant.
async fn statuses_written(api: &FakeApi, within: Duration) {
    eventually(within, "Ingress and Tenant statuses", || async {
        let ing = api.get("Ingress", Some("shop"), "shop")?;
        let tn = api.get("Tenant", None, "acme")?;
        let ip = ing["status"]["loadBalancer"]["ingress"][0]["ip"].as_str()? == "203.0.113.7";
        let routes = tn["status"]["routes"].as_u64()? == 1;
        (ip && routes).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_status_writes_are_retried_without_another_change() {
    let api = FakeApi::start().await;
    seed(&api);
    seed_statuses(&api);
    // The API server fails the first rounds of status writes; nothing in
    // the cluster changes afterwards.
    api.fail_status_patches(9);
    let mut settings = test_settings("op-a");
    settings.publish_service = Some("vestibule/gateway".parse().expect("ns/name"));
    let _op = start(&api, settings).await;
    statuses_written(&api, Duration::from_secs(10)).await;
    assert!(
        api.count(Method::PATCH, "/status") > 9,
        "{:?}",
        api.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_written_once_and_only_on_change() {
    let api = FakeApi::start().await;
    seed(&api);
    seed_statuses(&api);
    let mut settings = test_settings("op-a");
    settings.publish_service = Some("vestibule/gateway".parse().expect("ns/name"));
    let op = start(&api, settings).await;

    statuses_written(&api, Duration::from_secs(5)).await;
    let tn = api.get("Tenant", None, "acme").expect("tenant");
    let conditions = tn["status"]["conditions"].as_array().expect("conditions");
    let accepted = conditions
        .iter()
        .find(|c| c["type"] == "Accepted")
        .expect("Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 1);
    assert!(accepted["lastTransitionTime"].is_string());
    let transition = accepted["lastTransitionTime"].clone();

    // Steady state: several translations later, no further writes.
    let writes = || api.count(Method::PATCH, "/status");
    let after_first = writes();
    assert_eq!(
        after_first,
        3,
        "two Ingresses and one Tenant: {:?}",
        api.requests()
    );
    for i in 0..4 {
        apply_and_settle(&api, &op, service("shop", &format!("noise-{i}"), 80)).await;
    }
    assert_eq!(writes(), after_first, "status writes in a loop");

    // A spec change moves observedGeneration (one write), keeping
    // lastTransitionTime since no condition flipped.
    api.apply(json!({
        "apiVersion": "vestibule.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "acme"},
        "spec": {"domains": ["acme.example.com"], "namespaces": ["acme", "shop"]},
    }));
    let tn = eventually(Duration::from_secs(5), "observedGeneration 2", || async {
        let tn = api.get("Tenant", None, "acme")?;
        (tn["status"]["conditions"][0]["observedGeneration"] == 2).then_some(tn)
    })
    .await;
    assert_eq!(
        tn["status"]["conditions"][0]["lastTransitionTime"],
        transition
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(writes(), after_first + 1);

    // The gateway's address moves: every accepted Ingress follows, once.
    api.apply(load_balancer_service("vestibule", "gateway", "203.0.113.8"));
    eventually(Duration::from_secs(5), "the new address", || async {
        let ing = api.get("Ingress", Some("acme"), "site")?;
        (ing["status"]["loadBalancer"]["ingress"][0]["ip"] == "203.0.113.8").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(writes(), after_first + 3);
    op.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_elect_one_leader_and_fail_over_when_the_lease_expires() {
    let api = FakeApi::start().await;
    seed(&api);
    let a = start(&api, test_settings("op-a")).await;
    let b = start(&api, test_settings("op-b")).await;
    let leader_of = |a: &vestibule_operator::Running, b: &vestibule_operator::Running| {
        (*a.leader.borrow(), *b.leader.borrow())
    };
    eventually(Duration::from_secs(5), "a leader", || async {
        let (la, lb) = leader_of(&a, &b);
        (la || lb).then_some(())
    })
    .await;
    // Stable: over a few renew periods, never two leaders.
    for _ in 0..20 {
        let (la, lb) = leader_of(&a, &b);
        assert!(la ^ lb, "exactly one leader, got a={la} b={lb}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holder = |api: &FakeApi| {
        api.get("Lease", Some("vestibule"), "vestibule-operator")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
    };
    let (leader, follower, follower_id) = if *a.leader.borrow() {
        (a, b, "op-b")
    } else {
        (b, a, "op-a")
    };
    assert_ne!(holder(&api).as_deref(), Some(follower_id));
    // Both serve configs, whoever leads.
    assert_eq!(
        get_config(leader.config_addr, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_config(follower.config_addr, None).await.status,
        StatusCode::OK
    );

    // The leader crashes without releasing the Lease; the follower takes
    // over once it has seen the Lease unrenewed for its duration.
    let crashed = Instant::now();
    leader.abort().await;
    eventually(Duration::from_secs(5), "failover", || async {
        (*follower.leader.borrow()).then_some(())
    })
    .await;
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "took over a live Lease after {took:?}"
    );
    assert_eq!(holder(&api).as_deref(), Some(follower_id));
    let transitions = api
        .get("Lease", Some("vestibule"), "vestibule-operator")
        .and_then(|l| l["spec"]["leaseTransitions"].as_i64());
    assert_eq!(transitions, Some(1));
    assert_eq!(follower.metrics.leader.get(), 1);

    // A graceful shutdown hands the Lease back at once.
    follower.shutdown().await.expect("clean shutdown");
    assert_eq!(holder(&api), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_server_wire_contract() {
    let api = FakeApi::start().await;
    seed(&api);
    let mut settings = test_settings("op-a");
    settings.server.max_waiting = 1;
    let op = start(&api, settings).await;
    let addr = op.config_addr;
    let first = first_config(addr).await;
    let version = first.version().expect("version");
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(first.headers["cache-control"], "no-store");
    assert!(first.headers.get("content-encoding").is_none());
    let config =
        vestibule_config::GatewayConfig::from_text(std::str::from_utf8(&first.body).expect("utf8"))
            .expect("a valid GatewayConfig");
    assert_eq!(config.version.as_str(), version);

    // Bad or missing tokens: 401.
    let wrong = get(addr, "/v1/config", &[("authorization", "Bearer nope")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.headers["www-authenticate"],
        "Bearer realm=\"vestibule\""
    );
    assert_eq!(
        get(addr, "/v1/config", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let basic = get(
        addr,
        "/v1/config",
        &[("authorization", &format!("Basic {TOKEN}"))],
    )
    .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    assert!(op.metrics.unauthorized.get() >= 3);

    // gzip when asked: decodes to the same bytes.
    let auth = format!("Bearer {TOKEN}");
    let gz = get(
        addr,
        "/v1/config",
        &[("authorization", &auth), ("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(gz.status, StatusCode::OK);
    assert_eq!(gz.headers["content-encoding"], "gzip");
    assert_eq!(gz.version().as_deref(), Some(version.as_str()));
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_end(&mut plain)
        .expect("gzip body");
    assert_eq!(plain, first.body.to_vec());
    assert!(gz.body.len() < first.body.len());

    // Up to date: 304 after the long-poll timeout, naming the current version.
    let started = Instant::now();
    let nm = get_config(addr, Some(&version)).await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert!(nm.body.is_empty());
    assert_eq!(nm.version().as_deref(), Some(version.as_str()));

    // A different (unknown, older) version gets the current config at once.
    let other = get_config(addr, Some("0000000000000000")).await;
    assert_eq!(other.status, StatusCode::OK);

    // Bounded waiting: with one slot taken, the next waiter gets 503.
    let v = version.clone();
    let parked = tokio::spawn(async move { get_config(addr, Some(&v)).await });
    eventually(Duration::from_secs(2), "one waiter parked", || async {
        (op.metrics.gateways_waiting.get() == 1).then_some(())
    })
    .await;
    let refused = get_config(addr, Some(&version)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(
        parked.await.expect("parked").status,
        StatusCode::NOT_MODIFIED
    );

    // Health, readiness and metrics.
    assert_eq!(get(addr, "/healthz", &[]).await.status, StatusCode::OK);
    assert_eq!(get(addr, "/readyz", &[]).await.status, StatusCode::OK);
    assert_eq!(get(addr, "/nope", &[]).await.status, StatusCode::NOT_FOUND);
    let m = get(op.metrics_addr, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&m.body);
    for name in [
        "vestibule_operator_gateways_waiting",
        "vestibule_operator_configs_served_total",
        "vestibule_operator_translate_duration_seconds_bucket",
        "vestibule_operator_objects_watched{kind=\"Ingress\"} 1",
        "vestibule_operator_leader",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert_eq!(
        get(op.metrics_addr, "/readyz", &[]).await.status,
        StatusCode::OK
    );
    op.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_and_labelled_secrets_and_config_maps_are_watched() {
    let api = FakeApi::start().await;
    seed(&api);
    let op = start(&api, test_settings("op-a")).await;
    first_config(op.config_addr).await;
    let secret_watches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/secrets"))
        .collect();
    assert!(!secret_watches.is_empty());
    // TLS Secrets, and Opaque Secrets labelled as an AcmeIssuer's EAB key
    // or as upstream roots: never every Secret of the cluster.
    let (mut tls, mut eab, mut roots) = (0, 0, 0);
    for r in secret_watches {
        if r.query.contains("fieldSelector=type%3Dkubernetes.io%2Ftls") {
            tls += 1;
        } else if r
            .query
            .contains("labelSelector=vestibule.dev%2Facme-eab%3Dtrue")
        {
            eab += 1;
        } else if r
            .query
            .contains("labelSelector=vestibule.dev%2Fupstream-ca%3Dtrue")
        {
            roots += 1;
        } else {
            panic!("an unselective Secret watch: {}", r.query);
        }
    }
    assert!(tls > 0 && eab > 0 && roots > 0, "{tls} {eab} {roots}");
    // ConfigMaps: only those labelled as upstream roots are listed (the
    // ACME relay reads its own by name).
    let config_map_watches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/configmaps"))
        .collect();
    assert!(config_map_watches.iter().any(|r| r
        .query
        .contains("labelSelector=vestibule.dev%2Fupstream-ca%3Dtrue")));
    for r in config_map_watches {
        assert!(
            r.query
                .contains("labelSelector=vestibule.dev%2Fupstream-ca%3Dtrue")
                || r.query.contains("fieldSelector=metadata.name"),
            "an unselective ConfigMap watch: {}",
            r.query
        );
    }
    op.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_when_a_certificate_is_given_and_token_rotation() {
    use std::sync::Arc;
    use tokio_rustls::rustls;

    let api = FakeApi::start().await;
    seed(&api);
    let dir = temp_dir("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    std::fs::write(dir.join("tls.crt"), cert.cert.pem()).expect("write");
    std::fs::write(dir.join("tls.key"), cert.signing_key.serialize_pem()).expect("write");
    let mut settings = test_settings("op-a");
    settings.tls = Some(vestibule_operator::TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    });
    settings.token_reload = Duration::from_millis(50);
    let token_file = settings.token_file.clone();
    let op = start(&api, settings).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let https_get = |token: &'static str| {
        let connector = connector.clone();
        let addr = op.config_addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let req = http::Request::get("/v1/config")
                .header("host", "localhost")
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            sender.send_request(req).await.expect("response").status()
        }
    };
    let ok = eventually(Duration::from_secs(5), "a config over HTTPS", || async {
        let s = https_get(TOKEN).await;
        (s != StatusCode::SERVICE_UNAVAILABLE).then_some(s)
    })
    .await;
    assert_eq!(ok, StatusCode::OK);
    // Plain HTTP to the HTTPS port gets nothing useful.
    let plain = tokio::time::timeout(Duration::from_secs(2), async {
        let tcp = tokio::net::TcpStream::connect(op.config_addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::get("/v1/config")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        sender.send_request(req).await.ok().map(|r| r.status())
    })
    .await;
    assert!(!matches!(plain, Ok(Some(StatusCode::OK))));

    // A rotated token file takes effect without a restart.
    std::fs::write(&token_file, "rotated-token\n").expect("rotate");
    eventually(Duration::from_secs(3), "the rotated token", || async {
        (https_get("rotated-token").await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(https_get(TOKEN).await, StatusCode::UNAUTHORIZED);
    op.shutdown().await.expect("clean shutdown");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespace_and_ingress_class_narrow_what_is_served() {
    let api = FakeApi::start().await;
    seed(&api);
    api.apply(service("other", "web", 80));
    api.apply(endpoint_slice("other", "web", &["10.9.0.1"], 8080));
    api.apply(ingress("other", "other", "other.example.com", "web", 80));
    // A second class of ours, named differently.
    let mut internal = ingress_class();
    internal["metadata"]["name"] = json!("internal");
    api.apply(internal);
    let mut private = ingress("shop", "private", "private.example.com", "web", 80);
    private["spec"]["ingressClassName"] = json!("internal");
    api.apply(private);

    let mut settings = test_settings("op-a");
    settings.watch_namespaces = vec!["shop".into()];
    settings.translate.ingress_class = Some("vestibule".into());
    let op = start(&api, settings).await;
    let config = first_config(op.config_addr).await.json();
    assert_eq!(hosts(&config), vec!["shop.example.com"]);
    // Only namespaced watches of the listed namespace were opened.
    assert!(api
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/ingresses"))
        .all(|r| r.path == "/apis/networking.k8s.io/v1/namespaces/shop/ingresses"));
    op.shutdown().await.expect("clean shutdown");
}

/// The Gateway API with `--gateway-api`: the operator watches the kinds,
/// serves an HTTPRoute's rules, and the leader writes GatewayClass,
/// Gateway (listeners, attached routes) and HTTPRoute (our parent entry,
/// other controllers' kept) statuses, with observedGeneration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_objects_are_served_and_their_statuses_written() {
    let api = FakeApi::start().await;
    api.apply(service("shop", "web", 80));
    api.apply(endpoint_slice("shop", "web", &["10.0.0.1"], 8080));
    // The listener admits namespaces by label: the operator reads them.
    api.apply(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"team": "shop"}}
    }));
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "vestibule", "generation": 1},
        "spec": {"controllerName": "vestibule.dev/gateway-controller"}
    }));
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "shop", "generation": 2},
        "spec": {"gatewayClassName": "vestibule", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {
                "from": "Selector", "selector": {"matchLabels": {"team": "shop"}}}}},
            {"name": "odd", "port": 8081, "protocol": "HTTP"}
        ]}
    }));
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "store", "namespace": "shop", "generation": 3},
        "spec": {
            "parentRefs": [{"name": "edge", "sectionName": "http"}, {"name": "elsewhere"}],
            "hostnames": ["store.example.com"],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"name": "x-env", "value": "beta"}]}],
                "backendRefs": [{"name": "web", "port": 80}, {"name": "missing", "port": 80}]
            }, {
                "matches": [{"path": {"type": "PathPrefix", "value": "/shared"}}],
                "backendRefs": [{"name": "shared", "namespace": "common", "port": 80}]
            }]
        },
        "status": {"parents": [{
            "parentRef": {"name": "elsewhere"},
            "controllerName": "example.com/other",
            "conditions": []
        }]}
    }));
    // A cross-namespace backend, granted by a v1beta1 ReferenceGrant (the
    // version the operator watches: every Gateway API release serves it).
    api.apply(service("common", "shared", 80));
    api.apply(endpoint_slice("common", "shared", &["10.0.9.9"], 8080));
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "from-shop", "namespace": "common"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
            "to": [{"group": "", "kind": "Service"}]
        }
    }));
    let mut settings = test_settings("op-gw");
    settings.gateway_api = true;
    let op = start(&api, settings).await;

    // The route is served with its header match and its 500 share.
    let config = first_config(op.config_addr).await.json();
    let host = config["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == "store.example.com"))
        .expect("store vhost");
    let by_prefix = |prefix: &str| {
        host["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"]["prefix"] == prefix)
            .cloned()
            .unwrap_or_else(|| panic!("no route {prefix}: {host}"))
    };
    assert_eq!(by_prefix("/")["conditions"]["headers"][0]["name"], "x-env");
    assert_eq!(by_prefix("/")["backend"]["split"]["unresolved"], 1);
    assert_eq!(by_prefix("/shared")["backend"]["pool"], "common/shared:80");

    let route = eventually(Duration::from_secs(5), "the HTTPRoute status", || async {
        let r = api.get("HTTPRoute", Some("shop"), "store")?;
        (r["status"]["parents"].as_array()?.len() == 2).then_some(r)
    })
    .await;
    let parents = route["status"]["parents"].as_array().unwrap();
    assert_eq!(parents[0]["controllerName"], "example.com/other");
    let ours = &parents[1];
    assert_eq!(ours["controllerName"], "vestibule.dev/gateway-controller");
    assert_eq!(ours["parentRef"]["name"], "edge");
    assert_eq!(ours["parentRef"]["sectionName"], "http");
    let cond = |c: &serde_json::Value, t: &str| {
        c["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|x| x["type"] == t).cloned())
            .unwrap_or_default()
    };
    assert_eq!(cond(ours, "Accepted")["status"], "True");
    assert_eq!(
        cond(ours, "Accepted")["observedGeneration"],
        route["metadata"]["generation"]
    );
    assert_eq!(cond(ours, "ResolvedRefs")["status"], "False");
    assert_eq!(cond(ours, "ResolvedRefs")["reason"], "BackendNotFound");

    let gw = eventually(Duration::from_secs(5), "the Gateway status", || async {
        let g = api.get("Gateway", Some("shop"), "edge")?;
        g["status"]["listeners"].as_array().is_some().then_some(g)
    })
    .await;
    assert_eq!(cond(&gw["status"], "Accepted")["status"], "True");
    assert_eq!(
        cond(&gw["status"], "Accepted")["observedGeneration"],
        gw["metadata"]["generation"]
    );
    let listeners = gw["status"]["listeners"].as_array().unwrap();
    assert_eq!(listeners[0]["name"], "http");
    assert_eq!(listeners[0]["attachedRoutes"], 1);
    assert_eq!(listeners[0]["supportedKinds"][0]["kind"], "HTTPRoute");
    assert_eq!(cond(&listeners[1], "Accepted")["reason"], "PortUnavailable");
    let class = eventually(
        Duration::from_secs(5),
        "the GatewayClass status",
        || async {
            let c = api.get("GatewayClass", None, "vestibule")?;
            c["status"]["conditions"].as_array().is_some().then_some(c)
        },
    )
    .await;
    assert_eq!(cond(&class["status"], "Accepted")["status"], "True");

    // Written once: a settled operator does not patch again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let patches = api.count(Method::PATCH, "/httproutes/store/status");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        api.count(Method::PATCH, "/httproutes/store/status"),
        patches
    );
    assert_eq!(patches, 1);
}

/// `/v2/config`: a whole config first, then deltas, whose bytes stay those
/// of the change at 1,000 hosts; an unknown base or `full=1` gets a whole
/// config, and `/v1` keeps answering whole configs of the current version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_sends_a_one_host_change_as_a_small_delta_at_a_thousand_hosts() {
    use vestibule_config::model::ConfigDelta;
    use vestibule_config::GatewayConfig;
    let api = FakeApi::start().await;
    api.apply(ingress_class());
    api.apply(service("shop", "web", 80));
    api.apply(endpoint_slice("shop", "web", &["10.0.0.1"], 8080));
    for i in 0..1000 {
        api.apply(ingress(
            "shop",
            &format!("site-{i}"),
            &format!("h{i}.example.com"),
            "web",
            80,
        ));
    }
    let mut settings = test_settings("op-a");
    settings.server.long_poll = Duration::from_secs(5);
    let op = start(&api, settings).await;
    let auth = format!("Bearer {TOKEN}");
    let v2 = |after: Option<String>, extra: &'static str| {
        let auth = auth.clone();
        let addr = op.config_addr;
        async move {
            let path = match after {
                Some(a) => format!("/v2/config?after={a}{extra}"),
                None => "/v2/config".to_string(),
            };
            get(addr, &path, &[("authorization", &auth)]).await
        }
    };
    let whole = eventually(Duration::from_secs(10), "all 1,000 hosts", || async {
        let r = v2(None, "").await;
        (r.status == StatusCode::OK && hosts(&r.json()).len() == 1000).then_some(r)
    })
    .await;
    assert_eq!(
        whole.headers["content-type"],
        "application/vnd.vestibule.config+json"
    );
    let mut config =
        GatewayConfig::from_text(std::str::from_utf8(&whole.body).unwrap()).expect("config");
    let base = whole.version().expect("version");
    assert_eq!(config.version.as_str(), base);

    // One new host: a delta of about one vhost.
    let parked = tokio::spawn(v2(Some(base.clone()), ""));
    eventually(Duration::from_secs(2), "the long-poll parked", || async {
        (op.metrics.gateways_waiting.get() == 1).then_some(())
    })
    .await;
    api.apply(ingress("shop", "new", "new.example.com", "web", 80));
    let res = parked.await.expect("poll");
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        res.headers["content-type"],
        "application/vnd.vestibule.config-delta+json"
    );
    eprintln!(
        "whole config {} bytes, one-host delta {} bytes",
        whole.body.len(),
        res.body.len()
    );
    assert!(res.body.len() < 1024, "{} bytes", res.body.len());
    assert!(whole.body.len() > 100 * res.body.len());
    let delta: ConfigDelta = serde_json::from_slice(&res.body).expect("delta");
    assert_eq!(delta.base.as_str(), base);
    assert_eq!(delta.hosts.len(), 1);
    config.apply(&delta).expect("the delta applies");
    assert_eq!(Some(config.version.to_string()), res.version());
    assert_eq!(config.hosts.len(), 1001);
    assert!(op.metrics.deltas_served.get() >= 1);

    // A base the operator does not hold, or full=1: a whole config.
    let stale = v2(Some("f".repeat(32)), "").await;
    assert_eq!(
        stale.headers["content-type"],
        "application/vnd.vestibule.config+json"
    );
    let asked = v2(Some(base.clone()), "&full=1").await;
    assert_eq!(
        asked.headers["content-type"],
        "application/vnd.vestibule.config+json"
    );
    // A whole config may be an older base; its deltas follow at once.
    let base2 = asked.version().expect("version");
    if base2 != config.version.as_str() {
        let caught_up = v2(Some(base2), "").await;
        let d: ConfigDelta = serde_json::from_slice(&caught_up.body).expect("delta");
        assert_eq!(d.version, config.version);
    }

    // /v1 (an older gateway) gets the current version whole.
    let old = get_config(op.config_addr, Some(&base)).await;
    assert_eq!(old.status, StatusCode::OK);
    assert_eq!(old.headers["content-type"], "application/json");
    assert_eq!(old.version().as_deref(), Some(config.version.as_str()));
    assert_eq!(hosts(&old.json()).len(), 1001);
    op.shutdown().await.expect("clean shutdown");
}
