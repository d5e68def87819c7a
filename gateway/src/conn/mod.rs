//! Downstream connection guard: bounds what a slow or greedy client can hold.
//!
//! Pingora 0.9 times out each *read* of a request head (60 s), never the
//! head as a whole, waits for the next request on a kept-alive HTTP/1.1
//! connection without any limit, and never bounds how slowly a body comes.
//! So a client trickling one header or body byte at a time (slowloris, slow
//! POST) or idling between requests holds a connection forever. Every
//! accepted connection goes through [`Edge`] (a `ServerApp` around the
//! proxy), which takes one of its client IP's slots (`--max-connections-per-ip`,
//! also checked before and during the TLS handshake) and, for HTTP/1, wraps
//! the stream in a [`GuardedStream`] that enforces at the byte level:
//! - a total deadline for each request head, from the connection's accept or
//!   from the head's first byte (`--header-timeout`; a 408 is sent when part
//!   of a head arrived), lifted when the proxy's `request_filter` sees the
//!   parsed head ([`head_done`]);
//! - an idle deadline between requests (`--keepalive-timeout`), from the
//!   proxy's `logging` phase ([`request_done`]); `Edge` waits out that idle
//!   time itself, holding no session or buffer;
//! - a minimum rate for a request body (`--body-min-rate`): the client may
//!   keep a body read waiting at most `--header-timeout` plus the time its
//!   bytes so far earn at that rate, so a body trickled at a byte every few
//!   seconds is cut, while an upload the upstream reads slowly is not (only
//!   time spent waiting on the client counts), until the proxy has read the
//!   body ([`body_done`]).
//!
//! Body reads and response writes also get Pingora's per-operation timeouts
//! from the proxy (`--client-timeout`). HTTP/2 connections skip these
//! deadlines (frames interleave; Pingora's `h2_idle_timeout` bounds them).
//!
//! Here: the limits and the per-IP slots ([`ConnGuard`], [`CapFilter`]);
//! `edge`: the `ServerApp`; `stream`: the deadlines.

mod edge;
pub mod proxy_protocol;
mod stream;

pub use edge::Edge;
pub use stream::{body_done, head_done, request_done, GuardedStream};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use prometheus::IntCounter;

/// Downstream limits, from the command line.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// A request head must arrive completely within this.
    pub header_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection.
    pub keepalive_timeout: Duration,
    /// Longest pause while reading a request body or writing a response.
    pub client_timeout: Duration,
    /// Connections one client IP may hold open (0: no cap).
    pub max_connections_per_ip: u32,
    /// Connections the listener holds open in all (0: no cap).
    pub max_connections: u32,
    /// Slowest request body accepted, in bytes per second of waiting on
    /// the client (0: no minimum).
    pub body_min_rate: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(30),
            max_connections_per_ip: 256,
            max_connections: 0,
            body_min_rate: 1024,
        }
    }
}

/// Counters of what the guard refused or cut.
#[derive(Clone)]
pub struct GuardMetrics {
    pub rejected_per_ip: IntCounter,
    /// Refused because the listener holds its total cap.
    pub rejected_over_cap: IntCounter,
    pub header_timeouts: IntCounter,
    pub idle_timeouts: IntCounter,
    pub body_timeouts: IntCounter,
}

const SHARDS: usize = 64;

/// Open connections that make a flood worth giving memory back after.
const FLOOD: usize = 512;

/// Open connections per client IP, sharded so accepts on different cores
/// rarely meet on one lock (touched per connection, never per request).
pub struct ConnGuard {
    limits: ClientLimits,
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
    hasher: ahash::RandomState,
    /// TLS connections from their ClientHello gate to the end of the
    /// handshake, each holding a slot of its IP. Pingora gives the pre-TLS
    /// hook no way to hand state to the app, so the slot is found again by
    /// peer address; one whose handshake failed is known by its dropped
    /// socket digest and released by [`ConnGuard::sweep_handshakes`].
    handshakes: Mutex<HashMap<SocketAddr, Weak<SocketDigest>>>,
    handshakes_begun: AtomicU32,
    /// Connections open now, and the most since the last flood ended.
    open: AtomicUsize,
    peak: AtomicUsize,
    metrics: GuardMetrics,
}

impl ConnGuard {
    pub fn new(limits: ClientLimits, metrics: GuardMetrics) -> Arc<Self> {
        Arc::new(ConnGuard {
            limits,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: ahash::RandomState::new(),
            handshakes: Mutex::default(),
            handshakes_begun: AtomicU32::new(0),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            metrics,
        })
    }

    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// Takes a connection slot for `ip`, or `None` when it holds the cap.
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Permit> {
        let max = self.limits.max_connections_per_ip;
        let Some(ip) = ip.filter(|_| max > 0) else {
            return Some(Permit(None));
        };
        // Slots of failed handshakes may be what stands in the way.
        let taken = self.take_slot(ip) || {
            self.sweep_handshakes();
            self.take_slot(ip)
        };
        if !taken {
            self.metrics.rejected_per_ip.inc();
            return None;
        }
        Some(Permit(Some((self.clone(), ip))))
    }

    /// The connection slot of `stream`: the one its TLS handshake took, if
    /// it took one, else a new one.
    pub fn acquire_for(self: &Arc<Self>, stream: &Stream) -> Option<Permit> {
        let peer = stream.get_socket_digest().as_deref().and_then(peer_of);
        let adopted = peer.and_then(|peer| {
            let mut map = self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&peer).map(|_| peer.ip())
        });
        match adopted {
            Some(ip) => Some(Permit(Some((self.clone(), ip)))),
            None => self.acquire(peer.map(|p| p.ip())),
        }
    }

    /// Counts a TLS connection in its IP's slots from its first bytes, so
    /// connections stalled in the handshake can't exceed the cap; false when
    /// the IP holds its cap.
    pub fn begin_handshake(&self, stream: &L4Stream) -> bool {
        let max = self.limits.max_connections_per_ip;
        let Some(digest) = stream.get_socket_digest() else {
            return true;
        };
        let Some(peer) = peer_of(&digest) else {
            return true;
        };
        if max == 0 {
            return true;
        }
        // Failed handshakes are found by sweeping; now and then, and
        // whenever their slots are what stands in the way.
        if self
            .handshakes_begun
            .fetch_add(1, Relaxed)
            .is_multiple_of(64)
            || self.at_cap(peer.ip())
        {
            self.sweep_handshakes();
        }
        if !self.take_slot(peer.ip()) {
            self.metrics.rejected_per_ip.inc();
            return false;
        }
        let old = self
            .handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Arc::downgrade(&digest));
        if old.is_some() {
            // A dead entry for a reused port: its slot goes back.
            self.release(peer.ip());
        }
        true
    }

    /// Releases the slots of handshakes that ended without a connection.
    fn sweep_handshakes(&self) {
        let mut dead = Vec::new();
        self.handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|peer, digest| {
                let alive = digest.strong_count() > 0;
                if !alive {
                    dead.push(peer.ip());
                }
                alive
            });
        for ip in dead {
            self.release(ip);
        }
    }

    fn take_slot(&self, ip: IpAddr) -> bool {
        let max = self.limits.max_connections_per_ip;
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Whether `ip` already holds its cap (the pre-handshake check).
    pub fn at_cap(&self, ip: IpAddr) -> bool {
        let max = self.limits.max_connections_per_ip;
        max > 0
            && self
                .shard(&ip)
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&ip)
                .is_some_and(|&n| n >= max)
    }

    fn release(&self, ip: IpAddr) {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Counts a connection in; false (and not counted) when the listener
    /// holds [`ClientLimits::max_connections`]. See
    /// [`ConnGuard::connection_closed`].
    pub(crate) fn connection_opened(&self) -> bool {
        let max = self.limits.max_connections as usize;
        let counted = self
            .open
            .fetch_update(Relaxed, Relaxed, |n| (max == 0 || n < max).then_some(n + 1));
        match counted {
            Ok(before) => {
                self.peak.fetch_max(before + 1, Relaxed);
                true
            }
            Err(_) => {
                self.metrics.rejected_over_cap.inc();
                false
            }
        }
    }

    /// Counts a connection out; true when that ends a flood: at least
    /// [`FLOOD`] connections were open and three quarters are gone.
    pub(crate) fn connection_closed(&self) -> bool {
        let open = self.open.fetch_sub(1, Relaxed).saturating_sub(1);
        let peak = self.peak.load(Relaxed);
        peak >= FLOOD
            && open <= peak / 4
            && self
                .peak
                .compare_exchange(peak, open, Relaxed, Relaxed)
                .is_ok()
    }

    /// Open connections held by `ip` (tests, debugging).
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.shard(&ip)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

/// The client's address of a connection, if it is an IP one.
fn peer_of(digest: &SocketDigest) -> Option<SocketAddr> {
    digest.peer_addr().and_then(|a| a.as_inet()).copied()
}

/// One connection's slot; released when the connection ends.
pub struct Permit(Option<(Arc<ConnGuard>, IpAddr)>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((guard, ip)) = self.0.take() {
            guard.release(ip);
        }
    }
}

/// Refuses, before the TLS handshake, a client already at its cap.
#[derive(Clone)]
pub struct CapFilter(pub Arc<ConnGuard>);

impl std::fmt::Debug for CapFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CapFilter")
    }
}

#[async_trait]
impl ConnectionFilter for CapFilter {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        match addr {
            Some(a) if self.0.at_cap(a.ip()) => {
                self.0.metrics.rejected_per_ip.inc();
                false
            }
            _ => true,
        }
    }
}
