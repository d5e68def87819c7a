//! The health and DNS loops over the live pools: active probes, ejection
//! backoffs and ExternalName re-resolution, driven by the controller for
//! whatever pools the current runtime holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::UpstreamPool;

/// At most this many pools are probed (or resolved) at once, so a config
/// with thousands of pools spreads its probes instead of opening thousands
/// of sockets at once.
pub const PROBE_CONCURRENCY: usize = 64;

/// The pools the loops drive, and where their health goes (the runtime
/// implements it; this module never imports the runtime).
pub trait LivePools: Send + Sync + 'static {
    /// The pools of the live runtime.
    fn pools(&self) -> Vec<Arc<UpstreamPool>>;
    /// Publishes a pool's health (gauges).
    fn report_health(&self, pool: &UpstreamPool);
}

/// One pass over the live pools: re-admit expired ejections, probe when
/// `probe` is set, refresh the health gauges.
async fn health_pass(live: &dyn LivePools, probe: bool) {
    let pools = live.pools();
    for pool in &pools {
        pool.readmit_expired();
    }
    if probe {
        futures::stream::iter(pools.iter().cloned())
            .for_each_concurrent(
                PROBE_CONCURRENCY,
                |p| async move { p.run_health_check().await },
            )
            .await;
    }
    for pool in &pools {
        live.report_health(pool);
    }
}

/// Re-admits expired ejections every tick and probes every `interval`,
/// until dropped.
pub async fn health_loop(live: Arc<dyn LivePools>, interval: Duration) {
    // Ejection backoffs are checked more often than probes run, so a short
    // backoff is honored even with a long probe interval.
    let tick = interval.min(Duration::from_millis(500));
    let mut next_probe = Instant::now() + interval;
    loop {
        tokio::time::sleep(tick).await;
        let probe = Instant::now() >= next_probe;
        if probe {
            next_probe = Instant::now() + interval;
        }
        health_pass(&*live, probe).await;
    }
}

/// Resolves every ExternalName pool again every `interval`, until dropped.
pub async fn dns_loop(live: Arc<dyn LivePools>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let external = live.pools().into_iter().filter(|p| p.is_external());
        futures::stream::iter(external)
            .for_each_concurrent(PROBE_CONCURRENCY, |p| async move { p.resolve().await })
            .await;
    }
}
