//! The controller: a long-lived background service that applies config
//! events (compile off the request path, then one atomic swap) and drives
//! every pool's active health checks, ejection backoffs and DNS refreshes.
//!
//! Pingora's `LoadBalancer` only health-checks inside a background service
//! registered before the server starts; pools created by a later swap would
//! never be checked, so one driver owns the checks of whatever pools the
//! current runtime holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;
use vestibule_config::GatewayConfig;

use crate::runtime::{Runtime, Shared};
use crate::source::{ConfigSource, SourceEvent};

/// At most this many pools are probed at once, so a config with thousands of
/// pools spreads its probes instead of opening thousands of sockets at once.
const PROBE_CONCURRENCY: usize = 64;

pub struct Controller {
    shared: Arc<Shared>,
    source: Mutex<Option<Box<dyn ConfigSource>>>,
}

impl Controller {
    pub fn new(shared: Arc<Shared>, source: Box<dyn ConfigSource>) -> Self {
        Controller {
            shared,
            source: Mutex::new(Some(source)),
        }
    }
}

/// Compiles `config` against the live runtime and swaps it in; on failure
/// the live runtime stays and the error is reported.
pub async fn apply(shared: &Shared, config: &GatewayConfig) -> bool {
    let started = Instant::now();
    let current = shared.runtime.load_full();
    if !current.version.is_empty()
        && shared.is_ready()
        && config.effective_version() == current.version
    {
        // Same content (an editor touched the file): nothing to do.
        shared.clear_error();
        return true;
    }
    let next = match Runtime::compile(config, &current, shared) {
        Ok(next) => next,
        Err(e) => {
            shared.report_error(e.to_string());
            return false;
        }
    };
    // New ExternalName pools resolve before the swap, so they never serve
    // their first requests from an empty pool.
    let fresh = next
        .pools
        .values()
        .filter(|p| p.is_external() && !p.resolved())
        .cloned();
    futures::stream::iter(fresh)
        .for_each_concurrent(PROBE_CONCURRENCY, |p| async move { p.resolve().await })
        .await;
    let summary = next.summary.clone();
    let version = next.version.clone();
    shared.swap(next);
    shared.clear_error();
    settle(shared.runtime.load_full());
    let took = started.elapsed();
    shared.metrics.swap_duration.observe(took.as_secs_f64());
    tracing::info!(
        %version,
        hosts = summary.hosts,
        routes = summary.routes,
        pools = summary.pools,
        took_ms = took.as_secs_f64() * 1000.0,
        "config live"
    );
    true
}

/// After a swap, off the request path: build the new runtime's certificate
/// keys, then let the allocator return the pages the load freed.
///
/// mimalloc returns freed pages to the OS only after its purge delay (1 s),
/// and only when some page is freed after that; a config load frees tens of
/// MB at once and then the process may sit idle, so those pages would stay
/// resident. Freeing one block larger than mimalloc's largest size class
/// (512 KiB) once the delay has passed releases its own page, which runs the
/// due purges.
fn settle(runtime: Arc<Runtime>) {
    static WORKER: std::sync::OnceLock<std::sync::mpsc::Sender<Arc<Runtime>>> =
        std::sync::OnceLock::new();
    let tx = WORKER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Runtime>>();
        let spawned = std::thread::Builder::new()
            .name("settle".into())
            .spawn(move || settle_loop(rx));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the settle thread; keys are built at first use");
        }
        tx
    });
    let _ = tx.send(runtime);
}

fn settle_loop(rx: std::sync::mpsc::Receiver<Arc<Runtime>>) {
    const PURGE_DELAY: Duration = Duration::from_millis(1100);
    let mut purge_due: Option<Instant> = None;
    // A runtime that arrived while an older one was being warmed up.
    let mut newer: Option<Arc<Runtime>> = None;
    loop {
        let next = match (newer.take(), purge_due) {
            (Some(runtime), _) => Ok(runtime),
            (None, Some(due)) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            (None, None) => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(mut runtime) => {
                // Only the newest runtime matters.
                while let Ok(latest) = rx.try_recv() {
                    runtime = latest;
                }
                // Stop as soon as a newer one comes: holding this one would
                // keep a whole superseded config in memory.
                runtime.certs.warm_up(|| match rx.try_recv() {
                    Ok(latest) => {
                        newer = Some(latest);
                        false
                    }
                    Err(_) => true,
                });
                drop(runtime);
                purge_due = Some(Instant::now() + PURGE_DELAY);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                purge_due = None;
                drop(std::hint::black_box(vec![1u8; 1 << 20]));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One pass over the live pools: re-admit expired ejections, probe when
/// `probe` is set, refresh the health gauges.
async fn health_pass(shared: &Shared, probe: bool) {
    let runtime = shared.runtime.load_full();
    for pool in runtime.pools.values() {
        pool.readmit_expired();
    }
    if probe {
        futures::stream::iter(runtime.pools.values().cloned())
            .for_each_concurrent(
                PROBE_CONCURRENCY,
                |p| async move { p.run_health_check().await },
            )
            .await;
    }
    for pool in runtime.pools.values() {
        let (ready, total) = pool.health_counts();
        let ejections = pool.ejections.load(std::sync::atomic::Ordering::Relaxed);
        shared
            .metrics
            .set_pool_health(pool.id.as_str(), ready, total, ejections);
    }
}

async fn health_loop(shared: Arc<Shared>) {
    let interval = shared.upstream.health_interval;
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
        health_pass(&shared, probe).await;
    }
}

async fn dns_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(shared.upstream.dns_interval).await;
        let runtime = shared.runtime.load_full();
        let external = runtime.pools.values().filter(|p| p.is_external()).cloned();
        futures::stream::iter(external)
            .for_each_concurrent(PROBE_CONCURRENCY, |p| async move { p.resolve().await })
            .await;
    }
}

#[async_trait]
impl BackgroundService for Controller {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let source = self.source.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(source) = source else { return };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let source_task = tokio::spawn(source.run(tx));
        let health = tokio::spawn(health_loop(self.shared.clone()));
        let dns = tokio::spawn(dns_loop(self.shared.clone()));
        // The initial config: build its certificate keys in the background,
        // resolve ExternalNames right away.
        {
            let runtime = self.shared.runtime.load_full();
            settle(runtime.clone());
            for p in runtime
                .pools
                .values()
                .filter(|p| p.is_external() && !p.resolved())
            {
                p.resolve().await;
            }
        }
        loop {
            tokio::select! {
                event = rx.recv() => {
                    let Some(mut event) = event else { break };
                    // Coalesce a backlog: only the newest config matters.
                    while let Ok(newer) = rx.try_recv() {
                        if let SourceEvent::Error(e) = &event {
                            self.shared.report_error(e.to_string());
                        }
                        event = newer;
                    }
                    match event {
                        SourceEvent::Config(config) => {
                            apply(&self.shared, &config).await;
                        }
                        SourceEvent::Error(e) => self.shared.report_error(e.to_string()),
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        source_task.abort();
        health.abort();
        dns.abort();
    }
}
