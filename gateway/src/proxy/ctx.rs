//! Per-request state of the proxy, typed by what the request has reached:
//! routed to a target, then holding a pool slot and an endpoint. What a
//! request holds is given back when its state is dropped, whatever path the
//! request took.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use prometheus::IntGauge;

use std::net::IpAddr;

use crate::edge::client_ip::Client;
use crate::ratelimit::per_client::ClientSlot;
use crate::runtime::RouteTarget;
use crate::upstream::{Endpoint, UpstreamPool};

/// Per-request state.
pub struct Ctx {
    pub start: Instant,
    /// Counts the request in `vestibule_active_requests` while it lives.
    _in_flight: InFlight,
    /// The request's authority as sent (Host, or `:authority`), validated.
    pub authority: Option<HeaderValue>,
    /// The `X-Tenant-Id` of the matched host, if a tenant owns it.
    pub tenant_header: Option<HeaderValue>,
    pub routed: Option<Routed>,
    /// Request body bytes the route still takes (`proxy-body-size`).
    pub body_left: Option<u64>,
    /// The real client (see `edge::client_ip`), once the head is in.
    pub client_ip: Option<IpAddr>,
    /// What only some requests need, allocated by the first that does: the
    /// per-request state lives in every connection's proxy future (several
    /// copies of it), so it is kept small.
    pub extras: Option<Box<Extras>>,
}

/// The per-request state of the less common features.
#[derive(Default)]
pub struct Extras {
    /// A trusted proxy's address and the X-Forwarded-For chain it sent.
    pub forwarded: Option<(IpAddr, HeaderValue)>,
    /// The `Access-Control-Allow-Origin` an admitted cross-origin request's
    /// response gets.
    pub cors_allow: Option<HeaderValue>,
    /// Headers the auth service's 2xx answer gives the upstream request.
    pub auth_headers: Vec<(http::HeaderName, HeaderValue)>,
    /// The request's place under its route's `limit-connections`.
    pub client_slot: Option<ClientSlot>,
    /// The endpoint the request's affinity cookie names.
    pub sticky: Option<Box<str>>,
}

impl Ctx {
    pub fn new(active: &IntGauge) -> Self {
        Ctx {
            start: Instant::now(),
            _in_flight: InFlight::new(active),
            authority: None,
            tenant_header: None,
            routed: None,
            body_left: None,
            client_ip: None,
            extras: None,
        }
    }

    /// The extras, allocated on first use.
    pub fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Records the request's client.
    pub fn set_client(&mut self, client: Client) {
        self.client_ip = Some(client.ip);
        if let Some(chain) = client.forwarded_for {
            self.extras().forwarded = Some((client.peer, chain));
        }
    }

    /// The request's client, for the forwarding headers.
    pub fn client(&self) -> Option<Client> {
        let ip = self.client_ip?;
        let forwarded = self.extras.as_ref().and_then(|e| e.forwarded.clone());
        Some(match forwarded {
            Some((peer, chain)) => Client {
                ip,
                peer,
                forwarded_for: Some(chain),
            },
            None => Client {
                ip,
                peer: ip,
                forwarded_for: None,
            },
        })
    }

    /// The endpoint the request's affinity cookie names.
    pub fn sticky(&self) -> Option<&str> {
        self.extras.as_ref()?.sticky.as_deref()
    }

    /// The endpoint of the current attempt, if one was picked.
    pub fn endpoint(&self) -> Option<&Arc<Endpoint>> {
        self.routed.as_ref()?.attempt.as_ref().map(|a| &a.endpoint)
    }
}

/// A request with a route target.
pub struct Routed {
    pub target: Arc<RouteTarget>,
    /// The pool the target's action chose.
    pub pool: Arc<UpstreamPool>,
    /// The pool slot, taken with the first endpoint and kept across a retry.
    slot: Option<PoolSlot>,
    /// The current upstream attempt.
    pub attempt: Option<Attempt>,
    /// The endpoint of a failed connect, avoided by the one retry.
    pub failed: Option<SocketAddr>,
}

/// One try at one endpoint.
pub struct Attempt {
    pub endpoint: Arc<Endpoint>,
    pub started: Instant,
}

/// Why no upstream attempt could start (all 503, with `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoUpstream {
    /// The pool has no ready endpoint (left).
    NoEndpoint,
    /// The pool holds its concurrent request cap.
    AtCapacity,
}

impl NoUpstream {
    pub fn body(self) -> &'static str {
        match self {
            NoUpstream::NoEndpoint => "no healthy upstream\n",
            NoUpstream::AtCapacity => "upstream at its connection limit\n",
        }
    }
}

impl Routed {
    pub fn new(target: Arc<RouteTarget>, pool: Arc<UpstreamPool>) -> Self {
        Routed {
            target,
            pool,
            slot: None,
            attempt: None,
            failed: None,
        }
    }

    /// Picks the endpoint of the next attempt (never the one that failed)
    /// and, the first time, takes a pool slot.
    pub fn start_attempt(&mut self, pinned: Option<&str>) -> Result<&Attempt, NoUpstream> {
        let pool = &self.pool;
        // The pinned endpoint first, unless it just failed (then the retry
        // is balanced, and the response re-pins the client).
        let sticky = pinned
            .filter(|_| self.failed.is_none())
            .and_then(|id| pool.pinned(id));
        let endpoint = match sticky {
            Some(ep) => ep,
            None => pool.select(self.failed).ok_or(NoUpstream::NoEndpoint)?,
        };
        if self.slot.is_none() {
            self.slot = Some(PoolSlot::take(pool).ok_or(NoUpstream::AtCapacity)?);
        }
        Ok(self.attempt.insert(Attempt {
            endpoint,
            started: Instant::now(),
        }))
    }
}

// === impl PoolSlot ===

/// One of a pool's concurrent request slots, given back on drop.
struct PoolSlot(Arc<UpstreamPool>);

impl PoolSlot {
    fn take(pool: &Arc<UpstreamPool>) -> Option<PoolSlot> {
        pool.try_acquire().then(|| PoolSlot(pool.clone()))
    }
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        self.0.release();
    }
}

// === impl InFlight ===

/// A request counted in the active-requests gauge until dropped.
struct InFlight(IntGauge);

impl InFlight {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
