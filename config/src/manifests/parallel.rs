//! Parsing many files on all cores: files are handed out to threads in
//! small runs, and results come back in file order.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::parse::{load_document, split_documents};
use super::Loaded;

/// Below this much YAML, threads cost more than they save.
pub(super) const PARALLEL_MIN_BYTES: usize = 256 * 1024;
pub(super) const MAX_THREADS: usize = 8;
/// Runs per thread: enough for the threads to finish close together.
pub(super) const RUNS_PER_THREAD: usize = 16;

/// Parses files, one [`Loaded`] per file in the same order, spreading their
/// documents over the available cores in contiguous runs that are merged
/// back in order, so the result is the same as a sequential parse.
pub(super) fn parse_files(files: &[(&Path, &str)]) -> Vec<Loaded> {
    // (file, 1-based index, text) of every document.
    let mut docs: Vec<(usize, usize, &str)> = Vec::new();
    for (f, (_, text)) in files.iter().enumerate() {
        for (i, doc) in split_documents(text).into_iter().enumerate() {
            docs.push((f, i + 1, doc));
        }
    }
    let total: usize = docs.iter().map(|d| d.2.len()).sum();
    let threads = if total < PARALLEL_MIN_BYTES {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS)
    };

    let parse_run = |run: &[(usize, usize, &str)]| -> Vec<(usize, Loaded)> {
        let mut out: Vec<(usize, Loaded)> = Vec::new();
        for &(f, index, doc) in run {
            if out.last().is_none_or(|(last, _)| *last != f) {
                out.push((f, Loaded::default()));
            }
            if let Some((_, loaded)) = out.last_mut() {
                load_document(files[f].0, index, doc, loaded);
            }
        }
        out
    };

    let runs: Vec<Vec<(usize, Loaded)>> = if threads == 1 {
        vec![parse_run(&docs)]
    } else {
        // Many small runs handed out in turn: documents differ a lot in cost
        // per byte (flow-style Ingresses vs. PEM block scalars), so equal
        // shares up front leave one thread idle early.
        let per_run = docs.len().div_ceil(threads * RUNS_PER_THREAD).max(1);
        let runs: Vec<&[(usize, usize, &str)]> = docs.chunks(per_run).collect();
        let next = AtomicUsize::new(0);
        let work = || {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(run) = runs.get(i) else { break };
                mine.push((i, parse_run(run)));
            }
            mine
        };
        let mut done: Vec<(usize, Vec<(usize, Loaded)>)> = std::thread::scope(|scope| {
            // This thread works too; a thread that cannot be started (a
            // process limit) leaves its share to the others.
            let helpers: Vec<_> = (1..threads)
                .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
                .collect();
            let mut all = work();
            for h in helpers {
                all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            all
        });
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, run)| run).collect()
    };

    let mut out: Vec<Loaded> = files.iter().map(|_| Loaded::default()).collect();
    for (f, part) in runs.into_iter().flatten() {
        out[f].append(part);
    }
    out
}
