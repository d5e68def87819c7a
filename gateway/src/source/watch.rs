//! File-system watching with a debounce, shared by the file sources.
//!
//! Editors and `kubectl cp`-style tools write a file in several steps (write,
//! rename, chmod); the debounce waits for a short quiet period so one edit is
//! one reload, with an upper bound so a steady stream of writes still reloads.
//! The first event after an idle period loads at once when it renamed a file
//! into place or removed one (the file is complete); a file created or
//! written in place waits for the quiet period. A load at the first event
//! that fails or sees a file still being written is retried after the quiet
//! period instead of being reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use super::{SourceError, SourceEvent};

/// Quiet time that ends a burst of file events. Short, because DESIGN.md's
/// budget for "config change -> live" is 50 ms at p50.
pub const QUIET: Duration = Duration::from_millis(30);
/// A burst never delays a reload longer than this.
pub const MAX_DELAY: Duration = Duration::from_millis(300);

/// Whether an event leaves its file complete: a file renamed into place or
/// removed. A created or modified file may still be being written, however
/// new its inode (`cp`, `kubectl ... > file`, an editor writing in place).
fn completes_a_file(kind: &EventKind) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    matches!(
        kind,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Remove(_)
    )
}

/// Watches `dir` and sends one message per event accepted by `relevant`:
/// `true` when the event leaves its file complete (see
/// [`completes_a_file`]). Keep the returned watcher alive while receiving.
pub fn watch_dir(
    dir: &Path,
    recursive: bool,
    relevant: impl Fn(&Path) -> bool + Send + 'static,
) -> notify::Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<bool>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) => {
                // Reads (open, close-nowrite) change nothing.
                if matches!(ev.kind, EventKind::Access(_)) {
                    return;
                }
                if ev.paths.iter().any(|p| relevant(p)) {
                    let _ = tx.send(completes_a_file(&ev.kind));
                }
            }
            // Overflow and friends: reload to be safe, after the quiet period.
            Err(_) => {
                let _ = tx.send(false);
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

/// Waits until no event came for [`QUIET`], or `deadline`. Returns `false`
/// when the watcher is gone.
async fn quiet_until(rx: &mut mpsc::UnboundedReceiver<bool>, deadline: Instant) -> bool {
    loop {
        let quiet_end = (Instant::now() + QUIET).min(deadline);
        match timeout_at(quiet_end, rx.recv()).await {
            Ok(Some(_)) if Instant::now() < deadline => continue,
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

/// When a load runs, relative to the burst of events that asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// At the first event of a burst, with writes possibly still under way.
    /// An `Err` here is not reported: the load is retried once the burst is
    /// over. A source also returns `Err` when it sees a file being rewritten
    /// in place, which could parse while half-written.
    Leading,
    /// After the quiet period that ends a burst: the result stands.
    Trailing,
}

/// The loop of a file-backed source: watch `dir`, and send what `load` makes
/// of the files. An event after an idle period loads at once (leading edge:
/// a file renamed into place goes live without waiting); events during a
/// burst are coalesced into one load after its quiet period (trailing edge),
/// which is also where a failed leading load is retried and reported.
pub async fn reload_on_change(
    dir: &Path,
    recursive: bool,
    relevant: impl Fn(&Path) -> bool + Send + 'static,
    load: impl Fn(Edge) -> Result<SourceEvent, SourceError>,
    events: mpsc::UnboundedSender<SourceEvent>,
    mut nudges: Option<mpsc::UnboundedReceiver<()>>,
) {
    let (_watcher, mut rx) = match watch_dir(dir, recursive, relevant) {
        Ok(w) => w,
        Err(e) => {
            let _ = events.send(SourceEvent::Error(SourceError::Watch {
                path: dir.to_path_buf(),
                source: e,
            }));
            return;
        }
    };
    // When the last load finished; `None` before the first.
    let mut last_load: Option<Instant> = None;
    loop {
        let Some(mut complete) = next_event(&mut rx, &mut nudges).await else {
            return;
        };
        let first = Instant::now();
        let idle = last_load.is_none_or(|t| first.duration_since(t) >= QUIET);
        // Events already queued belong to what a load now would see.
        while let Ok(c) = rx.try_recv() {
            complete &= c;
        }
        // The leading load runs only when every event so far left its file
        // complete (renamed into place, or removed); anything else may be a
        // file still being written, which could parse while half-written.
        if idle && complete {
            let leading = load(Edge::Leading);
            last_load = Some(Instant::now());
            match leading {
                Ok(event) => {
                    if events.send(event).is_err() {
                        return;
                    }
                    // Done unless the burst goes on.
                    match timeout_at(Instant::now() + QUIET, rx.recv()).await {
                        Err(_) => continue,
                        Ok(None) => return,
                        Ok(Some(_)) => {}
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "files still changing; retrying after the quiet period")
                }
            }
        }
        if !quiet_until(&mut rx, first + MAX_DELAY).await {
            return;
        }
        let event = load(Edge::Trailing).unwrap_or_else(SourceEvent::Error);
        last_load = Some(Instant::now());
        if events.send(event).is_err() {
            return;
        }
    }
}

/// The next file event, or a nudge (a reload asked for by something other
/// than the files, such as a newly issued certificate), which counts as a
/// complete file. `None` when the watcher is gone.
async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<bool>,
    nudges: &mut Option<mpsc::UnboundedReceiver<()>>,
) -> Option<bool> {
    loop {
        let Some(n) = nudges.as_mut() else {
            return rx.recv().await;
        };
        tokio::select! {
            event = rx.recv() => return event,
            nudge = n.recv() => match nudge {
                Some(()) => return Some(true),
                None => *nudges = None,
            },
        }
    }
}
