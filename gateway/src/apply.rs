//! Applying a config: compile it against the live runtime (off the request
//! path), resolve its new ExternalName pools, swap it in atomically, then
//! settle (build the certificate keys, give the freed memory back).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use vestibule_config::model::ConfigVersion;
use vestibule_config::GatewayConfig;

use crate::purge;
use crate::runtime::{Runtime, Shared};
use crate::source::Delta;
use crate::upstream::health::PROBE_CONCURRENCY;

/// Compiles `config` against the live runtime and swaps it in; on failure
/// the live runtime stays and the error is reported.
pub async fn apply(shared: &Shared, config: &GatewayConfig) -> bool {
    let started = Instant::now();
    let current = shared.runtime.load_full();
    if is_live(shared, &current, &config.effective_version()) {
        // Same content (an editor touched the file): nothing to do.
        return true;
    }
    let next = match Runtime::compile(config, &current, shared) {
        Ok(next) => next,
        Err(e) => {
            shared.report_error(e.to_string());
            return false;
        }
    };
    go_live(shared, next, started).await;
    true
}

/// Patches the live runtime with a delta; when the live config is not the
/// delta's base (a config that failed to apply), compiles the source's
/// whole config instead.
pub async fn apply_delta(shared: &Shared, d: &Delta) -> bool {
    let started = Instant::now();
    let current = shared.runtime.load_full();
    if is_live(shared, &current, &d.delta.version) {
        return true;
    }
    if d.delta.base != current.version || !shared.is_ready() {
        tracing::info!(live = %current.version, base = %d.delta.base, "the live config is not the delta's base: compiling the whole config");
        return apply(shared, &(d.full)()).await;
    }
    let next = Runtime::patch(&current, &d.delta, d.totals, shared);
    go_live(shared, next, started).await;
    true
}

/// Whether `version` is already live (the last error is then history).
fn is_live(shared: &Shared, current: &Runtime, version: &ConfigVersion) -> bool {
    let live = !current.version.is_empty() && shared.is_ready() && *version == current.version;
    if live {
        shared.clear_error();
    }
    live
}

/// Resolves the new runtime's new ExternalName pools, swaps it in and settles.
async fn go_live(shared: &Shared, next: Runtime, started: Instant) {
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
}

/// After a swap, off the request path: build the new runtime's certificate
/// keys, then let the allocator return the pages the load freed (a config
/// load frees tens of MB at once; see [`crate::purge`]).
pub fn settle(runtime: Arc<Runtime>) {
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
                purge_due = Some(Instant::now() + purge::PURGE_DELAY);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                purge_due = None;
                purge::run_due_purges();
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
