//! ACME at the edge (issue 14, the gateway's part so far): pending HTTP-01
//! challenges from the config are answered on the HTTP listener before
//! routing, redirects and rate limits; a token that is not pending is 404.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use vestibule_config::model::{
    GatewayConfig, HostTls, PathMatch, PoolId, RateLimit, Tenant, TenantId,
};
use vestibule_config::HostPattern;

const TOKEN: &str = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
const KEY_AUTHORIZATION: &str =
    "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

/// A tenant whose domain asked for TLS (plain HTTP is redirected) and whose
/// rate limit is spent after one request, plus a pending challenge.
fn config(up: &Upstream) -> GatewayConfig {
    let mut secure = vhost(
        "shop.customer.test",
        Some("acme"),
        vec![route("r", PathMatch::prefix("/"), "p")],
    );
    secure.tls = Some(HostTls::Unavailable(vestibule_config::model::Unavailable {
        reason: vestibule_config::model::TlsUnavailable::SecretNotFound,
        message: "certificate not issued yet".into(),
    }));
    let mut config = GatewayConfig {
        hosts: vec![secure],
        pools: [(PoolId::new("p"), pool(&[(up, 1)]))].into(),
        tenants: [(
            TenantId::new("acme"),
            Tenant {
                domains: vec![HostPattern::parse("shop.customer.test").unwrap()],
                rate_limit: Some(RateLimit {
                    requests_per_second: 1,
                    burst: 1,
                }),
                cluster_rate_limit: None,
            },
        )]
        .into(),
        ..Default::default()
    };
    config
        .acme_http01
        .insert(TOKEN.into(), KEY_AUTHORIZATION.into());
    config.seal()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_challenges_are_answered_before_routing_and_only_when_pending() {
    let up = Upstream::start("app").await;
    let dir = TempDir::new("acme-http01");
    let file = dir.0.join("config.json");
    write_config(&file, &config(&up));
    let gw = Gateway::start(&["--config", file.to_str().unwrap()], &[]).await;
    let mut c = gw.client();
    let path = format!("/.well-known/acme-challenge/{TOKEN}");
    // Answered many times over, past the tenant's rate limit, never
    // redirected to https, never proxied.
    for _ in 0..5 {
        let r = c.get("shop.customer.test", &path).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, KEY_AUTHORIZATION);
        assert!(r.upstream().is_none());
    }
    // Any host: the CA asks with the name being validated.
    let r = c.get("other.test", &path).await.unwrap();
    assert_eq!(r.body, KEY_AUTHORIZATION);
    // A token that is not pending: 404, not the app, not a redirect.
    let r = c
        .get(
            "shop.customer.test",
            "/.well-known/acme-challenge/not-pending",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.upstream().is_none());
    // Other paths of the host still redirect to https.
    let r = c.get("shop.customer.test", "/").await.unwrap();
    assert_eq!(r.status, 308);
    // Once the challenge is gone from the config, its token is a 404.
    let mut done = config(&up);
    done.acme_http01.clear();
    write_config(&file, &done.seal());
    let http = gw.http;
    let gone = eventually(std::time::Duration::from_secs(5), || {
        let path = path.clone();
        async move {
            Client::new(http)
                .get("shop.customer.test", &path)
                .await
                .is_ok_and(|r| r.status == 404)
        }
    })
    .await;
    assert!(gone.is_some(), "a finished challenge is still answered");
}

#[test]
fn malformed_challenges_are_refused_with_the_config() {
    let mut config = GatewayConfig::default();
    config.acme_http01.insert("../../etc".into(), "x".into());
    let text = serde_json::to_string(&config).unwrap();
    let err = GatewayConfig::from_text(&text).unwrap_err().to_string();
    assert!(err.contains("ACME HTTP-01 challenge"), "{err}");
}
