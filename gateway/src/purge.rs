//! Giving freed memory back to the OS. mimalloc decommits freed pages only
//! after its purge delay, and only when a later allocation or free runs the
//! due purges: after a config load or a connection flood the process may
//! sit idle with tens of MB resident that nothing uses.

use std::time::Duration;

/// How long after a mass free to run the purges (mimalloc's purge delay,
/// with margin).
pub const PURGE_DELAY: Duration = Duration::from_millis(1100);

/// Runs the purges that are due on the calling thread: a large block (its
/// own page, in this thread's segments, whose freed spans get purged) and a
/// huge one (past mimalloc's 512 KiB size classes, from the arena, whose
/// free runs the arena's due purges).
pub fn run_due_purges() {
    drop(std::hint::black_box(vec![1u8; 200 * 1024]));
    drop(std::hint::black_box(vec![1u8; 1 << 20]));
}
