//! Downstream connection guard: bounds what a slow or greedy client can hold.
//!
//! Pingora 0.9 times out each *read* of a request head (60 s), never the
//! head as a whole, and waits for the next request on a kept-alive HTTP/1.1
//! connection without any limit once the client asked for keep-alive. So a
//! client trickling one header byte a minute (slowloris) or idling between
//! requests holds a connection forever. This module wraps every accepted
//! stream ([`Edge`], a `ServerApp` around the proxy) in a [`GuardedStream`]
//! that enforces, at the byte level:
//! - a total deadline for each request head, from the connection's accept or
//!   from the head's first byte (`--header-timeout`; a 408 is sent when part
//!   of a head arrived), lifted when the proxy's `request_filter` sees the
//!   parsed head ([`head_done`]);
//! - an idle deadline between requests (`--keepalive-timeout`), started when
//!   the proxy's `logging` phase ends a request ([`request_done`]);
//!
//! - a minimum rate for a request body (`--body-min-rate`): the client may
//!   keep a body read waiting at most `--header-timeout` plus the time its
//!   bytes so far earn at that rate, so a body trickled at a byte every few
//!   seconds is cut (408), while an upload the upstream reads slowly is not
//!   (only time spent waiting on the client counts), from [`head_done`]
//!   until the proxy has read the body ([`body_done`]);
//!
//! and caps the connections one client IP holds (`--max-connections-per-ip`),
//! checked before the TLS handshake too (a `ConnectionFilter`). Body reads
//! and response writes also get Pingora's per-operation timeouts from the
//! proxy (`--client-timeout`). HTTP/2 connections skip these deadlines
//! (frames interleave; Pingora's `h2_idle_timeout` bounds them).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::listeners::ConnectionFilter;
use pingora_core::protocols::http::ServerSession;

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

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
            body_min_rate: 1024,
        }
    }
}

/// Counters of what the guard refused or cut.
#[derive(Clone)]
pub struct GuardMetrics {
    pub rejected_per_ip: IntCounter,
    pub header_timeouts: IntCounter,
    pub idle_timeouts: IntCounter,
    pub body_timeouts: IntCounter,
}

const SHARDS: usize = 64;

/// Open connections that make a flood worth giving memory back after.
const FLOOD: usize = 512;

/// mimalloc decommits the pages that connections freed only after its
/// purge delay, and only when the owning thread later allocates or frees a
/// page in the same segment, or frees into the arena; after a flood the
/// worker may sit idle, so that memory would stay resident. Once the delay
/// has passed, a large block (its own page, in this thread's segments) and
/// a huge one (past mimalloc's 512 KiB size classes, from the arena) run the
/// due purges, as `control::settle` does after a config load.
async fn give_memory_back() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drop(std::hint::black_box(vec![1u8; 200 * 1024]));
    drop(std::hint::black_box(vec![1u8; 1 << 20]));
}

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
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
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
        let Some(peer) = digest.peer_addr().and_then(|a| a.as_inet()).copied() else {
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

    /// Counts a connection in; see [`ConnGuard::connection_closed`].
    fn connection_opened(&self) {
        let open = self.open.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(open, Relaxed);
    }

    /// Counts a connection out; true when that ends a flood: at least
    /// [`FLOOD`] connections were open and three quarters are gone.
    fn connection_closed(&self) -> bool {
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

// === impl Edge ===

/// The `ServerApp` Pingora runs: takes the connection slot, wraps the
/// stream, hands it to the proxy.
pub struct Edge<A> {
    app: Arc<A>,
    guard: Arc<ConnGuard>,
}

impl<A> Edge<A> {
    pub fn new(app: A, guard: Arc<ConnGuard>) -> Self {
        Edge {
            app: Arc::new(app),
            guard,
        }
    }
}

const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 36\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections from this client";
const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

#[async_trait]
impl<A> ServerApp for Edge<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let Some(permit) = self.guard.acquire_for(&stream) else {
            if !h2 {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(TOO_MANY).await;
                    let _ = stream.flush().await;
                })
                .await;
            }
            return None;
        };
        self.guard.connection_opened();
        let out = if h2 {
            self.app.process_new(stream, shutdown).await
        } else {
            self.serve_http1(GuardedStream::new(stream, &self.guard), shutdown)
                .await
        };
        drop(permit);
        if self.guard.connection_closed() {
            tokio::spawn(give_memory_back());
        }
        out
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

impl<A> Edge<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    /// Pingora's HTTP/1 keep-alive loop, with the wait for each request's
    /// first bytes taken out of it: Pingora waits inside a session, holding
    /// its 4 KiB head buffer and the whole proxy future (~40 KiB an idle
    /// connection); here a connection between requests holds only its
    /// stream. Returns `None`: the connection is done when this returns.
    async fn serve_http1(
        self: &Arc<Self>,
        stream: GuardedStream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = &self.guard.limits;
        let mut stream = Box::new(stream);
        // A new connection's head is due within the header timeout.
        match stream
            .wait_for_request(limits.header_timeout, shutdown)
            .await
        {
            Wait::Request => {}
            Wait::Closed => return None,
            Wait::TimedOut => {
                self.guard.metrics.header_timeouts.inc();
                return None;
            }
        }
        let mut persistent: Option<HttpPersistentSettings> = None;
        loop {
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    // As Pingora's own loop sets up a connection's first session.
                    session.set_keepalive((!*shutdown.borrow()).then_some(60));
                    session.set_keepalive_reuses_remaining(
                        self.app
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let reused = self.app.process_new_http(session, shutdown).await?;
            let (next, settings) = reused.consume();
            // Pingora hands back the stream it was given. (HTTP/1.1
            // pipelining is off, so no bytes of the next request are
            // waiting in `settings`.)
            stream = next.into_any().downcast::<GuardedStream>().ok()?;
            match stream
                .wait_for_request(limits.keepalive_timeout, shutdown)
                .await
            {
                Wait::Request => {}
                Wait::Closed => return None,
                Wait::TimedOut => {
                    self.guard.metrics.idle_timeouts.inc();
                    return None;
                }
            }
            persistent = settings;
        }
    }
}

// === impl GuardedStream ===

/// Where a connection is in its request cycle; each phase has its own
/// deadline rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for the first byte of a request (keep-alive idle).
    Idle = 0,
    /// Part of a request head has arrived (or the connection is new).
    Head = 1,
    /// The head was parsed and its body is being read: the minimum rate.
    Body = 2,
    /// Body read (or none): Pingora's per-operation timeouts apply.
    Request = 3,
}

impl Phase {
    fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Idle,
            1 => Phase::Head,
            2 => Phase::Body,
            _ => Phase::Request,
        }
    }
}

/// How the wait for a request's first bytes ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Request,
    /// The client closed or failed, or the server is shutting down.
    Closed,
    TimedOut,
}

/// Time spent waiting on a request body's bytes, against what they earn.
#[derive(Debug, Default)]
struct BodyClock {
    bytes: u64,
    waited: Duration,
    /// When the read now pending started waiting.
    since: Option<Instant>,
}

/// An accepted stream with the head and idle deadlines of [`ClientLimits`].
pub struct GuardedStream {
    inner: Stream,
    /// Set by the proxy through a shared reference to the stream.
    phase: AtomicU8,
    /// The phase the deadline belongs to.
    armed: Phase,
    /// When the armed phase ends the connection; `None` until a read first
    /// waits in that phase (a request head that arrives in one read never
    /// reads the clock or touches the timer).
    deadline: Option<Instant>,
    /// One timer per connection, moved to each new deadline: no allocation
    /// or timer-wheel removal per request. When a phase ends before its
    /// deadline the timer stays set; its late wake-up only re-polls the
    /// connection, which finds nothing due.
    timer: Pin<Box<tokio::time::Sleep>>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    body_min_rate: u32,
    body: BodyClock,
    /// The first bytes of the next request, read by [`wait_for_request`]
    /// while no session existed; served before the socket's.
    ///
    /// [`wait_for_request`]: GuardedStream::wait_for_request
    early: Vec<u8>,
    early_pos: usize,
    metrics: GuardMetrics,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase.load(Relaxed))
            .finish()
    }
}

impl GuardedStream {
    fn new(inner: Stream, guard: &ConnGuard) -> Self {
        let l = &guard.limits;
        // A new connection's first head counts from the accept.
        let deadline = Instant::now() + l.header_timeout;
        GuardedStream {
            inner,
            phase: AtomicU8::new(Phase::Head as u8),
            armed: Phase::Head,
            deadline: Some(deadline),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            header_timeout: l.header_timeout,
            keepalive_timeout: l.keepalive_timeout,
            body_min_rate: l.body_min_rate,
            body: BodyClock::default(),
            early: Vec::new(),
            early_pos: 0,
            metrics: guard.metrics.clone(),
        }
    }

    /// Waits, holding no buffer, until the client sends the first bytes of
    /// a request, which are kept for the session.
    async fn wait_for_request(&mut self, within: Duration, shutdown: &ShutdownWatch) -> Wait {
        if *shutdown.borrow() {
            return Wait::Closed;
        }
        let mut shutdown = shutdown.clone();
        let read = std::future::poll_fn(|cx| {
            // On the stack for the poll only: nothing is held while waiting.
            let mut tmp = [0u8; 4096];
            let mut buf = ReadBuf::new(&mut tmp);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.early = buf.filled().to_vec();
                    self.early_pos = 0;
                    Poll::Ready(Wait::Request)
                }
                Poll::Ready(_) => Poll::Ready(Wait::Closed),
                Poll::Pending => Poll::Pending,
            }
        });
        tokio::select! {
            got = tokio::time::timeout(within, read) => got.unwrap_or(Wait::TimedOut),
            _ = shutdown.changed() => Wait::Closed,
        }
    }

    /// Starts `phase`; its deadline is set when a read first has to wait.
    fn arm(&mut self, phase: Phase) {
        self.armed = phase;
        self.deadline = None;
        if phase == Phase::Body {
            self.body = BodyClock::default();
        }
    }

    /// Whether the armed phase's deadline has passed (registering the
    /// timer's wake-up when it has not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = match self.armed {
            Phase::Idle => *self
                .deadline
                .get_or_insert_with(|| Instant::now() + self.keepalive_timeout),
            Phase::Head => *self
                .deadline
                .get_or_insert_with(|| Instant::now() + self.header_timeout),
            Phase::Body if self.body_min_rate > 0 => {
                // The wait allowed so far: the grace plus what the bytes
                // received earn at the minimum rate, less what was waited.
                let earned =
                    Duration::from_secs_f64(self.body.bytes as f64 / f64::from(self.body_min_rate));
                let left = (self.header_timeout + earned).saturating_sub(self.body.waited);
                *self.body.since.get_or_insert_with(Instant::now) + left
            }
            Phase::Body | Phase::Request => return false,
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

/// The guarded stream under a Pingora stream, if it is one.
fn guarded(stream: Option<&Stream>) -> Option<&GuardedStream> {
    stream?.as_any().downcast_ref::<GuardedStream>()
}

/// The request head was parsed: lift the head deadline; a body to read
/// is held to the minimum rate.
pub fn head_done(stream: Option<&Stream>, has_body: bool) {
    if let Some(g) = guarded(stream) {
        let phase = if has_body {
            Phase::Body
        } else {
            Phase::Request
        };
        g.phase.store(phase as u8, Relaxed);
    }
}

/// The proxy has read the whole request body.
pub fn body_done(stream: Option<&Stream>) {
    if let Some(g) = guarded(stream) {
        g.phase.store(Phase::Request as u8, Relaxed);
    }
}

/// The request is over: the connection idles until the next one.
pub fn request_done(stream: Option<&Stream>) {
    if let Some(g) = guarded(stream) {
        g.phase.store(Phase::Idle as u8, Relaxed);
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let phase = Phase::from_u8(this.phase.load(Relaxed));
        if phase != this.armed {
            this.arm(phase);
        }
        let before = buf.filled().len();
        let read = if this.early_pos < this.early.len() {
            let n = buf.remaining().min(this.early.len() - this.early_pos);
            buf.put_slice(&this.early[this.early_pos..this.early_pos + n]);
            this.early_pos += n;
            if this.early_pos == this.early.len() {
                this.early = Vec::new();
                this.early_pos = 0;
            }
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        match read {
            Poll::Ready(Ok(())) => {
                let got = buf.filled().len() - before;
                match phase {
                    Phase::Idle if got > 0 => {
                        // The next request started: its head has its own deadline.
                        this.phase.store(Phase::Head as u8, Relaxed);
                        this.arm(Phase::Head);
                    }
                    Phase::Body => {
                        if let Some(since) = this.body.since.take() {
                            this.body.waited += since.elapsed();
                        }
                        this.body.bytes += got as u64;
                    }
                    _ => {}
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if !this.expired(cx) {
                    return Poll::Pending;
                }
                // The connection ends here; no deadline after this one.
                this.arm(Phase::Request);
                let why = match phase {
                    Phase::Idle => {
                        // A quiet keep-alive connection: end it like a client
                        // close (Pingora then drops the connection).
                        this.metrics.idle_timeouts.inc();
                        return Poll::Ready(Ok(()));
                    }
                    Phase::Body => {
                        // Pingora answers the failed body read itself (408).
                        this.metrics.body_timeouts.inc();
                        "request body slower than the minimum rate"
                    }
                    Phase::Head | Phase::Request => {
                        this.metrics.header_timeouts.inc();
                        // Best effort: tell the client why, without waiting on it.
                        let _ = Pin::new(&mut this.inner).poll_write(cx, TIMEOUT_408);
                        let _ = Pin::new(&mut this.inner).poll_flush(cx);
                        "request head not received in time"
                    }
                };
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let early = &self.early[self.early_pos..];
        if early.len() >= buf.len() {
            buf.copy_from_slice(&early[..buf.len()]);
            return Ok(true);
        }
        // Pingora peeks only for an h2c preface (off here), on new streams.
        self.inner.try_peek(buf).await
    }
}
