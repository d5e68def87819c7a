//! TLS at the edge: certificates parsed once per content id, the per-runtime
//! SNI table, and the rustls/Pingora hooks of the HTTPS listener.
//!
//! - [`CertCache`] (in `Shared`, lives as long as the process) turns each
//!   distinct `CertId` into a rustls `CertifiedKey` once; compiles of later
//!   configs reuse the parsed entry and entries no config uses are dropped.
//! - [`CertStore`] (in each `Runtime`) maps host patterns to those keys, built
//!   with the same precedence as the route table: the most specific vhost
//!   decides, so an exact host without a usable certificate never borrows a
//!   wildcard certificate that may belong to another tenant.
//! - [`CertResolver`] is the rustls `ResolvesServerCert` of the listener. It
//!   reads the *current* runtime through the same `ArcSwap` as the routes, so
//!   a config swap changes certificates for the next handshake without
//!   touching the listener; established connections keep their session.
//! - [`HandshakeObserver`] (Pingora's post-handshake callback) counts
//!   handshakes and stores the SNI in the session digest, which the proxy
//!   needs for 421 Misdirected Request.
//!
//! A certificate that can't be used (unparsable, key not matching the leaf,
//! unsupported key type, expired or not yet valid) never fails a config: its
//! hosts behave as `HostTls::Unavailable` (default certificate or handshake
//! failure; still redirected from plain HTTP, never downgraded), and the
//! problem shows in `vestibule_tls_cert_errors{tenant,reason}`.
//!
//! Key material never reaches logs: errors carry a reason, never PEM bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{PreTlsProcess, TlsAccept};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::TlsRef;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use vestibule_config::model::{CertId, Certificate, GatewayConfig, HostTls};
use vestibule_config::HostPattern;

use crate::route::{normalize_host, HostBuf};
use crate::runtime::Shared;

type Map<V> = HashMap<Box<str>, V, ahash::RandomState>;

/// Why a certificate is not served. The `str` form is the bounded `reason`
/// label of `vestibule_tls_cert_errors`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CertProblem {
    /// The chain PEM holds no certificate, or the leaf isn't valid X.509.
    BadCertificate,
    /// The key PEM holds no private key.
    BadKey,
    /// A key type the crypto provider can't sign with.
    UnsupportedKey,
    /// The private key is not the leaf certificate's key.
    KeyMismatch,
    Expired,
    NotYetValid,
    /// The config asked for TLS but had no usable certificate for the host
    /// (`HostTls::Unavailable`, e.g. a missing or malformed Secret).
    Unavailable,
}

impl CertProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            CertProblem::BadCertificate => "bad_certificate",
            CertProblem::BadKey => "bad_key",
            CertProblem::UnsupportedKey => "unsupported_key",
            CertProblem::KeyMismatch => "key_mismatch",
            CertProblem::Expired => "expired",
            CertProblem::NotYetValid => "not_yet_valid",
            CertProblem::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for CertProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate read from its PEMs: the validity window (Unix seconds,
/// checked on every compile since time moves between swaps) and the signing
/// key, which is built only when first needed.
///
/// Building a key is the expensive part (ring derives and checks the public
/// key: ~30 µs for P-256, far more for RSA), so a cold start with 10k tenants
/// does not pay it up front: the first handshake for a host builds its key,
/// and [`warm_up`] builds the rest in the background right after a swap, so
/// a key that doesn't match its certificate still shows in the metrics soon.
#[derive(Debug)]
pub struct ParsedCert {
    pub not_before: i64,
    pub not_after: i64,
    /// The chain and the key until the signing key is built.
    pending: Mutex<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>>,
    key: OnceLock<Result<Arc<CertifiedKey>, CertProblem>>,
}

impl ParsedCert {
    /// Decodes a PEM chain (leaf first, intermediates after; all are
    /// served) and a PEM private key (PKCS#8, PKCS#1 or SEC1), and reads the
    /// leaf's validity. The key itself is checked by [`ParsedCert::key`].
    pub fn parse(cert_pem: &[u8], key_pem: &[u8]) -> Result<ParsedCert, CertProblem> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| CertProblem::BadCertificate)?;
        let leaf = chain.first().ok_or(CertProblem::BadCertificate)?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(leaf).map_err(|_| CertProblem::BadCertificate)?;
        let validity = x509.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        // The pki-types error names the PEM section, never its contents.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertProblem::BadKey)?;
        Ok(ParsedCert {
            not_before,
            not_after,
            pending: Mutex::new(Some((chain, key))),
            key: OnceLock::new(),
        })
    }

    /// The signing key for handshakes (RSA, ECDSA P-256/P-384, Ed25519),
    /// built on first use and checked against the leaf.
    pub fn key(&self) -> Result<&Arc<CertifiedKey>, CertProblem> {
        self.key
            .get_or_init(|| {
                let pending = self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                // `get_or_init` runs this once, and `pending` is only taken here.
                let (chain, key) = pending.ok_or(CertProblem::BadKey)?;
                build_key(chain, &key).map(Arc::new)
            })
            .as_ref()
            .map_err(|p| *p)
    }

    /// The key's problem, once it was built and failed.
    pub fn key_problem(&self) -> Option<CertProblem> {
        self.key.get().and_then(|k| k.as_ref().err().copied())
    }

    /// `Ok` when `now` (Unix seconds) is inside the validity window.
    pub fn check_dates(&self, now: i64) -> Result<(), CertProblem> {
        if now < self.not_before {
            Err(CertProblem::NotYetValid)
        } else if now > self.not_after {
            Err(CertProblem::Expired)
        } else {
            Ok(())
        }
    }
}

fn build_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<CertifiedKey, CertProblem> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|_| CertProblem::UnsupportedKey)?;
    let key = CertifiedKey::new(chain, signer);
    match key.keys_match() {
        // Unknown: the signer can't tell its public key; rustls itself
        // accepts that, and the handshake would fail visibly anyway.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(key),
        Err(_) => Err(CertProblem::KeyMismatch),
    }
}

/// Builds every signing key `runtime` may serve that no handshake built
/// yet, a batch at a time, so the listeners keep the CPU. Run off the
/// request path (see [`crate::control`]). Stops early as soon as `go_on`
/// (asked between batches) says so: a newer runtime makes this one's keys
/// moot.
pub fn warm_up(runtime: &crate::runtime::Runtime, mut go_on: impl FnMut() -> bool) {
    for (i, (_, cert)) in runtime.certs.used.iter().enumerate() {
        let _ = cert.key();
        if i % 64 == 63 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            if !go_on() {
                return;
            }
        }
    }
}

// === impl CertCache ===

/// A cache entry: the parse result (errors too, so a broken Secret is not
/// parsed again on every swap) and a fingerprint of the PEM it came from.
struct Entry {
    fingerprint: u64,
    parsed: Result<Arc<ParsedCert>, CertProblem>,
}

/// Parsed certificates by `CertId`, shared by every compile of the process.
#[derive(Default)]
pub struct CertCache {
    entries: Mutex<HashMap<CertId, Entry>>,
    /// `--default-cert/--default-key`: set once at startup.
    default: OnceLock<Arc<CertifiedKey>>,
}

/// Content fingerprint with fixed seeds: a cheap guard (GB/s) against a
/// hand-written config that changes a PEM but keeps its `CertId`, so the
/// cache still never serves stale key material.
fn fingerprint(cert: &Certificate) -> u64 {
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    h.write(cert.cert_pem.as_bytes());
    h.write_u8(0);
    h.write(cert.key_pem.as_bytes());
    h.finish()
}

impl CertCache {
    /// The default certificate, if one was configured.
    #[inline]
    pub fn default_cert(&self) -> Option<&Arc<CertifiedKey>> {
        self.default.get()
    }

    /// Sets the default certificate (first call wins).
    pub fn set_default(&self, key: Arc<CertifiedKey>) {
        let _ = self.default.set(key);
    }

    /// Parses the certificates of `config` not cached yet (in parallel: a
    /// cold start with 10k RSA keys is dominated by key parsing), drops the
    /// entries `config` no longer uses, and returns the results by id.
    pub fn prepare(
        &self,
        config: &GatewayConfig,
    ) -> HashMap<CertId, Result<Arc<ParsedCert>, CertProblem>> {
        let prints: Vec<(&CertId, &Certificate, u64)> = config
            .certificates
            .iter()
            .map(|(id, c)| (id, c, fingerprint(c)))
            .collect();
        let missing: Vec<(&CertId, &Certificate, u64)> = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            prints
                .iter()
                .filter(|(id, _, fp)| entries.get(*id).is_none_or(|e| e.fingerprint != *fp))
                .copied()
                .collect()
        };
        let parsed = parse_all(&missing);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for ((id, _, fp), parsed) in missing.iter().zip(parsed) {
            if let Err(problem) = &parsed {
                tracing::warn!(cert = %id, %problem, "certificate rejected; its hosts get the default certificate or fail the handshake");
            }
            entries.insert(
                (*id).clone(),
                Entry {
                    fingerprint: *fp,
                    parsed,
                },
            );
        }
        entries.retain(|id, _| config.certificates.contains_key(id));
        prints
            .iter()
            .filter_map(|(id, _, _)| Some(((*id).clone(), entries.get(*id)?.parsed.clone())))
            .collect()
    }

    /// Entries held (for tests and `/config`).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse_all(items: &[(&CertId, &Certificate, u64)]) -> Vec<Result<Arc<ParsedCert>, CertProblem>> {
    let parse = |c: &Certificate| {
        ParsedCert::parse(c.cert_pem.as_bytes(), c.key_pem.as_bytes()).map(Arc::new)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Threads only pay off for a batch (cold start, bulk onboarding).
    if items.len() < 64 || threads == 1 {
        return items.iter().map(|(_, c, _)| parse(c)).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|(_, c, _)| parse(c)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(CertProblem::BadCertificate); chunk])
            })
            .collect()
    })
}

/// Reads `--default-cert/--default-key` and installs them. Errors name the
/// file and the reason, never the content.
pub fn load_default_cert(cache: &CertCache, cert: &Path, key: &Path) -> Result<(), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let unusable = |problem: CertProblem| {
        format!(
            "default certificate {} / {} is unusable: {problem}",
            cert.display(),
            key.display()
        )
    };
    let parsed = ParsedCert::parse(&read(cert)?, &read(key)?).map_err(unusable)?;
    let signing = parsed.key().map_err(unusable)?.clone();
    parsed
        .check_dates(crate::runtime::unix_now() as i64)
        .map_err(|problem| format!("default certificate {}: {problem}", cert.display()))?;
    cache.set_default(signing);
    Ok(())
}

// === impl CertStore ===

/// What the TLS metrics of a runtime report.
#[derive(Debug, Default)]
pub struct CertReport {
    /// Hosts whose certificate is not served, by (tenant, reason).
    pub errors: BTreeMap<(String, CertProblem), i64>,
    /// The earliest `notAfter` (Unix seconds) among each tenant's
    /// certificates, expired ones included; `""` for hosts without tenant.
    pub expiry: BTreeMap<String, i64>,
}

/// The SNI table of one runtime: host -> certificate to present.
#[derive(Debug, Default)]
pub struct CertStore {
    /// `None`: the host is configured but has no usable certificate (plain
    /// host, `Unavailable`, or rejected certificate) -> default certificate.
    exact: Map<Option<Arc<ParsedCert>>>,
    /// Keyed by the suffix after the wildcard label (`*.a.com` -> `a.com`).
    wildcard: Map<Option<Arc<ParsedCert>>>,
    /// Distinct certificates served.
    served: usize,
    /// Problems known at compile time (dates, PEM, missing Secrets).
    pub report: CertReport,
    /// (tenant, certificate) of every host served a certificate; a key found
    /// broken when built adds to the report at scrape time.
    used: Vec<(Box<str>, Arc<ParsedCert>)>,
}

impl CertStore {
    /// Builds the table of `config` from parsed certificates, checking
    /// validity dates against `now` (Unix seconds).
    pub fn build(
        config: &GatewayConfig,
        parsed: &HashMap<CertId, Result<Arc<ParsedCert>, CertProblem>>,
        now: i64,
    ) -> Self {
        let mut store = CertStore::default();
        let mut served = HashSet::new();
        for vhost in &config.hosts {
            let tenant = vhost.tenant.as_ref().map_or("", |t| t.as_str());
            let cert = match &vhost.tls {
                None => None,
                Some(HostTls::Unavailable(_)) => {
                    store.report_error(tenant, CertProblem::Unavailable);
                    None
                }
                Some(HostTls::Certificate(id)) => {
                    let checked = parsed
                        .get(id)
                        // validate() guarantees the reference; be safe anyway.
                        .unwrap_or(&Err(CertProblem::Unavailable))
                        .as_ref()
                        .map_err(|p| *p)
                        .and_then(|c| {
                            let e = store
                                .report
                                .expiry
                                .entry(tenant.to_string())
                                .or_insert(i64::MAX);
                            *e = (*e).min(c.not_after);
                            c.check_dates(now).map(|()| c)
                        });
                    match checked {
                        Ok(c) => {
                            served.insert(id);
                            store.used.push((tenant.into(), c.clone()));
                            Some(c.clone())
                        }
                        Err(problem) => {
                            store.report_error(tenant, problem);
                            None
                        }
                    }
                }
            };
            // First vhost of a pattern wins, as in the route table.
            let map = match &vhost.host {
                HostPattern::Exact(h) => Some((&mut store.exact, h.as_str())),
                HostPattern::Wildcard(s) => Some((&mut store.wildcard, s.as_str())),
                HostPattern::Any => None,
            };
            if let Some((map, key)) = map {
                if !map.contains_key(key) {
                    map.insert(key.into(), cert);
                }
            }
        }
        store.served = served.len();
        store
    }

    fn report_error(&mut self, tenant: &str, problem: CertProblem) {
        *self
            .report
            .errors
            .entry((tenant.to_string(), problem))
            .or_insert(0) += 1;
    }

    /// The certificate for a normalized SNI host name (`None`: no SNI):
    /// the most specific vhost's (exact, then `*.parent` for one label),
    /// else `default`.
    #[inline]
    pub fn select<'a>(
        &'a self,
        name: Option<&str>,
        default: Option<&'a Arc<CertifiedKey>>,
    ) -> Option<&'a Arc<CertifiedKey>> {
        let Some(name) = name else { return default };
        let found = self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        });
        match found {
            // A key that fails to build is served like no certificate.
            Some(Some(cert)) => cert.key().ok().or(default),
            _ => default,
        }
    }

    /// Hosts not served their certificate, by (tenant, reason): the
    /// compile-time report plus keys that failed when built.
    pub fn errors(&self) -> BTreeMap<(String, CertProblem), i64> {
        let mut errors = self.report.errors.clone();
        for (tenant, cert) in &self.used {
            if let Some(problem) = cert.key_problem() {
                *errors.entry((tenant.to_string(), problem)).or_insert(0) += 1;
            }
        }
        errors
    }

    /// Distinct certificates this runtime serves.
    pub fn len(&self) -> usize {
        self.served
    }

    pub fn is_empty(&self) -> bool {
        self.served == 0
    }
}

/// Whether two selections present the same certificate. Every host using a
/// `CertId` shares one `Arc`, so identity is a pointer comparison.
#[inline]
pub fn same_cert(a: Option<&Arc<CertifiedKey>>, b: Option<&Arc<CertifiedKey>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The certificate a handshake for server name `sni` gets from the live
/// runtime: its host's (see [`CertStore::select`]), else the default one.
fn certificate_for(shared: &Shared, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
    let mut buf = HostBuf::new();
    let name = sni.and_then(|n| normalize_host(n.as_bytes(), &mut buf).ok());
    let runtime = shared.runtime.load();
    runtime
        .certs
        .select(name, shared.cert_cache.default_cert())
        .cloned()
}

// === impl CertResolver ===

/// The listener's certificate resolver over the live runtime.
pub struct CertResolver {
    shared: Arc<Shared>,
}

impl CertResolver {
    pub fn new(shared: Arc<Shared>) -> Self {
        CertResolver { shared }
    }
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertResolver")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = certificate_for(&self.shared, hello.server_name());
        if cert.is_none() {
            // Only reached without SNI (a name without certificate was
            // refused by [`HelloGate`]); rustls answers `None` with a fatal
            // `access_denied` alert. Counted here because no later hook
            // sees this handshake.
            self.shared.metrics.tls.no_certificate.inc();
        }
        cert
    }
}

// === impl HandshakeObserver ===

/// What the proxy knows about a TLS connection, stored in the session's SSL
/// digest by [`HandshakeObserver`].
#[derive(Debug)]
pub struct TlsConn {
    /// The SNI, normalized like a Host header; `None` when the client sent none.
    pub sni: Option<Box<str>>,
    /// Set once the handshake latency was observed (first request).
    pub observed: AtomicBool,
}

/// Pingora's post-handshake hook: counts the handshake by protocol version
/// and attaches [`TlsConn`] to the connection.
pub struct HandshakeObserver {
    shared: Arc<Shared>,
}

#[async_trait]
impl TlsAccept for HandshakeObserver {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.shared.metrics.tls.handshake_ok(tls.version());
        let mut buf = HostBuf::new();
        let sni = tls
            .server_name()
            .and_then(|n| normalize_host(n.as_bytes(), &mut buf).ok())
            .map(Box::from);
        Some(Arc::new(TlsConn {
            sni,
            observed: AtomicBool::new(false),
        }))
    }
}

/// Reads each TLS connection's ClientHello before the handshake, then puts
/// it back for rustls. It
/// - counts the connection (failed handshakes are this count minus the
///   completed ones: Pingora has no hook for a failed handshake);
/// - bounds the time a client may take to send its hello (the header
///   timeout), where Pingora alone waits 60 s;
/// - refuses a server name that has no certificate (and no default) with the
///   `unrecognized_name` alert of RFC 6066. A rustls resolver can only
///   decline, which rustls answers with `access_denied`.
///
/// The hello is parsed by rustls' own `Acceptor`; anything it can't parse
/// (or a hello larger than [`MAX_HELLO`]) is passed on untouched for the
/// real handshake to fail as it would have.
pub struct HelloGate {
    shared: Arc<Shared>,
    /// Counts a handshaking connection in its client's slots.
    guard: Arc<crate::conn::ConnGuard>,
    timeout: std::time::Duration,
}

/// Bytes read while looking for a complete ClientHello (one full record,
/// large post-quantum key shares included, fits several times over).
const MAX_HELLO: usize = 64 * 1024;

/// TLS alert record: fatal (2), unrecognized_name (112), TLS 1.2 framing.
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

/// What the ClientHello said.
enum Hello {
    /// Parsed; the server name if the client sent one.
    Parsed(Option<String>),
    /// Not a ClientHello rustls could read, or the peer went away.
    Unreadable,
}

/// Reads from `stream` until rustls' `Acceptor` has a whole ClientHello.
/// Returns every byte read (to be put back) and what was found.
async fn read_hello(stream: &mut L4Stream) -> (Vec<u8>, Hello) {
    use tokio::io::AsyncReadExt;
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return (seen, Hello::Unreadable),
            Ok(n) => n,
        };
        seen.extend_from_slice(&buf[..n]);
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            if !matches!(acceptor.read_tls(&mut rest), Ok(1..)) {
                return (seen, Hello::Unreadable);
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(str::to_string);
                return (seen, Hello::Parsed(name));
            }
            Ok(None) if seen.len() < MAX_HELLO => continue,
            _ => return (seen, Hello::Unreadable),
        }
    }
}

#[async_trait]
impl PreTlsProcess for HelloGate {
    async fn process(&self, stream: &mut L4Stream) -> pingora_core::Result<()> {
        use pingora_core::{Error, ErrorType};
        use tokio::io::AsyncWriteExt;
        self.shared.metrics.tls.connections.inc();
        if !self.guard.begin_handshake(stream) {
            return Err(Error::explain(
                ErrorType::ConnectRefused,
                "client at its connection cap",
            ));
        }
        let Ok((seen, hello)) = tokio::time::timeout(self.timeout, read_hello(stream)).await else {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "no ClientHello within the header timeout",
            ));
        };
        if let Hello::Parsed(Some(name)) = &hello {
            if certificate_for(&self.shared, Some(name)).is_none() {
                self.shared.metrics.tls.no_certificate.inc();
                // Best effort: the connection is dropped either way.
                let _ = stream.write_all(&UNRECOGNIZED_NAME).await;
                let _ = stream.flush().await;
                return Err(Error::explain(
                    ErrorType::HandshakeError,
                    "no certificate for the requested server name",
                ));
            }
        }
        stream.rewind(&seen);
        Ok(())
    }
}

/// The HTTPS listener's settings: TLS 1.2 and 1.3 (Pingora's rustls
/// builder fixes those), ALPN h2 + http/1.1, certificates from
/// [`CertResolver`], handshakes observed by [`HandshakeObserver`].
///
/// Session resumption: Pingora builds the rustls `ServerConfig` itself and
/// exposes neither `ticketer` nor `session_storage`, so stateless tickets
/// can't be turned on; rustls' default stateful cache (256 sessions per
/// listener) serves TLS 1.2 session ids and TLS 1.3 resumption tickets.
pub fn listener_settings(shared: &Arc<Shared>) -> pingora_core::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(HandshakeObserver {
        shared: shared.clone(),
    }))?;
    settings.set_cert_resolver(Arc::new(CertResolver::new(shared.clone())));
    settings.enable_h2();
    Ok(settings)
}

/// The pre-handshake ClientHello gate of the HTTPS listener; `timeout`
/// bounds the wait for the hello.
pub fn hello_gate(
    shared: &Arc<Shared>,
    guard: Arc<crate::conn::ConnGuard>,
    timeout: std::time::Duration,
) -> Arc<HelloGate> {
    Arc::new(HelloGate {
        shared: shared.clone(),
        guard,
        timeout,
    })
}

/// Prometheus handles of the TLS listener.
pub struct TlsMetrics {
    pub connections: prometheus::IntCounter,
    pub no_certificate: prometheus::IntCounter,
    pub ok_tls12: prometheus::IntCounter,
    pub ok_tls13: prometheus::IntCounter,
    pub ok_other: prometheus::IntCounter,
    pub handshake_seconds: prometheus::Histogram,
    pub cert_errors: prometheus::IntGaugeVec,
    pub cert_expiry_days: prometheus::GaugeVec,
}

impl TlsMetrics {
    #[inline]
    fn handshake_ok(&self, version: Option<&str>) {
        match version {
            Some("TLSv1_3") => self.ok_tls13.inc(),
            Some("TLSv1_2") => self.ok_tls12.inc(),
            _ => self.ok_other.inc(),
        }
    }

    /// Publishes the certificate state of the live runtime; days left are
    /// computed at scrape time so the gauge falls without config changes.
    pub fn publish(&self, store: &CertStore, now: i64) {
        let report = &store.report;
        self.cert_errors.reset();
        for ((tenant, problem), n) in &store.errors() {
            self.cert_errors
                .with_label_values(&[tenant.as_str(), problem.as_str()])
                .set(*n);
        }
        self.cert_expiry_days.reset();
        for (tenant, not_after) in &report.expiry {
            let days = (*not_after - now) as f64 / 86_400.0;
            self.cert_expiry_days
                .with_label_values(&[tenant.as_str()])
                .set((days * 100.0).floor() / 100.0);
        }
    }
}

/// Registers the TLS metrics.
pub(crate) fn tls_metrics(metrics_registry: &prometheus::Registry) -> TlsMetrics {
    use prometheus::{
        GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    };
    fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &prometheus::Registry, c: T) -> T {
        // Names are static and unique, so registration cannot fail.
        let _ = r.register(Box::new(c.clone()));
        c
    }
    let r = metrics_registry;
    let connections = reg(
        r,
        IntCounter::new(
            "vestibule_tls_connections_total",
            "Connections accepted by the HTTPS listener, before the handshake (failed handshakes = this - completed - in progress)",
        )
        .unwrap_or_else(|_| unreachable!()),
    );
    let handshakes = reg(
        r,
        IntCounterVec::new(
            Opts::new(
                "vestibule_tls_handshakes_total",
                "TLS handshakes by result (ok, no_certificate) and protocol version",
            ),
            &["result", "version"],
        )
        .unwrap_or_else(|_| unreachable!()),
    );
    let handshake_seconds = reg(
        r,
        Histogram::with_opts(
            HistogramOpts::new(
                "vestibule_tls_handshake_seconds",
                "TLS handshake time, from the first byte read to the handshake's end (observed at the connection's first request)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .unwrap_or_else(|_| unreachable!()),
    );
    let cert_errors = reg(
        r,
        IntGaugeVec::new(
            Opts::new(
                "vestibule_tls_cert_errors",
                "Hosts of the live config whose certificate is not served, by tenant and reason",
            ),
            &["tenant", "reason"],
        )
        .unwrap_or_else(|_| unreachable!()),
    );
    let cert_expiry_days = reg(
        r,
        GaugeVec::new(
            Opts::new(
                "vestibule_tls_cert_expiry_days",
                "Days until the tenant's first certificate expires (negative: expired)",
            ),
            &["tenant"],
        )
        .unwrap_or_else(|_| unreachable!()),
    );
    TlsMetrics {
        connections,
        no_certificate: handshakes.with_label_values(&["no_certificate", ""]),
        ok_tls12: handshakes.with_label_values(&["ok", "TLSv1.2"]),
        ok_tls13: handshakes.with_label_values(&["ok", "TLSv1.3"]),
        ok_other: handshakes.with_label_values(&["ok", "other"]),
        handshake_seconds,
        cert_errors,
        cert_expiry_days,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vestibule_config::model::{TenantId, VirtualHost};

    fn cert(names: &[&str]) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        Certificate {
            cert_pem: c.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn host(pattern: &str, tenant: Option<&str>, tls: Option<HostTls>) -> VirtualHost {
        VirtualHost {
            host: HostPattern::parse(pattern).unwrap(),
            tenant: tenant.map(TenantId::new),
            tls,
            routes: vec![],
        }
    }

    /// Reads the PEMs and builds the key at once.
    fn parse_now(cert_pem: &[u8], key_pem: &[u8]) -> Result<ParsedCert, CertProblem> {
        let parsed = ParsedCert::parse(cert_pem, key_pem)?;
        parsed.key()?;
        Ok(parsed)
    }

    #[test]
    fn key_types_and_mismatch() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let c = rcgen::CertificateParams::new(vec!["a.test".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let parsed = parse_now(c.pem().as_bytes(), key.serialize_pem().as_bytes());
            assert!(parsed.is_ok(), "{alg:?}");
        }
        let a = cert(&["a.test"]);
        let b = cert(&["b.test"]);
        // The key is checked when first built, not when the PEMs are read.
        let lazy = ParsedCert::parse(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap();
        assert_eq!(lazy.key_problem(), None);
        assert_eq!(lazy.key().unwrap_err(), CertProblem::KeyMismatch);
        assert_eq!(lazy.key_problem(), Some(CertProblem::KeyMismatch));
        let mismatch = parse_now(a.cert_pem.as_bytes(), b.key_pem.as_bytes());
        assert_eq!(mismatch.unwrap_err(), CertProblem::KeyMismatch);
        let garbage = ParsedCert::parse(b"nope", a.key_pem.as_bytes());
        assert_eq!(garbage.unwrap_err(), CertProblem::BadCertificate);
        let nokey = ParsedCert::parse(a.cert_pem.as_bytes(), b"nope");
        assert_eq!(nokey.unwrap_err(), CertProblem::BadKey);
    }

    #[test]
    fn selection_precedence_and_cache_reuse() {
        let a = cert(&["a.test"]);
        let w = cert(&["*.w.test"]);
        let bad = Certificate {
            cert_pem: "garbage".into(),
            key_pem: a.key_pem.clone(),
        };
        let mut config = GatewayConfig::default();
        for c in [&a, &w, &bad] {
            config.certificates.insert(c.id(), c.clone());
        }
        config.hosts = vec![
            host("a.test", Some("t"), Some(HostTls::Certificate(a.id()))),
            host("*.w.test", None, Some(HostTls::Certificate(w.id()))),
            // An exact host under the wildcard with a broken cert never
            // borrows the wildcard's certificate.
            host("x.w.test", Some("t"), Some(HostTls::Certificate(bad.id()))),
            host("plain.w.test", None, None),
        ];
        let cache = CertCache::default();
        let parsed = cache.prepare(&config);
        let store = CertStore::build(&config, &parsed, crate::runtime::unix_now() as i64);
        let ka = store.select(Some("a.test"), None).unwrap();
        let kw = store.select(Some("y.w.test"), None).unwrap();
        assert!(!same_cert(Some(ka), Some(kw)));
        assert!(store.select(Some("x.w.test"), None).is_none());
        assert!(store.select(Some("plain.w.test"), None).is_none());
        assert!(store.select(Some("a.b.w.test"), None).is_none());
        assert!(store.select(None, Some(ka)).is_some());
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.report.errors[&("t".to_string(), CertProblem::BadCertificate)],
            1
        );

        // A second compile reuses the parsed key (same Arc); dropping a
        // certificate from the config drops it from the cache.
        let parsed2 = cache.prepare(&config);
        let store2 = CertStore::build(&config, &parsed2, crate::runtime::unix_now() as i64);
        assert!(same_cert(store2.select(Some("a.test"), None), Some(ka)));
        config.certificates.remove(&bad.id());
        config.hosts.truncate(2);
        cache.prepare(&config);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn expired_is_rejected_for_its_host_only() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["old.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let old = Certificate {
            cert_pem: params.self_signed(&key).unwrap().pem(),
            key_pem: key.serialize_pem(),
        };
        let good = cert(&["good.test"]);
        let mut config = GatewayConfig::default();
        config.certificates.insert(old.id(), old.clone());
        config.certificates.insert(good.id(), good.clone());
        config.hosts = vec![
            host(
                "old.test",
                Some("old"),
                Some(HostTls::Certificate(old.id())),
            ),
            host(
                "good.test",
                Some("good"),
                Some(HostTls::Certificate(good.id())),
            ),
        ];
        let cache = CertCache::default();
        let now = crate::runtime::unix_now() as i64;
        let store = CertStore::build(&config, &cache.prepare(&config), now);
        assert!(store.select(Some("old.test"), None).is_none());
        assert!(store.select(Some("good.test"), None).is_some());
        assert_eq!(
            store.report.errors[&("old".to_string(), CertProblem::Expired)],
            1
        );
        assert!(store.report.expiry["old"] < now);
        assert!(store.report.expiry["good"] > now);
    }
}
