//! Operator mode at scale (ignored: minutes, and meant for a release build):
//! N Ingresses on the fake API server (default 100,000; set
//! `VESTIBULE_SCALE_HOSTS`), the operator in process, the real gateway
//! long-polling it under a steady load; then hosts added one at a time,
//! each timed from the API write until the gateway serves it.
//!
//! `cargo test --release -p vestibule-tests --test scale -- --ignored --nocapture`

#[path = "../../operator/tests/support/mod.rs"]
#[allow(clippy::all)]
mod op;

#[path = "../../gateway/tests/common/mod.rs"]
#[allow(clippy::all)]
mod gw;

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gw::Upstream;
use op::FakeApi;

fn hosts() -> usize {
    std::env::var("VESTIBULE_SCALE_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// A process's resident set, from `/proc`.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes; run in release (see the file's doc)"]
async fn one_host_change_at_scale_in_operator_mode() {
    let n = hosts();
    let up = Upstream::start("up").await;
    let api = FakeApi::start().await;
    let seeded = Instant::now();
    support::hosts_on(&api, &up, n);
    eprintln!(
        "{n} Ingresses on the fake API server in {:?}",
        seeded.elapsed()
    );

    let started = Instant::now();
    let support::Scene {
        operator,
        gateway,
        // Kept until the end: the gateway writes into it.
        state: _state,
        flags: _flags,
    } = support::operator_and_gateway(&api, &["--no-access-log"]).await;
    let last = format!("h{}.example.com", n - 1);
    let mut client = gateway.client();
    loop {
        if let Ok(r) = client.get(&last, "/").await {
            if r.status == 200 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the last host never went live"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "operator start -> gateway serves the last of {n} hosts: {:?}; the operator's first \
         (full) translation and publish: {:.2} s",
        started.elapsed(),
        operator.metrics.translate_seconds.get_sample_sum(),
    );

    // A steady load over the existing hosts; every answer must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let mut client = gateway.client();
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7919) % n;
                match client.get(&format!("h{i}.example.com"), "/").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    let (wholes, deltas) = (
        operator.metrics.configs_served.get(),
        operator.metrics.deltas_served.get(),
    );
    let mut took = Vec::new();
    for k in 0..20 {
        let host = format!("new{k}.example.com");
        let at = Instant::now();
        api.apply(op::ingress("shop", &format!("new-{k}"), &host, "web", 80));
        let mut probe = gateway.client();
        loop {
            if matches!(probe.get(&host, "/").await, Ok(r) if r.status == 200) {
                break;
            }
            assert!(
                at.elapsed() < Duration::from_secs(10),
                "{host} never went live"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        took.push(at.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    took.sort();
    let rss = rss_kb(gateway.child.id());
    eprintln!(
        "one-host change -> live at {n} hosts, operator mode: p50 {:?}, max {:?}; \
         {} requests under load, {} failed; whole configs sent during the changes: {}, deltas: {}; \
         gateway RSS {} MB",
        took[took.len() / 2],
        took[took.len() - 1],
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        operator.metrics.configs_served.get() - wholes,
        operator.metrics.deltas_served.get() - deltas,
        rss / 1024,
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert_eq!(operator.metrics.configs_served.get(), wholes);
    operator.shutdown().await.expect("operator shutdown");
}
