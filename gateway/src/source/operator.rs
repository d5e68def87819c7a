//! `--operator URL`: long-polls the operator's config server
//! (`GET /v2/config?after=VERSION`, bearer token, gzip): a whole config
//! first, then the delta from the version it holds to each new one, applied
//! to its copy, checked against the operator's version and swapped in as a
//! patch. A delta that does not apply (a stale base, a state that disagrees)
//! makes it ask for a whole config (`&full=1`). An operator without `/v2`
//! (an older release during an upgrade) is long-polled on `/v1`, whole
//! configs only. The config is persisted under `--state-dir` (write +
//! rename), each delta appended to a journal beside it and folded in once a
//! minute, so a gateway that restarts while the operator is down still
//! serves the last version it had. Handshakes for tenant
//! domains waiting for an ACME certificate are reported back
//! (`POST /v1/acme/demand`, batched, each name at most every 30 s).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio_rustls::TlsConnector;
use vestibule_config::model::{
    ConfigDelta, ConfigError, ConfigVersion, DeltaError, DELTA_MEDIA_TYPE,
};
use vestibule_config::GatewayConfig;

use super::{ConfigSource, Delta, SourceError, SourceEvent};
use crate::error::{CaProblem, OperatorError};
use crate::runtime::Totals;

/// Largest config body accepted, compressed or not (10k tenants with their
/// own certificates and keys are about 40 MB of JSON).
const MAX_BODY: usize = 256 * 1024 * 1024;
/// The operator holds a long-poll for ~30 s; give it room before timing out.
const POLL_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the boot-time fetch may take before the persisted config is used.
const BOOT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STATE_FILE: &str = "last-config.json";
/// After a delta, the config is persisted at most this often (at 100k
/// tenants a write is 100 MB; a restart catches up from the operator).
const PERSIST_EVERY: Duration = Duration::from_secs(60);
/// Deltas since the persisted config, one JSON line each.
const JOURNAL_FILE: &str = "last-config.deltas";
/// The journal is folded into the config after this many deltas.
const JOURNAL_MAX: usize = 256;

pub struct OperatorSource {
    url: Uri,
    token_file: PathBuf,
    state_dir: Option<PathBuf>,
    tls: Option<(TlsConnector, rustls_pki_types::ServerName<'static>)>,
    /// Names handshakes asked for (see [`OperatorSource::with_demand`]).
    demand: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Box<str>>>>,
    /// The config held: deltas apply to it.
    held: Arc<std::sync::Mutex<Option<Arc<GatewayConfig>>>>,
    /// The operator answered 404 on `/v2`: an older release.
    v1_only: std::sync::atomic::AtomicBool,
}

/// A name is reported at most this often.
const DEMAND_AGAIN: Duration = Duration::from_secs(30);
/// Names per report.
const DEMAND_BATCH: usize = 16;

/// What one poll returned.
enum Poll {
    New(Box<GatewayConfig>),
    Delta(Box<ConfigDelta>),
    Unchanged,
}

impl OperatorSource {
    /// Checks the flags (URL, token file, CA) up front: a usage error exits 2.
    pub fn new(
        url: &str,
        token_file: &Path,
        ca_file: Option<&Path>,
        state_dir: Option<&Path>,
    ) -> Result<Self, OperatorError> {
        let url: Uri = url
            .trim_end_matches('/')
            .parse()
            .map_err(|source| OperatorError::Url {
                url: url.to_string(),
                source,
            })?;
        let host = url
            .host()
            .ok_or_else(|| OperatorError::NoHost {
                url: url.to_string(),
            })?
            .to_string();
        let tls = match url.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let ca = ca_file.ok_or(OperatorError::NoCaFile)?;
                Some((tls_connector(ca)?, server_name(&host)?))
            }
            _ => {
                return Err(OperatorError::Scheme {
                    url: url.to_string(),
                })
            }
        };
        read_token(token_file)?;
        if let Some(dir) = state_dir {
            std::fs::create_dir_all(dir).map_err(|source| OperatorError::StateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(OperatorSource {
            url,
            token_file: token_file.to_path_buf(),
            state_dir: state_dir.map(Path::to_path_buf),
            tls,
            demand: std::sync::Mutex::new(None),
            held: Arc::default(),
            v1_only: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Reports the names `demand` receives to the operator's issuer.
    pub fn with_demand(self, demand: tokio::sync::mpsc::Receiver<Box<str>>) -> Self {
        *self.demand.lock().unwrap_or_else(|p| p.into_inner()) = Some(demand);
        self
    }

    /// Sends batches of requested names, each name at most every
    /// [`DEMAND_AGAIN`]; failures are logged (the next handshake asks again).
    async fn report_demand(&self, mut demand: tokio::sync::mpsc::Receiver<Box<str>>) {
        let mut sent: std::collections::HashMap<Box<str>, tokio::time::Instant> =
            std::collections::HashMap::new();
        while let Some(first) = demand.recv().await {
            let now = tokio::time::Instant::now();
            sent.retain(|_, at| now.duration_since(*at) < DEMAND_AGAIN);
            let mut batch = vec![first];
            while batch.len() < DEMAND_BATCH {
                match demand.try_recv() {
                    Ok(name) => batch.push(name),
                    Err(_) => break,
                }
            }
            batch.retain(|n| !sent.contains_key(n));
            batch.sort();
            batch.dedup();
            if batch.is_empty() {
                continue;
            }
            for n in &batch {
                sent.insert(n.clone(), now);
            }
            let body = batch.join("\n");
            let result = self
                .request(http::Method::POST, "/v1/acme/demand", body.into())
                .await;
            match result {
                Ok(r) if r.status() == StatusCode::ACCEPTED => {}
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "the operator refused on-demand requests")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot report on-demand requests to the operator")
                }
            }
        }
    }

    /// One request to the operator on a fresh connection (plain or TLS),
    /// with the bearer token.
    async fn request(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: bytes::Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>, OperatorError> {
        let token = read_token(&self.token_file)?;
        let authority = self.url.authority().ok_or_else(|| OperatorError::NoHost {
            url: self.url.to_string(),
        })?;
        let port = authority
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let base = self.url.path().trim_end_matches('/');
        let request = Request::builder()
            .method(method)
            .uri(format!("{base}{path_and_query}"))
            .header(header::HOST, authority.as_str())
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ACCEPT_ENCODING, "gzip")
            .body(Full::new(body))
            .map_err(OperatorError::Request)?;
        let tcp = TcpStream::connect((authority.host(), port))
            .await
            .map_err(|source| OperatorError::Connect {
                authority: authority.to_string(),
                source,
            })?;
        tcp.set_nodelay(true).ok();
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| OperatorError::Tls {
                        authority: authority.to_string(),
                        source,
                    })?;
                send(TokioIo::new(stream), request).await
            }
            None => send(TokioIo::new(tcp), request).await,
        }
    }

    fn state_file(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join(STATE_FILE))
    }

    /// One `GET /v2/config?after=...` (or `/v1`) on a fresh connection;
    /// `whole` asks for a whole config whatever `after` is.
    async fn poll(
        &self,
        after: Option<&ConfigVersion>,
        whole: bool,
    ) -> Result<Poll, OperatorError> {
        use std::sync::atomic::Ordering::Relaxed;
        let v1 = self.v1_only.load(Relaxed);
        let mut path = format!("/{}/config", if v1 { "v1" } else { "v2" });
        if let Some(v) = after.filter(|v| !v.is_empty()) {
            path.push_str(&format!("?after={v}"));
            if whole && !v1 {
                path.push_str("&full=1");
            }
        }
        let response = self
            .request(http::Method::GET, &path, bytes::Bytes::new())
            .await?;

        let (parts, body) = response.into_parts();
        match parts.status {
            StatusCode::OK => {}
            StatusCode::NOT_MODIFIED => return Ok(Poll::Unchanged),
            StatusCode::UNAUTHORIZED => return Err(OperatorError::Unauthorized),
            StatusCode::NOT_FOUND if !v1 => {
                tracing::warn!("the operator has no /v2/config (an older release): polling /v1, whole configs only");
                self.v1_only.store(true, Relaxed);
                return Ok(Poll::Unchanged);
            }
            other => return Err(OperatorError::Status(other)),
        }
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(OperatorError::Body)?
            .to_bytes();
        let gzip = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let text = if gzip {
            let mut out = String::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(MAX_BODY as u64 + 1)
                .read_to_string(&mut out)
                .map_err(OperatorError::Gzip)?;
            if out.len() > MAX_BODY {
                return Err(OperatorError::TooLarge);
            }
            out
        } else {
            String::from_utf8(body.to_vec()).map_err(|_| OperatorError::NotUtf8)?
        };
        if text.trim().is_empty() {
            return Err(OperatorError::EmptyBody);
        }
        let delta = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == DELTA_MEDIA_TYPE.as_bytes());
        if delta {
            let delta: ConfigDelta =
                serde_json::from_str(&text).map_err(|e| ConfigError::Parse(e.to_string()))?;
            return Ok(Poll::Delta(Box::new(delta)));
        }
        let config = GatewayConfig::from_text(&text)?;
        Ok(Poll::New(Box::new(config)))
    }

    fn journal_file(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join(JOURNAL_FILE))
    }

    /// Writes the config atomically (a crash leaves the old file or the new
    /// one), then drops the journal of deltas it includes.
    fn persist(&self, config: &GatewayConfig) {
        let Some(file) = self.state_file() else {
            return;
        };
        let tmp = file.with_extension("json.tmp");
        let result = serde_json::to_vec(config)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write;
                let mut f = private_file().truncate(true).open(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &file));
        if let Err(e) = result {
            tracing::warn!(file = %file.display(), error = %e, "cannot persist the config");
        }
        if let Some(journal) = self.journal_file() {
            let _ = std::fs::remove_file(journal);
        }
    }

    /// Appends a delta to the journal: one line, in time proportional to it.
    fn journal(&self, delta: &ConfigDelta) {
        let Some(file) = self.journal_file() else {
            return;
        };
        let result = serde_json::to_vec(delta)
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                use std::io::Write;
                line.push(b'\n');
                let mut f = private_file().append(true).open(&file)?;
                f.write_all(&line)
            });
        if let Err(e) = result {
            tracing::warn!(file = %file.display(), error = %e, "cannot journal the config delta");
        }
    }

    /// The persisted config with the journal's deltas applied (up to the
    /// first that does not apply: a crash between a rewrite and the
    /// journal's removal leaves deltas the config already has).
    fn load_persisted(&self) -> Option<GatewayConfig> {
        let file = self.state_file()?;
        let text = std::fs::read_to_string(&file).ok()?;
        let mut config = match GatewayConfig::from_text(&text) {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring the persisted config");
                return None;
            }
        };
        let journal = self
            .journal_file()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default();
        let deltas: Vec<ConfigDelta> = journal
            .lines()
            .map_while(|l| serde_json::from_str(l).ok())
            .collect();
        for (i, delta) in deltas.iter().enumerate() {
            match config.apply(delta) {
                Ok(()) => {}
                // Not applied: nothing changed.
                Err(DeltaError::StaleBase { .. }) => break,
                // Half applied (rare: a damaged journal): the file again,
                // with the deltas before this one.
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "a journal delta does not apply");
                    let mut config = GatewayConfig::from_text(&text).ok()?;
                    for d in &deltas[..i] {
                        config.apply(d).ok()?;
                    }
                    return Some(config);
                }
            }
        }
        Some(config)
    }
}

/// Options to write a file only this user reads: the config holds keys.
fn private_file() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

async fn send<IO>(
    io: TokioIo<IO>,
    request: Request<Full<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, OperatorError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(OperatorError::Http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(OperatorError::Http)
}

fn read_token(path: &Path) -> Result<String, OperatorError> {
    let token = std::fs::read_to_string(path).map_err(|source| OperatorError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(OperatorError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

fn tls_connector(ca_file: &Path) -> Result<TlsConnector, OperatorError> {
    use rustls_pki_types::pem::PemObject;
    let err = |problem| OperatorError::CaFile {
        path: ca_file.to_path_buf(),
        problem,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(CaProblem::Pem(e)))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| err(CaProblem::Certificate(e)))?;
    }
    if roots.is_empty() {
        return Err(err(CaProblem::Empty));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(CaProblem::Certificate(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn server_name(host: &str) -> Result<rustls_pki_types::ServerName<'static>, OperatorError> {
    rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string()).map_err(
        |_| OperatorError::ServerName {
            host: host.to_string(),
        },
    )
}

/// Exponential backoff with jitter, so replicas that lost the operator at
/// the same moment don't come back in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(2u32.saturating_pow(attempt.min(10)))
        .min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    // Between half and the full base delay.
    base / 2 + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

#[async_trait]
impl ConfigSource for OperatorSource {
    fn describe(&self) -> String {
        format!("operator:{}", self.url)
    }

    /// Asks the operator once (briefly); if it can't answer, starts from the
    /// persisted config; with neither, the gateway starts unready.
    fn initial(&self) -> Result<Option<GatewayConfig>, SourceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OperatorError::Runtime)?;
        let fetched = runtime
            .block_on(async { tokio::time::timeout(BOOT_TIMEOUT, self.poll(None, true)).await });
        let config = match fetched {
            Ok(Ok(Poll::New(config))) => {
                self.persist(&config);
                Some(*config)
            }
            Ok(Ok(_)) => self.load_persisted(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "operator unreachable at boot; using the persisted config");
                self.load_persisted()
            }
            Err(_) => {
                tracing::warn!(
                    "operator did not answer in time at boot; using the persisted config"
                );
                self.load_persisted()
            }
        };
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = config.clone().map(Arc::new);
        Ok(config)
    }

    async fn run(self: Box<Self>, events: UnboundedSender<SourceEvent>) {
        let this: Arc<Self> = Arc::from(self);
        let demand = this.demand.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(demand) = demand {
            let reporter = this.clone();
            tokio::spawn(async move { reporter.report_demand(demand).await });
        }
        this.poll_forever(events).await;
    }
}

impl OperatorSource {
    async fn poll_forever(&self, events: UnboundedSender<SourceEvent>) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut current: Option<ConfigVersion> = match held {
            Some(c) => Some(c.version.clone()),
            None => self.load_persisted().map(|c| c.version),
        };
        let mut failures = 0u32;
        let mut whole = false;
        let mut persisted = tokio::time::Instant::now();
        let mut journaled = 0usize;
        loop {
            let poll = self.poll(current.as_ref(), whole);
            let result = match tokio::time::timeout(POLL_TIMEOUT, poll).await {
                Ok(r) => r,
                Err(_) => Err(OperatorError::TimedOut),
            };
            match result {
                Ok(Poll::New(config)) => {
                    failures = 0;
                    whole = false;
                    if current.as_ref() == Some(&config.version) {
                        continue;
                    }
                    self.persist(&config);
                    persisted = tokio::time::Instant::now();
                    journaled = 0;
                    current = Some(config.version.clone());
                    let config = Arc::new(*config);
                    *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(config.clone());
                    if events.send(SourceEvent::Config(config)).is_err() {
                        return;
                    }
                }
                Ok(Poll::Delta(delta)) => {
                    failures = 0;
                    let applied = self.apply(&delta);
                    let Some(totals) = applied else {
                        // Ask for a whole config next; the live one stays.
                        whole = true;
                        continue;
                    };
                    current = Some(delta.version.clone());
                    if persisted.elapsed() >= PERSIST_EVERY || journaled >= JOURNAL_MAX {
                        persisted = tokio::time::Instant::now();
                        journaled = 0;
                        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        if let Some(config) = held {
                            self.persist(&config);
                        }
                    } else {
                        self.journal(&delta);
                        journaled += 1;
                    }
                    let source = self.held.clone();
                    let event = SourceEvent::Delta(Box::new(Delta {
                        delta: *delta,
                        totals,
                        full: Arc::new(move || {
                            let held = source.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            held.map(|c| (*c).clone()).unwrap_or_default()
                        }),
                    }));
                    if events.send(event).is_err() {
                        return;
                    }
                }
                Ok(Poll::Unchanged) => failures = 0,
                Err(e) => {
                    if events.send(SourceEvent::Error(e.into())).is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff(failures)).await;
                    failures = failures.saturating_add(1);
                }
            }
        }
    }

    /// Applies `delta` to the held config; `None` when it does not apply
    /// (then nothing is held: the next poll asks for a whole config).
    fn apply(&self, delta: &ConfigDelta) -> Option<Totals> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let Some(config) = held.as_mut() else {
            tracing::warn!(base = %delta.base, "a delta with no config held; asking for a whole config");
            return None;
        };
        // Copies only if the controller still holds the previous config.
        let config = Arc::make_mut(config);
        match config.apply(delta) {
            Ok(()) => Some(Totals::of(config)),
            Err(e) => {
                tracing::warn!(error = %e, "config delta refused; asking for a whole config");
                *held = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        assert!(backoff(0) >= BACKOFF_MIN / 2 && backoff(0) <= BACKOFF_MIN);
        assert!(backoff(3) >= BACKOFF_MIN * 4);
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
