//! The `ProxyHttp` impl: each phase does one thing and delegates to the route
//! table, the pools and the metrics. `request_filter` routes the request or
//! answers it (400/414/431, 308, 421, 404, 429); `upstream_peer` picks the
//! endpoint and takes the pool slot (every 503 comes from there, answered
//! by `fail_to_proxy` in one shape); per-request state lives in [`Ctx`].

#[cfg(test)]
mod alloc_free;
mod ctx;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST, LOCATION};
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::auth::{AuthClient, AuthVerdict, Vars};
use crate::conn;
use crate::cors::CorsDecision;
use crate::edge;
use crate::edge::client_ip::TrustedProxies;
use crate::edge::headers::{self, Origin, Underscores};
use crate::filters::Choice;
use crate::ratelimit::Refusal;
use crate::route::{normalize_host, BadHost, HostBuf, Lookup};
use crate::runtime::{Runtime, Shared};
use crate::tls::{same_cert, TlsConn};

pub use ctx::{Ctx, NoUpstream, Routed};

/// Listener-level settings of the proxy.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Whether this instance serves the TLS listener (`X-Forwarded-Proto`,
    /// and no redirect to https).
    pub tls: bool,
    /// The public HTTPS port for redirects (omitted from the URL when 443).
    pub https_port: u16,
    /// Request line plus headers larger than this get 431.
    pub max_header_bytes: usize,
    /// Where each request is logged (`--no-access-log`: nowhere).
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// Longest pause while reading a request body or writing a response
    /// (Pingora's per-operation downstream timeouts).
    pub client_timeout: Duration,
    /// Request headers with `_` in their name.
    pub underscores: Underscores,
    /// Peers whose X-Forwarded-For names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            tls: false,
            https_port: 443,
            max_header_bytes: 32 * 1024,
            access_log: None,
            client_timeout: Duration::from_secs(30),
            underscores: Underscores::Drop,
            trusted_proxies: Arc::default(),
        }
    }
}

pub struct Gateway {
    shared: Arc<Shared>,
    settings: ProxySettings,
    /// The client of `auth-url` checks, made at the first one.
    auth: std::sync::OnceLock<Arc<AuthClient>>,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>, settings: ProxySettings) -> Self {
        Gateway {
            shared,
            settings,
            auth: std::sync::OnceLock::new(),
        }
    }

    /// Runs the routed request's auth check, if its route has one.
    async fn authenticate(&self, session: &Session, ctx: &mut Ctx) -> Option<Decision> {
        let target = ctx.routed.as_ref()?.target.clone();
        let check = target.filters.auth()?;
        let req = session.req_header();
        let host = ctx
            .authority
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .unwrap_or_default();
        let request_uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let vars = Vars {
            scheme: if self.settings.tls { "https" } else { "http" },
            host,
            request_uri,
        };
        let client = self.auth.get_or_init(AuthClient::new);
        let ip = ctx.client_ip;
        match client.check(check, req, &vars, ip).await {
            AuthVerdict::Pass(headers) => {
                ctx.extras().auth_headers = headers;
                None
            }
            AuthVerdict::Deny(status, challenge) => Some(Decision::AuthDenied(status, challenge)),
            AuthVerdict::SignIn(location) => Some(Decision::Redirect(302, location)),
            AuthVerdict::Fail => Some(Decision::AuthFailed),
        }
    }
}

/// Sends a short plain-text response from a filter.
async fn respond(
    session: &mut Session,
    status: u16,
    body: impl Into<Bytes>,
    extra: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
) -> Result<bool> {
    let body: Bytes = body.into();
    let mut resp = ResponseHeader::build(status, Some(4))?;
    // A 204 carries neither (RFC 9110 §8.6).
    if status != 204 {
        resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    }
    for (name, value) in extra {
        resp.insert_header(name, value)?;
    }
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

/// The TLS facts of the session's connection, set at the handshake.
fn tls_conn(session: &Session) -> Option<&TlsConn> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<TlsConn>()
}

/// Where ACME HTTP-01 validation requests land.
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Whether a request body follows the head (HTTP/1 framing).
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The request's authority: the URI's on HTTP/2 (`:authority`), else the
/// Host header. [`edge::canonicalize`] turned an HTTP/1 absolute-form target
/// into a Host header, and Pingora refused a Host that differs from the
/// URI's authority.
/// Empty authorities are `None`.
fn authority_of(req: &RequestHeader) -> Option<HeaderValue> {
    let value = match req.headers.get(HOST) {
        Some(h) => h.clone(),
        None => HeaderValue::from_str(req.uri.authority()?.as_str()).ok()?,
    };
    (!value.is_empty()).then_some(value)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// No downstream modules. Pingora's default adds a (disabled) response
    /// compression module, whose per-request context and header checks cost
    /// CPU on every request; the gateway passes bodies through unchanged.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx::new(&self.shared.metrics.active_requests)
    }

    /// Routes the request, or answers it: 400/414/431, 308 to https, 421,
    /// 404, 429.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // The head is in: lift its deadline; the body and the response get
        // per-operation timeouts instead of Pingora's 60 s / none.
        conn::head_done(session.stream(), has_body(session.req_header()));
        session.set_read_timeout(Some(self.settings.client_timeout));
        session.set_write_timeout(Some(self.settings.client_timeout));
        let checked = edge::check(session.req_header(), self.settings.max_header_bytes)
            .and_then(|()| edge::canonicalize(session.req_header_mut()));
        // ACME HTTP-01 validation comes first: before routing, redirects to
        // https and rate limits, whatever the host.
        if checked.is_ok() && !self.settings.tls {
            if let Some(answer) = self.acme_http01(session.req_header()) {
                return match answer {
                    Some(key_authorization) => respond(session, 200, key_authorization, None).await,
                    None => {
                        let body = "no pending ACME challenge for this token\n";
                        respond(session, 404, body, None).await
                    }
                };
            }
        }
        let tls = if self.settings.tls {
            tls_conn(session)
        } else {
            None
        };
        if let Some(conn) = tls {
            self.observe_handshake(session, conn);
        }
        let mut decision = match checked {
            Ok(()) => {
                let peer = session.client_addr().and_then(|a| a.as_inet());
                if let Some(p) = peer {
                    let trusted = &self.settings.trusted_proxies;
                    ctx.set_client(trusted.client(p.ip().to_canonical(), session.req_header()));
                }
                let client = ctx.client_ip;
                self.route(session.req_header(), tls, client, ctx)
            }
            Err(why) => Decision::Reject(why),
        };
        let auth = ctx
            .routed
            .as_ref()
            .is_some_and(|r| r.target.filters.auth().is_some());
        if auth && matches!(decision, Decision::Proxy) {
            // Boxed: the check's future (an HTTP client exchange) would
            // otherwise size every connection's proxy future, auth or not.
            if let Some(denied) = Box::pin(self.authenticate(session, ctx)).await {
                decision = denied;
            }
        }
        match decision {
            Decision::Proxy => Ok(false),
            Decision::Reject(why) => {
                // The framing of whatever follows can't be trusted: close.
                session.set_keepalive(None);
                respond(session, why.status(), why.body(), None).await
            }
            Decision::Redirect(status, location) => {
                respond(session, status, "", Some((LOCATION, location))).await
            }
            Decision::Preflight(headers) => respond(session, 204, "", headers).await,
            Decision::AuthDenied(status, challenge) => {
                let challenge = challenge.map(|c| (http::header::WWW_AUTHENTICATE, c));
                respond(session, status, "not authorized\n", challenge).await
            }
            Decision::ClientLimited(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let retry = (http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                respond(
                    session,
                    503,
                    "too many requests from this address\n",
                    Some(retry),
                )
                .await
            }
            Decision::AuthFailed => {
                respond(
                    session,
                    500,
                    "the authentication service did not answer\n",
                    None,
                )
                .await
            }
            Decision::Forbidden => {
                respond(session, 403, "this address may not use this route\n", None).await
            }
            Decision::TooLarge => {
                // The body is not read: the connection can't be reused.
                session.set_keepalive(None);
                respond(session, 413, "request body too large\n", None).await
            }
            Decision::Unresolved => {
                let body = "this route's backend could not be resolved\n";
                respond(session, 500, body, None).await
            }
            Decision::Misdirected => respond(
                session,
                421,
                "this connection's certificate does not cover this host; open a new connection\n",
                None,
            )
            .await,
            Decision::NotFound => {
                respond(session, 404, "no route for this host and path\n", None).await
            }
            Decision::RateLimited(refusal) => {
                self.shared.metrics.rate_limited.inc();
                respond(session, 429, "rate limit exceeded\n", refusal.headers()).await
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A streamed body over the route's limit: 413 (or a cut stream, if
        // the upstream already answered).
        if let (Some(left), Some(chunk)) = (ctx.body_left.as_mut(), body.as_ref()) {
            match left.checked_sub(chunk.len() as u64) {
                Some(rest) => *left = rest,
                None => {
                    return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large")
                }
            }
        }
        if end_of_stream {
            conn::body_done(session.stream());
        }
        Ok(())
    }

    /// Picks the endpoint and takes the pool slot; a retry after a failed
    /// connect picks another endpoint. No endpoint or no slot is a 503
    /// (`fail_to_proxy`).
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let routed = ctx
            .routed
            .as_mut()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in ctx"))?;
        let timeouts = routed.target.timeouts;
        let sticky = ctx.extras.as_ref().and_then(|e| e.sticky.as_deref());
        match routed.start_attempt(sticky) {
            Ok(attempt) => {
                let mut peer = attempt.endpoint.peer();
                let o = &mut peer.options;
                o.read_timeout = timeouts.read.or(o.read_timeout);
                o.connection_timeout = timeouts.connect.or(o.connection_timeout);
                o.write_timeout = timeouts.send.or(o.write_timeout);
                Ok(peer)
            }
            Err(why) => {
                if why == NoUpstream::AtCapacity {
                    self.shared.metrics.pool_overloaded.inc();
                }
                Error::e_explain(ErrorType::HTTPStatus(503), why.body())
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::scrub(upstream, self.settings.underscores);
        // Route edits first: the tenant and forwarding headers set below
        // always win over them.
        if let Some(routed) = &ctx.routed {
            routed.target.filters.on_request(upstream);
        }
        // Cloned, not taken: a retried attempt runs this filter again.
        if let Some(extras) = &ctx.extras {
            for (name, value) in &extras.auth_headers {
                upstream.insert_header(name.clone(), value.clone())?;
            }
        }
        let client = ctx.client();
        let origin = Origin {
            client: client.as_ref(),
            tls: self.settings.tls,
            authority: ctx.authority.as_ref(),
            tenant: ctx.tenant_header.as_ref(),
        };
        headers::set_forwarding(upstream, &origin)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // RFC 9110 §6.2: the response carries the gateway's own version, not
        // the upstream's (an HTTP/1.0 upstream's answer is HTTP/1.1 here).
        if resp.version == http::Version::HTTP_10 {
            resp.set_version(http::Version::HTTP_11);
        }
        if resp.status.is_informational() {
            return Ok(());
        }
        if let Some(routed) = &ctx.routed {
            routed.target.filters.on_response(resp);
            let allow = ctx.extras.as_mut().and_then(|e| e.cors_allow.take());
            if let (Some(cors), Some(allow)) = (routed.target.filters.cors(), allow) {
                cors.mark(resp, allow);
            }
            // Pin the client to the endpoint that answered, unless its
            // cookie already names it.
            if let (Some(sticky), Some(attempt)) = (routed.target.filters.sticky(), &routed.attempt)
            {
                let id = &*attempt.endpoint.affinity_id;
                if ctx.sticky() != Some(id) {
                    sticky.pin(resp, id, self.settings.tls);
                }
            }
        }
        if let Some(Routed {
            target,
            pool,
            attempt: Some(attempt),
            ..
        }) = &ctx.routed
        {
            if resp.status.is_server_error() {
                pool.record_failure(&attempt.endpoint);
            } else {
                pool.record_success(&attempt.endpoint);
            }
            let took = attempt.started.elapsed().as_secs_f64();
            target.stats.observe_upstream(took);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(routed) = ctx.routed.as_mut() else {
            return e;
        };
        if let Some(attempt) = routed.attempt.take() {
            routed.pool.record_failure(&attempt.endpoint);
        }
        // Nothing was sent, so any method may go to one other endpoint.
        if routed.failed.is_none() {
            e.set_retry(true);
        }
        routed.failed = peer.address().as_inet().copied();
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        // A broken reused keepalive connection says nothing about the
        // endpoint's health; a fresh one failing does.
        if !client_reused {
            if let Some(Routed {
                pool,
                attempt: Some(attempt),
                ..
            }) = &ctx.routed
            {
                pool.record_failure(&attempt.endpoint);
            }
        }
        // Pingora's default policy: never retry a non-idempotent request
        // after bytes were sent.
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Maps a failed proxy attempt to its status: every endpoint refusing
    /// or timing out the connect is 503 with `Retry-After` (like an empty
    /// pool); an upstream too slow to answer is 504; other upstream
    /// failures (reset, garbage) are 502.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let (code, retry) = match (e.esource(), e.etype()) {
            (_, HTTPStatus(code)) => (*code, *code == 503),
            (
                ErrorSource::Upstream,
                ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError,
            ) => (503, true),
            (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => (504, false),
            (ErrorSource::Upstream, _) => (502, false),
            (ErrorSource::Downstream, WriteError | ReadError | ConnectionClosed) => (0, false),
            (ErrorSource::Downstream, ReadTimedout | WriteTimedout) => (408, false),
            (ErrorSource::Downstream, _) => (400, false),
            (ErrorSource::Internal | ErrorSource::Unset, _) => (500, false),
        };
        // Once a response header went out, the connection can only be closed.
        if code > 0 && session.response_written().is_none() {
            // The request body may be unread: the connection can't be reused.
            session.set_keepalive(None);
            // A 503 of `upstream_peer` says why (a `NoUpstream` body).
            let body = match (code, e.etype(), &e.context) {
                (503, HTTPStatus(_), Some(why)) => Bytes::from(why.as_str().to_string()),
                (503, _, _) => Bytes::from_static(b"no upstream endpoint reachable\n"),
                _ => Bytes::new(),
            };
            let retry = retry.then(|| (http::header::RETRY_AFTER, HeaderValue::from_static("1")));
            if let Err(err) = respond(session, code, body, retry).await {
                tracing::debug!(error = %err, "cannot send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // The connection now idles until its next request (or closes).
        conn::request_done(session.stream());
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let target = ctx.routed.as_ref().map(|r| &r.target);
        let stats = target.map_or(&self.shared.metrics.unmatched, |t| &t.stats);
        stats.count(if status == 0 { 502 } else { status });
        let Some(log) = &self.settings.access_log else {
            return;
        };
        let req = session.req_header();
        log.log(&crate::access_log::Entry {
            tenant: target
                .and_then(|t| t.tenant.as_ref())
                .map_or("", |t| t.as_str()),
            route: target.map_or("", |t| t.name.as_str()),
            client: ctx.client_ip,
            host: ctx.authority.as_ref().map_or(&[][..], |a| a.as_bytes()),
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            upstream: ctx.endpoint().map(|e| e.addr),
            duration: ctx.start.elapsed(),
            bytes: session.body_bytes_sent(),
            error: e.map(|e| e as &dyn std::fmt::Display),
        });
    }
}

/// What [`Gateway::route`] decided for a request.
enum Decision {
    Proxy,
    /// Refused by the edge checks (smuggling shapes, size limits).
    Reject(edge::Reject),
    /// A redirect: status and `Location`.
    Redirect(u16, HeaderValue),
    /// The client's network may not use the route (403).
    Forbidden,
    /// A CORS preflight, answered here (204).
    Preflight(Vec<(HeaderName, HeaderValue)>),
    /// The auth service said 401 or 403 (with its `WWW-Authenticate`).
    AuthDenied(u16, Option<HeaderValue>),
    /// The auth service gave no usable answer (500).
    AuthFailed,
    /// The client address is over the route's `limit-rps` or
    /// `limit-connections` (503, with when to come back).
    ClientLimited(Duration),
    /// The request body is larger than the route takes (413), said by its
    /// Content-Length before any of it is read.
    TooLarge,
    /// The route's backend (or this request's share of it) could not be
    /// resolved: 500, as the Gateway API requires.
    Unresolved,
    /// The Host names a configured host that the connection's certificate
    /// (chosen by SNI) is not the one for: 421, so a client that coalesced
    /// connections (HTTP/2) opens one for that host instead.
    Misdirected,
    NotFound,
    /// The tenant is over its rate.
    RateLimited(Refusal),
}

impl Gateway {
    /// The routing decision; synchronous so the runtime guard never lives
    /// across an await.
    fn route(
        &self,
        req: &RequestHeader,
        tls: Option<&TlsConn>,
        client: Option<std::net::IpAddr>,
        ctx: &mut Ctx,
    ) -> Decision {
        let authority = authority_of(req);
        let mut buf = HostBuf::new();
        let raw = authority.as_ref().map_or(&[][..], |a| a.as_bytes());
        let host = match normalize_host(raw, &mut buf) {
            Ok(host) => host,
            Err(BadHost::Empty) => "",
            Err(BadHost::Invalid) => {
                return Decision::Reject(edge::Reject::BadRequest("invalid Host\n"))
            }
        };
        ctx.authority = authority;
        let runtime = self.shared.runtime.load();
        let lookup = runtime.routes.lookup(host, &**req);
        if let Some(vhost) = lookup.vhost() {
            if vhost.redirect_http && !self.settings.tls {
                return Decision::Redirect(308, self.https_location(host, req));
            }
            if let Some(conn) = tls {
                if self.misdirected(&runtime, conn, host) {
                    return Decision::Misdirected;
                }
            }
            ctx.tenant_header = vhost.tenant_header.clone();
        }
        let target = match lookup {
            Lookup::Route { route, .. } | Lookup::Default { route, .. } => route,
            Lookup::NoRoute { .. } | Lookup::NoHost => return Decision::NotFound,
        };
        if !target.filters.admits(client) {
            return Decision::Forbidden;
        }
        if let Some(ip) = client {
            match target.filters.per_client(ip) {
                Ok(Some(slot)) => ctx.extras().client_slot = Some(slot),
                Ok(None) => {}
                Err(wait) => return Decision::ClientLimited(wait),
            }
        }
        if let Some(sticky) = target.filters.sticky() {
            if let Some(wanted) = sticky.wanted(req) {
                ctx.extras().sticky = Some(wanted);
            }
        }
        if let Some(cors) = target.filters.cors() {
            match cors.decide(req) {
                CorsDecision::Preflight(headers) => return Decision::Preflight(headers),
                CorsDecision::Mark(allow) => ctx.extras().cors_allow = Some(allow),
                CorsDecision::None => {}
            }
        }
        if let Some(max) = target.filters.max_body() {
            let declared = req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return Decision::TooLarge;
            }
            ctx.body_left = Some(max);
        }
        let pool = match target.action.choose() {
            Choice::Proxy(pool) => pool.clone(),
            Choice::Fail => return Decision::Unresolved,
            Choice::Redirect(to) => {
                let port = ctx
                    .authority
                    .as_ref()
                    .and_then(|a| edge::headers::authority_port(a.as_bytes()))
                    .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok());
                return match to.location(req, host, port, self.settings.tls) {
                    Some(location) => Decision::Redirect(to.status, location),
                    None => Decision::Reject(edge::Reject::BadRequest("invalid redirect\n")),
                };
            }
        };
        let limited = target.limiter.as_ref().and_then(|l| l.check().err());
        if limited.is_none() {
            for mirror in target.filters.mirrors() {
                self.shared.mirrors.send(mirror, req);
            }
        }
        ctx.routed = Some(Routed::new(target.clone(), pool));
        match limited {
            Some(refusal) => Decision::RateLimited(refusal),
            None => Decision::Proxy,
        }
    }

    /// For a request to the ACME HTTP-01 path (RFC 8555 §8.3): the key
    /// authorization of its token if that challenge is pending (`Some(None)`:
    /// it is not); `None` for any other path.
    fn acme_http01(&self, req: &RequestHeader) -> Option<Option<Bytes>> {
        let token = req.uri.path().strip_prefix(ACME_CHALLENGE_PATH)?;
        // From the config (operator mode), else from this process's issuer.
        let from_config = self.shared.runtime.load().acme_http01.get(token).cloned();
        Some(from_config.or_else(|| {
            let acme = self.shared.acme.get()?;
            acme.board().http01(token).map(Bytes::from)
        }))
    }

    /// Whether `host` (a configured vhost) would be presented a different
    /// certificate than the one the connection's SNI selected. Both sides are
    /// resolved in the same runtime, so a swap can't make them disagree
    /// spuriously; hosts sharing a certificate (a SAN cert) may share a
    /// connection.
    fn misdirected(&self, runtime: &Runtime, conn: &TlsConn, host: &str) -> bool {
        if conn.sni.as_deref() == Some(host) {
            return false;
        }
        let default = self.shared.cert_cache.default_cert();
        !same_cert(
            runtime.certs.select(conn.sni.as_deref(), default),
            runtime.certs.select(Some(host), default),
        )
    }

    /// Records the connection's handshake time once, at its first request
    /// (Pingora's post-handshake callback sees no timing; the TLS layer's
    /// timing digest does).
    fn observe_handshake(&self, session: &Session, conn: &TlsConn) {
        use std::sync::atomic::Ordering::Relaxed;
        if conn.observed.load(Relaxed) || conn.observed.swap(true, Relaxed) {
            return;
        }
        let took = session
            .digest()
            .and_then(|d| d.timing_digest.last())
            .and_then(|t| t.as_ref())
            .and_then(|t| t.establishment_duration);
        if let Some(took) = took {
            self.shared
                .metrics
                .tls
                .handshake_seconds
                .observe(took.as_secs_f64());
        }
    }

    /// `https://host[:port]/path?query` for the redirect of a TLS host.
    fn https_location(&self, host: &str, req: &RequestHeader) -> HeaderValue {
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = if self.settings.https_port == 443 {
            format!("https://{host}{pq}")
        } else {
            format!("https://{host}:{}{pq}", self.settings.https_port)
        };
        HeaderValue::from_str(&url).unwrap_or_else(|_| HeaderValue::from_static("/"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_counts_names_and_values() {
        let mut req = RequestHeader::build("GET", b"/abc", None).unwrap();
        let base = edge::head_bytes(&req);
        req.insert_header("x-a", "12345").unwrap();
        assert_eq!(edge::head_bytes(&req), base + 3 + 5 + 4);
    }

    #[test]
    fn redirect_keeps_path_query_and_port() {
        let shared = Shared::new(Default::default(), "test".into()).unwrap();
        let mut gw = Gateway::new(shared, ProxySettings::default());
        let req = RequestHeader::build("GET", b"/a/b?x=1&y=2", None).unwrap();
        assert_eq!(gw.https_location("a.io", &req), "https://a.io/a/b?x=1&y=2");
        gw.settings.https_port = 8443;
        assert_eq!(
            gw.https_location("a.io", &req),
            "https://a.io:8443/a/b?x=1&y=2"
        );
    }
}
