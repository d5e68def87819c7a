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
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::ConnectionFilter;

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

/// Open connections per client IP, sharded so accepts on different cores
/// rarely meet on one lock (touched per connection, never per request).
pub struct ConnGuard {
    limits: ClientLimits,
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
    hasher: ahash::RandomState,
    metrics: GuardMetrics,
}

impl ConnGuard {
    pub fn new(limits: ClientLimits, metrics: GuardMetrics) -> Arc<Self> {
        Arc::new(ConnGuard {
            limits,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: ahash::RandomState::new(),
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
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            drop(map);
            self.metrics.rejected_per_ip.inc();
            return None;
        }
        *n += 1;
        Some(Permit(Some((self.clone(), ip))))
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
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Edge<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let Some(permit) = self.guard.acquire(ip) else {
            if !h2 {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(TOO_MANY).await;
                    let _ = stream.flush().await;
                })
                .await;
            }
            return None;
        };
        let stream: Stream = if h2 {
            stream
        } else {
            Box::new(GuardedStream::new(stream, &self.guard))
        };
        let out = self.app.process_new(stream, shutdown).await;
        drop(permit);
        out
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
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
            metrics: guard.metrics.clone(),
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
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
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
        self.inner.try_peek(buf).await
    }
}
