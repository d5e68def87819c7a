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
//! - [`HelloGate`] (Pingora's pre-TLS hook) reads the ClientHello first:
//!   it refuses names without certificate, starts on-demand ACME orders and
//!   answers TLS-ALPN-01 validations (`alpn_challenge`).
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

mod alpn_challenge;
mod cert;
mod handshake;
mod hello;
mod store;

pub use cert::{load_default_cert, CertCache, CertProblem, DefaultCertError, ParsedCert};
pub use handshake::{listener_settings, CertResolver, HandshakeObserver, TlsConn};
pub use hello::{hello_gate, HelloGate};
pub use store::{same_cert, CertReport, CertStore};

use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::metrics::TlsMetrics;
use crate::route::{normalize_host, HostBuf};

/// What the TLS hooks need of the live gateway, without knowing its types
/// (the runtime implements it; this module never imports the runtime).
pub trait LiveCerts: Send + Sync + 'static {
    /// The certificate a handshake for the normalized server name `name`
    /// gets in the live runtime: its host's, else the default one.
    fn certificate(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>>;
    fn tls_metrics(&self) -> &TlsMetrics;
    /// A handshake named `name` (normalized): if its host waits for an
    /// ACME certificate, ask the issuer for it (on-demand issuance). Must
    /// not block.
    fn on_demand(&self, name: &str);
    /// The TLS-ALPN-01 challenge certificate pending for `name`, if any.
    fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>>;
}

/// [`LiveCerts::certificate`] for a server name as the client sent it.
fn certificate_for(live: &dyn LiveCerts, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
    let mut buf = HostBuf::new();
    let name = sni.and_then(|n| normalize_host(n.as_bytes(), &mut buf).ok());
    live.certificate(name)
}
