// Vestibule patch 0007.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The keep-alive pool of idle upstream streams, without a task per stream.
//!
//! The pool it replaces wrapped each released stream in an `Arc<Mutex>`,
//! made a oneshot channel and a `Notify`, and spawned a task that watched
//! the idle stream until it was taken again: on a busy proxy, a task spawn
//! and its wake-ups for every request. Here a released stream is pushed on
//! its key's stack; taking one pops the most recent and checks it (expired,
//! or closed or written to by the server while idle: dropped, and the next
//! one is tried). One sweeper task per pool closes what expired or was
//! closed by the server, once a second, so idle sockets are not held long.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::test_reusable_stream;
use crate::protocols::Stream;

/// How often the sweeper closes expired and dead idle streams.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Idle streams by reuse key, at most `capacity` in all (the least recently
/// released is closed to make room).
pub(crate) struct IdleStreams {
    inner: Mutex<Inner>,
    capacity: usize,
    sweeping: AtomicBool,
}

struct Idle {
    stream: Stream,
    seq: u64,
    released: Instant,
    expires: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<u64, Vec<Idle>>,
    /// Release order, for eviction: entries of streams taken since are
    /// skipped when met, and dropped when the queue outgrows the pool.
    order: VecDeque<(u64, u64)>,
    len: usize,
    next_seq: u64,
}

impl Inner {
    fn pop(&mut self, key: u64) -> Option<Idle> {
        let stack = self.by_key.get_mut(&key)?;
        let idle = stack.pop();
        if stack.is_empty() {
            self.by_key.remove(&key);
        }
        if idle.is_some() {
            self.len -= 1;
        }
        idle
    }

    fn remove(&mut self, key: u64, seq: u64) -> Option<Idle> {
        let stack = self.by_key.get_mut(&key)?;
        let at = stack.iter().position(|i| i.seq == seq)?;
        let idle = stack.remove(at);
        if stack.is_empty() {
            self.by_key.remove(&key);
        }
        self.len -= 1;
        Some(idle)
    }

    fn evict_oldest(&mut self) -> Option<Idle> {
        while let Some((key, seq)) = self.order.pop_front() {
            if let Some(idle) = self.remove(key, seq) {
                return Some(idle);
            }
        }
        None
    }

    /// Forgets the order entries of streams no longer here.
    fn compact(&mut self) {
        let by_key = &self.by_key;
        self.order.retain(|(key, seq)| {
            by_key
                .get(key)
                .is_some_and(|stack| stack.iter().any(|i| i.seq == *seq))
        });
    }
}

impl IdleStreams {
    pub(crate) fn new(capacity: usize) -> Self {
        IdleStreams {
            inner: Mutex::new(Inner::default()),
            capacity,
            sweeping: AtomicBool::new(false),
        }
    }

    /// The most recently released usable stream for `key`, if any.
    pub(crate) fn take(&self, key: u64, unexpected_data: &AtomicU64) -> Option<Stream> {
        loop {
            let mut idle = self.inner.lock().pop(key)?;
            if idle.expires.is_some_and(|t| t <= Instant::now()) {
                continue; // dropped: closed
            }
            if test_reusable_stream(&mut idle.stream, unexpected_data) {
                return Some(idle.stream);
            }
        }
    }

    /// Keeps `stream` for reuse under `key`; returns how long each stream
    /// evicted to make room had been idle.
    pub(crate) fn put(
        &self,
        key: u64,
        stream: Stream,
        idle_timeout: Option<Duration>,
    ) -> Vec<Duration> {
        let now = Instant::now();
        let mut evicted = Vec::new();
        let mut closed = Vec::new();
        {
            let mut inner = self.inner.lock();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.by_key.entry(key).or_default().push(Idle {
                stream,
                seq,
                released: now,
                expires: idle_timeout.map(|t| now + t),
            });
            inner.order.push_back((key, seq));
            inner.len += 1;
            while inner.len > self.capacity {
                match inner.evict_oldest() {
                    Some(idle) => {
                        evicted.push(now.saturating_duration_since(idle.released));
                        closed.push(idle);
                    }
                    None => break,
                }
            }
            if inner.order.len() > 2 * inner.len + 1024 {
                inner.compact();
            }
        }
        drop(closed); // closed outside the lock
        evicted
    }

    /// Closes the streams that expired or that the server closed (or wrote
    /// to) while idle.
    fn sweep(&self, unexpected_data: &AtomicU64) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut inner = self.inner.lock();
            let mut removed = 0;
            for stack in inner.by_key.values_mut() {
                let mut i = 0;
                while i < stack.len() {
                    let idle = &mut stack[i];
                    let expired = idle.expires.is_some_and(|t| t <= now);
                    if expired || !test_reusable_stream(&mut idle.stream, unexpected_data) {
                        closed.push(stack.swap_remove(i));
                        removed += 1;
                    } else {
                        i += 1;
                    }
                }
            }
            if removed > 0 {
                inner.by_key.retain(|_, stack| !stack.is_empty());
                inner.len -= removed;
                inner.compact();
            }
        }
        drop(closed);
    }

    /// Starts this pool's sweeper on the current runtime, once.
    pub(crate) fn start_sweeping(self: &Arc<Self>, unexpected_data: &Arc<AtomicU64>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let unexpected_data = unexpected_data.clone();
        pingora_runtime::current_handle().spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep(&unexpected_data);
            }
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected loopback pair: our side as a Pingora stream, and the
    /// server's side.
    async fn pair(listener: &TcpListener) -> (Stream, TcpStream) {
        let ours = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(ours, listener.accept());
        let ours: Stream = Box::new(crate::protocols::l4::stream::Stream::from(ours.unwrap()));
        (ours, theirs.unwrap().0)
    }

    #[tokio::test]
    async fn takes_back_what_was_put_skipping_dead_and_expired_streams() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let unexpected = AtomicU64::new(0);
        let pool = IdleStreams::new(8);
        let (a, _a_server) = pair(&listener).await;
        let a_id = a.id();
        pool.put(1, a, None);
        assert!(pool.take(2, &unexpected).is_none(), "other key");
        assert_eq!(pool.take(1, &unexpected).map(|s| s.id()), Some(a_id));
        assert!(pool.take(1, &unexpected).is_none(), "taken once");

        // Closed by the server while idle: skipped for the live one under it.
        let (live, _live_server) = pair(&listener).await;
        let live_id = live.id();
        let (dead, dead_server) = pair(&listener).await;
        pool.put(1, live, None);
        pool.put(1, dead, None);
        drop(dead_server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.take(1, &unexpected).map(|s| s.id()), Some(live_id));

        // Written to while idle: dropped and counted.
        let (chatty, mut chatty_server) = pair(&listener).await;
        pool.put(1, chatty, None);
        chatty_server.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(1, &unexpected).is_none());
        assert_eq!(unexpected.load(Ordering::Relaxed), 1);

        // Past its idle timeout: dropped.
        let (old, _old_server) = pair(&listener).await;
        pool.put(1, old, Some(Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(pool.take(1, &unexpected).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn evicts_the_least_recently_released_and_sweeps_the_dead() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let unexpected = AtomicU64::new(0);
        let pool = IdleStreams::new(2);
        let mut servers = Vec::new();
        let mut ids = Vec::new();
        for key in 1..=3 {
            let (s, server) = pair(&listener).await;
            ids.push(s.id());
            servers.push(server);
            let evicted = pool.put(key, s, None);
            assert_eq!(evicted.len(), usize::from(key == 3));
        }
        assert_eq!(pool.len(), 2);
        assert!(pool.take(1, &unexpected).is_none(), "the oldest was evicted");
        // The server closes key 2's stream; the sweep closes it on our side.
        drop(servers.remove(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep(&unexpected);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.take(3, &unexpected).map(|s| s.id()), Some(ids[2]));
    }
}
