//! An accepted HTTP/1 stream with the deadlines of [`ClientLimits`]: the
//! request head's, the idle one between requests, and the request body's
//! minimum rate, enforced at the byte level as reads wait.
//!
//! [`ClientLimits`]: super::ClientLimits

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{ConnGuard, GuardMetrics};

const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

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
pub(super) enum Wait {
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
    early: Bytes,
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
    pub(super) fn new(inner: Stream, guard: &ConnGuard) -> Self {
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
            early: Bytes::new(),
            metrics: guard.metrics.clone(),
        }
    }

    /// Waits, holding no buffer, until the client sends the first bytes of
    /// a request, which are kept for the session.
    pub(super) async fn wait_for_request(
        &mut self,
        within: Duration,
        shutdown: &ShutdownWatch,
    ) -> Wait {
        if *shutdown.borrow() {
            return Wait::Closed;
        }
        let mut shutdown = shutdown.clone();
        let read = std::future::poll_fn(|cx| {
            // On the stack for the poll only: nothing is held while waiting.
            // Uninitialized: zeroing 4 KiB on every poll cost ~4k instructions,
            // three polls a request (the socket read fills what it reports).
            let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut buf = ReadBuf::uninit(&mut tmp);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.early = Bytes::copy_from_slice(buf.filled());
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
        let read = if !this.early.is_empty() {
            let n = buf.remaining().min(this.early.len());
            buf.put_slice(&this.early.split_to(n));
            if this.early.is_empty() {
                // An empty split still shares (and keeps) the allocation.
                this.early = Bytes::new();
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
        if self.early.len() >= buf.len() {
            buf.copy_from_slice(&self.early[..buf.len()]);
            return Ok(true);
        }
        // Pingora peeks only for an h2c preface (off here), on new streams.
        self.inner.try_peek(buf).await
    }
}
