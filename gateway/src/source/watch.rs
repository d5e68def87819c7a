//! File-system watching with a debounce, shared by the file sources.
//!
//! Editors and `kubectl cp`-style tools write a file in several steps (write,
//! rename, chmod); the debounce waits for a short quiet period so one edit is
//! one reload, with an upper bound so a steady stream of writes still reloads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use vestibule_config::GatewayConfig;

use super::{SourceError, SourceEvent};

/// Quiet time that ends a burst of file events. Short, because DESIGN.md's
/// budget for "config change -> live" is 50 ms at p50.
pub const QUIET: Duration = Duration::from_millis(30);
/// A burst never delays a reload longer than this.
pub const MAX_DELAY: Duration = Duration::from_millis(300);

/// Watches `dir` and yields once per debounced burst of events accepted by
/// `relevant`. Keep the returned watcher alive while receiving.
pub fn watch_dir(
    dir: &Path,
    recursive: bool,
    relevant: impl Fn(&Path) -> bool + Send + 'static,
) -> notify::Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) => {
                // Reads (open, close-nowrite) change nothing.
                if matches!(ev.kind, EventKind::Access(_)) {
                    return;
                }
                if ev.paths.iter().any(|p| relevant(p)) {
                    let _ = tx.send(());
                }
            }
            // Overflow and friends: reload to be safe.
            Err(_) => {
                let _ = tx.send(());
            }
        }
    })?;
    let mode = if recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher.watch(dir, mode)?;
    Ok((watcher, rx))
}

/// Waits for the next burst of events and its quiet period. Returns `false`
/// when the watcher is gone.
pub async fn next_burst(rx: &mut mpsc::UnboundedReceiver<()>) -> bool {
    if rx.recv().await.is_none() {
        return false;
    }
    let deadline = Instant::now() + MAX_DELAY;
    loop {
        let quiet_end = (Instant::now() + QUIET).min(deadline);
        match timeout_at(quiet_end, rx.recv()).await {
            Ok(Some(())) if Instant::now() < deadline => continue,
            Ok(None) => return false,
            _ => return true,
        }
    }
}

/// The directory to watch for a file: its parent, since editors replace
/// files by rename and a watch on the file itself would be lost.
pub fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The loop of a file-backed source: watch `dir`, and after each debounced
/// burst of relevant events send what `load` makes of the files now.
pub async fn reload_on_change(
    dir: &Path,
    recursive: bool,
    relevant: impl Fn(&Path) -> bool + Send + 'static,
    load: impl Fn() -> Result<GatewayConfig, SourceError>,
    events: mpsc::UnboundedSender<SourceEvent>,
) {
    let (_watcher, mut rx) = match watch_dir(dir, recursive, relevant) {
        Ok(w) => w,
        Err(e) => {
            let _ = events.send(SourceEvent::Error(format!(
                "{}: cannot watch: {e}",
                dir.display()
            )));
            return;
        }
    };
    while next_burst(&mut rx).await {
        let event = match load() {
            Ok(config) => SourceEvent::Config(Arc::new(config)),
            Err(e) => SourceEvent::Error(e.0),
        };
        if events.send(event).is_err() {
            return;
        }
    }
}
