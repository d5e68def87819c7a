//! Proves the gateway's own share of a plain request allocates nothing once
//! warm: routing, the tenant header, balancing and the per-route metrics,
//! counted per thread by `allocation-counter`'s global allocator (in this
//! test binary only).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::HeaderValue;
use pingora_http::RequestHeader;
use pingora_proxy::ProxyHttp;
use vestibule_config::model::{
    Endpoint, GatewayConfig, PathMatch, Pool, PoolId, Route, RouteName, Tenant, TenantId,
    VirtualHost, WildcardDepth,
};
use vestibule_config::HostPattern;

use super::{Decision, Gateway, ProxySettings};
use crate::runtime::{Runtime, Shared};

/// Three hosts of a tenant over a pool of three endpoints.
fn config() -> GatewayConfig {
    let mut c = GatewayConfig::default();
    let endpoints = (1..=3)
        .map(|i| Endpoint {
            address: SocketAddr::from((Ipv4Addr::new(127, 0, 0, i), 8080)),
            weight: 1,
        })
        .collect();
    c.pools
        .insert(PoolId::new("web"), Pool::Endpoints(endpoints));
    c.tenants.insert(
        TenantId::new("acme"),
        Tenant {
            domains: vec![],
            rate_limit: None,
            cluster_rate_limit: None,
        },
    );
    for i in 0..3 {
        c.hosts.push(VirtualHost {
            host: HostPattern::parse(&format!("h{i}.test")).unwrap(),
            tenant: Some(TenantId::new("acme")),
            tls: None,
            wildcard: WildcardDepth::OneLabel,
            plain_http: Default::default(),
            routes: vec![Route::to_pool(
                RouteName::new(format!("r{i}")),
                PathMatch::prefix("/"),
                PoolId::new("web"),
            )],
        });
    }
    c.seal()
}

/// A request head as Pingora's parser leaves it: values are slices of one
/// shared read buffer.
fn request(host: &str) -> RequestHeader {
    let buf = Bytes::from(host.as_bytes().to_vec());
    let mut req = RequestHeader::build("GET", b"/index.html", None).unwrap();
    let value = HeaderValue::from_maybe_shared(buf.slice(..)).unwrap();
    req.insert_header(http::header::HOST, value).unwrap();
    req
}

#[test]
fn a_warm_plain_request_allocates_nothing_in_routing_balancing_and_metrics() {
    let shared = Shared::new(Default::default(), "test".into()).unwrap();
    let runtime = Runtime::compile(&config(), &Runtime::empty(), &shared).unwrap();
    shared.swap(runtime);
    let gw = Gateway::new(shared, ProxySettings::default());
    let client = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    let heads: Vec<RequestHeader> = (0..300)
        .map(|i| request(&format!("h{}.test", i % 3)))
        .collect();

    let mut picked = BTreeMap::<SocketAddr, u32>::new();
    let serve = |req: &RequestHeader, picked: &mut BTreeMap<SocketAddr, u32>| -> u64 {
        let mut tenant = None;
        let mut endpoint = None;
        let spent = allocation_counter::measure(|| {
            let mut ctx = gw.new_ctx();
            let decision = gw.route(req, None, client, &mut ctx);
            assert!(matches!(decision, Decision::Proxy), "not proxied");
            tenant = ctx.tenant_header.clone();
            let routed = ctx.routed.as_mut().unwrap();
            let ep = routed.start_attempt(None).unwrap().endpoint.clone();
            routed.pool.record_success(&ep);
            routed.target.stats.observe_upstream(0.001);
            routed.target.stats.count(200);
            endpoint = Some(ep);
        })
        .count_total;
        assert_eq!(tenant.as_ref().map(|t| t.as_bytes()), Some(&b"acme"[..]));
        *picked.entry(endpoint.unwrap().addr).or_default() += 1;
        spent
    };
    // Warm-up: thread-local caches, first clones of shared values.
    for req in &heads[..30] {
        serve(req, &mut picked);
    }
    picked.clear();
    let spent: u64 = heads[30..].iter().map(|req| serve(req, &mut picked)).sum();
    assert_eq!(spent, 0, "allocations in 270 warm requests");
    // Balanced round the pool, so the check above covered real selection.
    assert_eq!(picked.len(), 3, "{picked:?}");
    assert!(picked.values().all(|&n| n == 90), "{picked:?}");
}
