//! Upstream pools: weighted round robin on pingora-load-balancing, active TCP
//! health checks run by our own driver (see [`health`]), passive
//! ejection after consecutive failures, and ExternalName pools resolved by DNS.
//!
//! A pool is immutable in its spec; a config swap that leaves a pool's spec
//! unchanged reuses the same `Arc<UpstreamPool>`, so its health state,
//! counters and round-robin position survive the swap.

pub mod health;
mod protocol;
mod ring;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::FutureExt;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::TcpHealthCheck;
use pingora_load_balancing::{Backend, Backends};
use vestibule_config::model::{Pool, PoolId, UpstreamProtocol};

use protocol::Wire;
use ring::Ring;

/// How pools connect, time out, and eject endpoints.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an idle upstream connection stays in the keepalive pool.
    pub idle_timeout: Duration,
    pub health_interval: Duration,
    /// Consecutive connect failures or 5xx that eject an endpoint.
    pub eject_after: u32,
    pub eject_backoff: Duration,
    pub dns_interval: Duration,
    /// Concurrent upstream requests (so connections in use) per pool on
    /// this replica; more get 503 at once rather than queueing. 0: no cap.
    pub max_connections: u32,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            health_interval: Duration::from_secs(5),
            eject_after: 5,
            eject_backoff: Duration::from_secs(10),
            dns_interval: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

// === impl Endpoint ===

/// One upstream address: its precomputed peer and passive-health counters.
pub struct Endpoint {
    pub backend: Backend,
    pub addr: SocketAddr,
    /// The endpoint's name in affinity cookies: a hash of the pool and the
    /// address, so it is the same on every replica and shows no address.
    pub affinity_id: Box<str>,
    /// Cloned per request instead of rebuilt: options are set once here.
    peer: HttpPeer,
    failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which the endpoint is
    /// ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// Healthy and not ejected: the balancer's state, copied here when it
    /// changes so a pick reads a flag instead of hashing the endpoint.
    ready: AtomicBool,
}

impl Endpoint {
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }
}

/// Backends set by us (static endpoints or DNS answers) for the balancer.
#[derive(Default)]
struct Discovered(ArcSwap<BTreeSet<Backend>>);

#[async_trait]
impl ServiceDiscovery for Discovered {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((BTreeSet::clone(&self.0.load()), HashMap::new()))
    }
}

#[derive(Clone)]
struct SharedDiscovery(Arc<Discovered>);

#[async_trait]
impl ServiceDiscovery for SharedDiscovery {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        self.0.discover().await
    }
}

type EndpointMap = HashMap<SocketAddr, Arc<Endpoint>, ahash::RandomState>;

/// A pool's endpoints: by address, and in selection order.
#[derive(Default)]
struct EndpointSet {
    map: EndpointMap,
    ring: Ring,
}

/// The first 16 hex digits of SHA-256 over the pool id and the address.
fn affinity_id(pool: &PoolId, addr: SocketAddr) -> Box<str> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(pool.as_str().as_bytes());
    h.update([0]);
    h.update(addr.to_string().as_bytes());
    hex::encode(&h.finalize()[..8]).into()
}

// === impl UpstreamPool ===

pub struct UpstreamPool {
    pub id: PoolId,
    pub spec: Pool,
    /// h2c or TLS; `None`: HTTP/1.1 over TCP.
    wire: Option<Wire>,
    /// Membership, active health checks and ejections (Pingora's); the
    /// picks are the ring's, so no selector of Pingora's is built.
    backends: Backends,
    discovery: Arc<Discovered>,
    endpoints: ArcSwap<EndpointSet>,
    /// The next pick's place in the ring.
    next: AtomicUsize,
    settings: Arc<UpstreamSettings>,
    epoch: Instant,
    /// Set once an ExternalName pool has resolved at least once.
    resolved: AtomicBool,
    pub ejections: AtomicU64,
    /// Requests holding an upstream connection of this pool right now.
    in_flight: AtomicU32,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("id", &self.id)
            .finish()
    }
}

impl UpstreamPool {
    pub fn new(id: PoolId, spec: Pool, settings: Arc<UpstreamSettings>) -> Arc<Self> {
        Self::speaking(id, spec, None, settings)
    }

    /// A pool whose endpoints speak `protocol` (h2c or TLS).
    pub fn speaking(
        id: PoolId,
        spec: Pool,
        protocol: Option<UpstreamProtocol>,
        settings: Arc<UpstreamSettings>,
    ) -> Arc<Self> {
        let discovery = Arc::new(Discovered::default());
        let mut backends = Backends::new(Box::new(SharedDiscovery(discovery.clone())));
        let mut hc = TcpHealthCheck::new();
        hc.peer_template.options.connection_timeout = Some(settings.connect_timeout);
        // Two failed probes flip an endpoint down, so one lost SYN does not;
        // one success brings it back.
        hc.consecutive_failure = 2;
        backends.set_health_check(hc);
        let pool = Arc::new(UpstreamPool {
            id,
            backends,
            discovery,
            endpoints: ArcSwap::default(),
            next: AtomicUsize::new(0),
            settings,
            epoch: Instant::now(),
            resolved: AtomicBool::new(false),
            ejections: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            spec,
            wire: protocol.map(Wire::new),
        });
        if let Pool::Endpoints(eps) = &pool.spec {
            let addrs = eps.iter().map(|e| (e.address, e.weight.max(1) as usize));
            pool.set_backends(addrs.collect());
            pool.resolved.store(true, Relaxed);
        }
        pool
    }

    /// Replaces the endpoint set (static config or a DNS answer).
    fn set_backends(&self, addrs: Vec<(SocketAddr, usize)>) {
        let old = self.endpoints.load();
        let mut map = EndpointMap::default();
        let mut order = Vec::with_capacity(addrs.len());
        let mut set = BTreeSet::new();
        for (addr, weight) in addrs {
            let backend = Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(addr),
                weight,
                ext: Default::default(),
            };
            let ep = match old.map.get(&addr) {
                Some(ep) if ep.backend.weight == weight => ep.clone(),
                _ => Arc::new(Endpoint {
                    peer: self.make_peer(addr),
                    backend: backend.clone(),
                    affinity_id: affinity_id(&self.id, addr),
                    addr,
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    ready: AtomicBool::new(false),
                }),
            };
            if map.insert(addr, ep.clone()).is_none() {
                order.push((ep, weight));
            }
            set.insert(backend);
        }
        self.discovery.0.store(Arc::new(set));
        // The store above is all discovery does, so the update is ready at
        // once: the balancer knows the new endpoints' health before their
        // flags are copied from it.
        if let Some(Err(e)) = self.backends.update(|_| {}).now_or_never() {
            tracing::warn!(pool = %self.id, error = %e, "pool update failed");
        }
        let ring = Ring::new(order);
        self.endpoints.store(Arc::new(EndpointSet { map, ring }));
        self.sync_ready();
    }

    /// Copies the balancer's health and ejection state into the endpoints'
    /// flags (after a health check, an ejection, a re-admission).
    fn sync_ready(&self) {
        for ep in self.endpoints.load().ring.endpoints() {
            ep.ready.store(self.backends.ready(&ep.backend), Relaxed);
        }
    }

    fn make_peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = Wire::peer(self.wire.as_ref(), addr);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.settings.connect_timeout);
        o.read_timeout = Some(self.settings.read_timeout);
        o.write_timeout = Some(self.settings.write_timeout);
        o.idle_timeout = Some(self.settings.idle_timeout);
        peer
    }

    /// Picks the next ready endpoint, skipping `exclude` (the endpoint a
    /// retried attempt just failed on).
    #[inline]
    pub fn select(&self, exclude: Option<SocketAddr>) -> Option<Arc<Endpoint>> {
        let n = self.next.fetch_add(1, Relaxed);
        self.endpoints
            .load()
            .ring
            .pick(n, |ep| {
                ep.ready.load(Relaxed) && exclude.is_none_or(|x| ep.addr != x)
            })
            .cloned()
    }

    /// The endpoint an affinity cookie names, if it is ready.
    pub fn pinned(&self, id: &str) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let ep = set
            .ring
            .endpoints()
            .iter()
            .find(|e| &*e.affinity_id == id)?;
        ep.ready.load(Relaxed).then(|| ep.clone())
    }

    /// Takes one of the pool's connection slots; `false` at the cap.
    #[inline]
    pub fn try_acquire(&self) -> bool {
        let max = self.settings.max_connections;
        if max == 0 {
            self.in_flight.fetch_add(1, Relaxed);
            return true;
        }
        self.in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    /// Gives back a slot taken by [`Self::try_acquire`].
    #[inline]
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// The protocol the pool speaks, if not HTTP/1.1 over TCP.
    pub fn protocol(&self) -> Option<&UpstreamProtocol> {
        self.wire.as_ref().map(|w| &w.protocol)
    }

    pub fn is_external(&self) -> bool {
        matches!(self.spec, Pool::ExternalName { .. })
    }

    pub fn resolved(&self) -> bool {
        self.resolved.load(Relaxed)
    }

    // --- passive health ---

    /// A connect failure, an upstream I/O error or a 5xx from `ep`.
    pub fn record_failure(&self, ep: &Endpoint) {
        let n = ep.failures.fetch_add(1, Relaxed) + 1;
        if n >= self.settings.eject_after && ep.ejected_until.load(Relaxed) == 0 {
            let until = self.now_ms() + self.settings.eject_backoff.as_millis() as u64;
            ep.ejected_until.store(until.max(1), Relaxed);
            self.backends.set_enable(&ep.backend, false);
            ep.ready.store(false, Relaxed);
            self.ejections.fetch_add(1, Relaxed);
            tracing::warn!(pool = %self.id, endpoint = %ep.addr, failures = n, "endpoint ejected");
        }
    }

    #[inline]
    pub fn record_success(&self, ep: &Endpoint) {
        // Read first: the common case writes nothing, so the cache line stays shared.
        if ep.failures.load(Relaxed) != 0 {
            ep.failures.store(0, Relaxed);
        }
    }

    /// Re-admits endpoints whose ejection backoff is over; they then face
    /// the active checks and the passive counter again.
    pub fn readmit_expired(&self) {
        let now = self.now_ms();
        for ep in self.endpoints.load().ring.endpoints() {
            let until = ep.ejected_until.load(Relaxed);
            if until != 0 && until <= now {
                ep.failures.store(0, Relaxed);
                ep.ejected_until.store(0, Relaxed);
                self.backends.set_enable(&ep.backend, true);
                ep.ready.store(self.backends.ready(&ep.backend), Relaxed);
                tracing::info!(pool = %self.id, endpoint = %ep.addr, "endpoint re-admitted");
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    // --- active health and DNS, driven by the controller ---

    pub async fn run_health_check(&self) {
        if !self.endpoints.load().map.is_empty() {
            self.backends.run_health_check(true).await;
            self.sync_ready();
        }
    }

    /// (ready, total) endpoint counts.
    pub fn health_counts(&self) -> (usize, usize) {
        let set = self.endpoints.load();
        let eps = set.ring.endpoints();
        let ready = eps.iter().filter(|e| e.ready.load(Relaxed)).count();
        (ready, eps.len())
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.load().map.len()
    }

    /// Resolves an ExternalName pool; keeps the previous answer on failure.
    pub async fn resolve(&self) {
        let Pool::ExternalName { host, port } = &self.spec else {
            return;
        };
        let lookup = tokio::net::lookup_host((host.as_str(), *port));
        match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(addrs)) => {
                let mut addrs: Vec<(SocketAddr, usize)> = addrs.map(|a| (a, 1)).collect();
                addrs.sort();
                addrs.dedup();
                let current: Vec<SocketAddr> = {
                    let mut v: Vec<_> = self.endpoints.load().map.keys().copied().collect();
                    v.sort();
                    v
                };
                if current != addrs.iter().map(|a| a.0).collect::<Vec<_>>() {
                    tracing::info!(pool = %self.id, %host, endpoints = addrs.len(), "ExternalName resolved");
                    self.set_backends(addrs);
                }
                self.resolved.store(true, Relaxed);
            }
            Ok(Err(e)) => tracing::warn!(pool = %self.id, %host, error = %e, "DNS lookup failed"),
            Err(_) => tracing::warn!(pool = %self.id, %host, "DNS lookup timed out"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vestibule_config::model::Endpoint as Ep;

    fn pool(weights: &[u32]) -> Arc<UpstreamPool> {
        let eps = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Ep {
                address: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                weight: w,
            })
            .collect();
        let settings = UpstreamSettings {
            eject_after: 3,
            ..Default::default()
        };
        UpstreamPool::new(PoolId::new("p"), Pool::Endpoints(eps), Arc::new(settings))
    }

    fn counts(p: &UpstreamPool, n: usize) -> HashMap<u16, usize> {
        let mut c = HashMap::new();
        for _ in 0..n {
            *c.entry(p.select(None).unwrap().addr.port()).or_default() += 1;
        }
        c
    }

    #[test]
    fn weighted_round_robin_is_exact_over_a_cycle() {
        let p = pool(&[9, 1]);
        let c = counts(&p, 1000);
        assert_eq!(c[&1000], 900);
        assert_eq!(c[&1001], 100);
        let p = pool(&[1, 1, 1]);
        let c = counts(&p, 300);
        assert!(c.values().all(|&n| n == 100), "{c:?}");
    }

    #[test]
    fn huge_weights_make_a_bounded_ring_that_keeps_their_ratio() {
        let p = pool(&[4_000_000_000, 1_000_000_000, 1]);
        let slots = p.endpoints.load().ring.slots();
        assert!(slots <= 65_536 + 3, "{slots} slots");
        let c = counts(&p, slots);
        assert_eq!(c[&1002], 1, "the lightest keeps one slot: {c:?}");
        let ratio = c[&1000] as f64 / c[&1001] as f64;
        assert!((ratio - 4.0).abs() < 0.01, "{c:?}");
    }

    #[test]
    fn exclusion_picks_another_endpoint() {
        let p = pool(&[1, 1]);
        for _ in 0..10 {
            let a = p.select(None).unwrap().addr;
            let b = p.select(Some(a)).unwrap().addr;
            assert_ne!(a, b);
        }
    }

    #[test]
    fn consecutive_failures_eject_until_backoff() {
        let p = pool(&[1, 1]);
        let ep = p.endpoints.load().map.values().next().unwrap().clone();
        p.record_failure(&ep);
        p.record_success(&ep);
        p.record_failure(&ep);
        p.record_failure(&ep);
        assert_eq!(p.health_counts(), (2, 2), "success resets the count");
        p.record_failure(&ep);
        assert_eq!(p.health_counts(), (1, 2));
        let c = counts(&p, 20);
        assert_eq!(c.len(), 1, "ejected endpoint never selected: {c:?}");
        // Backoff over: re-admitted.
        ep.ejected_until.store(1, Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        p.readmit_expired();
        assert_eq!(p.health_counts(), (2, 2));
    }

    #[test]
    fn connection_cap_holds_and_releases() {
        let settings = UpstreamSettings {
            max_connections: 2,
            ..Default::default()
        };
        let p = UpstreamPool::new(
            PoolId::new("p"),
            Pool::Endpoints(vec![]),
            Arc::new(settings),
        );
        assert!(p.try_acquire() && p.try_acquire());
        assert!(!p.try_acquire());
        p.release();
        assert!(p.try_acquire());
        assert_eq!(p.in_flight(), 2);
    }

    #[test]
    fn the_one_ready_endpoint_is_found_and_a_down_pool_gives_none() {
        let p = pool(&[3, 1, 1, 1, 1, 1, 1, 1]);
        let eps: Vec<_> = p.endpoints.load().map.values().cloned().collect();
        let ready = eps.iter().find(|e| e.addr.port() == 1005).unwrap();
        for ep in eps.iter().filter(|e| e.addr != ready.addr) {
            for _ in 0..3 {
                p.record_failure(ep);
            }
        }
        assert_eq!(p.health_counts(), (1, 8));
        for _ in 0..500 {
            assert_eq!(p.select(None).unwrap().addr, ready.addr);
        }
        assert!(p.select(Some(ready.addr)).is_none());
        for _ in 0..3 {
            p.record_failure(ready);
        }
        assert!(p.select(None).is_none());
    }

    #[test]
    fn empty_pool_selects_nothing() {
        let p = pool(&[]);
        assert!(p.select(None).is_none());
    }
}
