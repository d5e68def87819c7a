//! The config server gateways long-poll, with a bearer token:
//! `GET /v2/config?after=VERSION` answers with the delta from VERSION when
//! it is on the published chain, else with a whole config (a new replica,
//! one too far behind, or `&full=1`); `GET /v1/config?after=VERSION`
//! answers with whole configs only, for gateways of older releases. Also
//! `/healthz` and `/readyz`. Plain HTTP, or HTTPS (rustls) when a
//! certificate is configured.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::publish::Published;
use crate::{Error, TlsFiles};

/// The response header naming the version of the config in the body (or,
/// on 304, the version the server currently has).
pub const VERSION_HEADER: &str = "x-config-version";

use vestibule_config::model::{DELTA_MEDIA_TYPE, WHOLE_MEDIA_TYPE};

/// Which config protocol a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// Whole configs only.
    V1,
    /// Deltas where the client's version allows.
    V2,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a request for a version the client already has waits
    /// before 304.
    pub long_poll: Duration,
    /// Long-polls waiting at once; more get 503.
    pub max_waiting: usize,
    /// Time allowed for a client to send its request head (and TLS handshake).
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            long_poll: Duration::from_secs(30),
            max_waiting: 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

// === impl Token ===

/// The bearer token, kept as a SHA-256 digest so comparisons are constant
/// time and independent of the token's length.
#[derive(Clone)]
pub struct Token(Arc<ArcSwap<[u8; 32]>>);

impl Token {
    pub fn load(path: &Path) -> Result<Self, Error> {
        Ok(Token(Arc::new(ArcSwap::from_pointee(read_token(path)?))))
    }

    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.0.load().as_slice().ct_eq(&digest))
    }
}

fn read_token(path: &Path) -> Result<[u8; 32], Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("cannot read the token: {e}"),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::File {
            path: path.to_path_buf(),
            message: "the token file is empty".into(),
        });
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// Re-reads the token file so a rotated Secret takes effect without a
/// restart. An unreadable or empty file keeps the previous token.
pub async fn reload_token(
    token: Token,
    path: PathBuf,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::stopped(&mut shutdown) => return Ok(()),
        }
        match read_token(&path) {
            Ok(digest) if digest != **token.0.load() => {
                token.0.store(Arc::new(digest));
                tracing::info!(path = %path.display(), "bearer token reloaded");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "keeping the previous bearer token"),
        }
    }
}

/// Loads the serving certificate chain and key.
pub fn load_tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, Error> {
    let file_err = |path: &Path, e: &dyn std::fmt::Display| Error::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err(&files.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&files.cert, &e))?;
    if certs.is_empty() {
        return Err(file_err(&files.cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("{}: {e}", files.key.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// === the server ===

#[derive(Clone)]
pub struct ConfigState {
    pub published: watch::Receiver<Option<Arc<Published>>>,
    pub token: Token,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub waiting: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    /// Handshakes gateways saw for domains waiting for an ACME certificate
    /// (`POST /v1/acme/demand`), to the relay in [`crate::acme`].
    pub demand: tokio::sync::mpsc::Sender<Vec<vestibule_config::Hostname>>,
    /// Whether `/v1` clients are about (whole configs are published then).
    pub whole: Arc<crate::publish::WholeClients>,
    /// Wakes the translation loop (a `/v1` client needs a whole config).
    pub dirty: Arc<tokio::sync::Notify>,
}

/// Largest `POST /v1/acme/demand` body, and names in it.
const MAX_DEMAND_BYTES: usize = 4096;
const MAX_DEMAND_NAMES: usize = 16;

/// Accepts connections until shutdown, then lets open ones finish (waiting
/// long-polls are answered 503 at once) for at most `grace`.
pub async fn serve_config(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: ConfigState,
    grace: Duration,
) -> Result<(), Error> {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    let mut shutdown = state.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        // Reap finished connection tasks so the set stays small.
        while connections.try_join_next().is_some() {}
        let state = state.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            match acceptor {
                None => serve_connection(stream, state).await,
                Some(acceptor) => {
                    let timeout = state.limits.header_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(tls, state).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("closing config connections still open after the grace period");
        connections.abort_all();
    }
    Ok(())
}

async fn serve_connection<S>(stream: S, state: ConfigState)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = state.shutdown.clone();
    let header_timeout = state.limits.header_timeout;
    let svc = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(req, &state).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), svc);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = crate::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "config connection ended");
    }
}

async fn handle(req: Request<Incoming>, state: &ConfigState) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/config") => config(&req, state, Protocol::V1).await,
        (&Method::GET, "/v2/config") => config(&req, state, Protocol::V2).await,
        (&Method::POST, "/v1/acme/demand") => demand(req, state).await,
        (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match state.published.borrow().is_some() {
            true => plain(StatusCode::OK, "ready\n"),
            false => plain(StatusCode::SERVICE_UNAVAILABLE, "no config yet\n"),
        },
        (_, "/v1/acme/demand") => {
            let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            res
        }
        (_, "/v1/config" | "/v2/config" | "/healthz" | "/readyz") => {
            let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            res
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `POST /v1/acme/demand`: domain names, one per line, that handshakes
/// asked for while their ACME certificate is not issued. Names no Tenant
/// owns are dropped by the issuer; this only relays.
async fn demand(req: Request<Incoming>, state: &ConfigState) -> Response<Full<Bytes>> {
    use http_body_util::{BodyExt, Limited};
    if let Some(refused) = unauthorized(req.headers(), state) {
        return refused;
    }
    let Ok(body) = Limited::new(req.into_body(), MAX_DEMAND_BYTES)
        .collect()
        .await
    else {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "at most 4 KiB of names\n");
    };
    let body = body.to_bytes();
    let names: Vec<vestibule_config::Hostname> = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| vestibule_config::Hostname::parse(l.trim()).ok())
        .take(MAX_DEMAND_NAMES)
        .collect();
    if !names.is_empty() && state.demand.try_send(names).is_err() {
        return retry_later("busy\n");
    }
    plain(StatusCode::ACCEPTED, "noted\n")
}

/// The 401 for a request without the bearer token, if it has none.
fn unauthorized(headers: &HeaderMap, state: &ConfigState) -> Option<Response<Full<Bytes>>> {
    if authorized(headers, &state.token) {
        return None;
    }
    state.metrics.unauthorized.inc();
    let mut res = plain(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"vestibule\""),
    );
    Some(res)
}

async fn config(
    req: &Request<Incoming>,
    state: &ConfigState,
    protocol: Protocol,
) -> Response<Full<Bytes>> {
    if let Some(refused) = unauthorized(req.headers(), state) {
        return refused;
    }
    let query = req.uri().query().unwrap_or("");
    let after = query_param(query, "after").filter(|a| !a.is_empty());
    let whole_asked = query_param(query, "full").is_some_and(|v| v == "1");
    let gzip = accepts_gzip(req.headers());
    if protocol == Protocol::V1 {
        state.whole.seen_now();
    }
    // A version other than the client's, waiting for one (long-poll).
    let wanted = |p: &Published| {
        Some(p.version.as_str()) != after && (protocol == Protocol::V2 || p.chain.is_empty())
    };
    let current = state.published.borrow().clone();
    let p = match current {
        Some(p) if wanted(&p) => p,
        current => {
            if protocol == Protocol::V1
                && current
                    .as_ref()
                    .is_some_and(|p| Some(p.version.as_str()) != after)
            {
                // The newest version is a delta: have it published whole.
                state.dirty.notify_one();
            }
            let Ok(_permit) = state.waiting.clone().try_acquire_owned() else {
                state.metrics.overloaded.inc();
                return retry_later("too many gateways waiting\n");
            };
            state.metrics.gateways_waiting.inc();
            let waited = wait_for(state, wanted).await;
            state.metrics.gateways_waiting.dec();
            let shutting_down = *state.shutdown.borrow();
            match waited {
                Some(p) => p,
                None if shutting_down => return retry_later("shutting down\n"),
                None if after.is_none() => return retry_later("no config published yet\n"),
                None => {
                    let mut res = Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = StatusCode::NOT_MODIFIED;
                    let current = state.published.borrow().clone();
                    if let Some(v) =
                        current.and_then(|p| HeaderValue::from_str(p.version.as_str()).ok())
                    {
                        res.headers_mut().insert(VERSION_HEADER, v);
                    }
                    res.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    return res;
                }
            }
        }
    };
    let delta = match (protocol, after) {
        (Protocol::V2, Some(after)) if !whole_asked => {
            p.delta_from(&vestibule_config::model::ConfigVersion::new(after))
        }
        _ => None,
    };
    match delta {
        Some(delta) => send_delta(&delta, gzip, state),
        None => send_whole(&p, protocol, gzip, state).await,
    }
}

/// Waits (bounded) for a published version `wanted` accepts; `None` on
/// timeout or shutdown.
async fn wait_for(
    state: &ConfigState,
    wanted: impl Fn(&Published) -> bool,
) -> Option<Arc<Published>> {
    let mut published = state.published.clone();
    let mut shutdown = state.shutdown.clone();
    let newer = async move {
        let r = published
            .wait_for(|p| p.as_deref().is_some_and(&wanted))
            .await;
        // Err: the publisher is gone (shutting down).
        r.ok().and_then(|p| p.clone())
    };
    tokio::select! {
        r = tokio::time::timeout(state.limits.long_poll, newer) => r.ok().flatten(),
        _ = crate::stopped(&mut shutdown) => None,
    }
}

/// The base of `p` (its version in the header): `/v2` clients then ask for
/// the deltas after it.
async fn send_whole(
    p: &Published,
    protocol: Protocol,
    gzip: bool,
    state: &ConfigState,
) -> Response<Full<Bytes>> {
    let base = p.base.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        base.encoded()
            .map(|e| (e.json.clone(), e.gzip.clone()))
            .map_err(str::to_string)
    })
    .await;
    let (json, gz) = match encoded {
        Ok(Ok(bodies)) => bodies,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot encode the config");
            return retry_later("cannot encode the config\n");
        }
        Err(_) => return retry_later("cannot encode the config\n"),
    };
    state.metrics.configs_served.inc();
    let kind = match protocol {
        Protocol::V1 => "application/json",
        Protocol::V2 => WHOLE_MEDIA_TYPE,
    };
    respond(
        if gzip { gz } else { json },
        kind,
        gzip,
        &p.base.config.version,
    )
}

fn send_delta(
    delta: &vestibule_config::model::ConfigDelta,
    gzip: bool,
    state: &ConfigState,
) -> Response<Full<Bytes>> {
    let Ok(json) = serde_json::to_vec(delta) else {
        return retry_later("cannot encode the delta\n");
    };
    let body = if gzip {
        match crate::publish::gzip(&json) {
            Ok(b) => b,
            Err(_) => return retry_later("cannot encode the delta\n"),
        }
    } else {
        json
    };
    state.metrics.deltas_served.inc();
    respond(Bytes::from(body), DELTA_MEDIA_TYPE, gzip, &delta.version)
}

fn respond(
    body: Bytes,
    kind: &'static str,
    gzip: bool,
    version: &vestibule_config::model::ConfigVersion,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if let Ok(v) = HeaderValue::from_str(version.as_str()) {
        h.insert(VERSION_HEADER, v);
    }
    res
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn retry_later(body: &'static str) -> Response<Full<Bytes>> {
    let mut res = plain(StatusCode::SERVICE_UNAVAILABLE, body);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

fn authorized(headers: &HeaderMap, token: &Token) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let scheme = b"bearer ";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return false;
    }
    token.matches(value[scheme.len()..].trim_ascii())
}

fn query_param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `Accept-Encoding` lists gzip (or `*`) without `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(accepts_gzip(&h("gzip")));
        assert!(accepts_gzip(&h("br, GZIP;q=0.5")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("br, deflate")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn query_parsing() {
        assert_eq!(query_param("after=abc", "after"), Some("abc"));
        assert_eq!(query_param("x=1&after=", "after"), Some(""));
        assert_eq!(query_param("after", "after"), Some(""));
        assert_eq!(query_param("afterx=1", "after"), None);
    }

    #[test]
    fn bearer_token_checks() {
        let dir = std::env::temp_dir().join(format!("vestibule-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let token = Token::load(&file).unwrap();
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(authorized(&h("Bearer s3cret"), &token));
        assert!(authorized(&h("bearer s3cret"), &token));
        assert!(!authorized(&h("Bearer s3cre"), &token));
        assert!(!authorized(&h("Basic s3cret"), &token));
        assert!(!authorized(&h("Bearer "), &token));
        assert!(!authorized(&HeaderMap::new(), &token));
        std::fs::write(&file, "").unwrap();
        assert!(Token::load(&file).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
