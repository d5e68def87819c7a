//! The rustls and Pingora hooks of the HTTPS listener: the certificate
//! resolver over the live runtime (a swap changes certificates for the next
//! handshake without touching the listener), and the post-handshake
//! observer that counts handshakes and keeps the SNI for the 421 check.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{certificate_for, LiveCerts};
use crate::route::{normalize_host, HostBuf};

/// The listener's certificate resolver over the live runtime.
pub struct CertResolver {
    live: Arc<dyn LiveCerts>,
}

impl CertResolver {
    pub fn new(live: Arc<dyn LiveCerts>) -> Self {
        CertResolver { live }
    }
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertResolver")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = certificate_for(&*self.live, hello.server_name());
        if cert.is_none() {
            // Only reached without SNI (a name without certificate was
            // refused by [`HelloGate`]); rustls answers `None` with a fatal
            // `access_denied` alert. Counted here because no later hook
            // sees this handshake.
            self.live.tls_metrics().no_certificate.inc();
        }
        cert
    }
}

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
    live: Arc<dyn LiveCerts>,
}

#[async_trait]
impl TlsAccept for HandshakeObserver {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.live.tls_metrics().handshake_ok(tls.version());
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

/// The HTTPS listener's settings: TLS 1.2 and 1.3 (Pingora's rustls
/// builder fixes those), ALPN h2 + http/1.1, certificates from
/// [`CertResolver`], handshakes observed by [`HandshakeObserver`].
///
/// Session resumption: Pingora builds the rustls `ServerConfig` itself and
/// exposes neither `ticketer` nor `session_storage`, so stateless tickets
/// can't be turned on; rustls' default stateful cache (256 sessions per
/// listener) serves TLS 1.2 session ids and TLS 1.3 resumption tickets.
pub fn listener_settings(live: Arc<dyn LiveCerts>) -> pingora_core::Result<TlsSettings> {
    let mut settings =
        TlsSettings::with_callbacks(Box::new(HandshakeObserver { live: live.clone() }))?;
    settings.set_cert_resolver(Arc::new(CertResolver::new(live)));
    settings.enable_h2();
    Ok(settings)
}
