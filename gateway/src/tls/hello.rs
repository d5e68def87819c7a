//! The pre-handshake ClientHello gate of the HTTPS listener (Pingora's
//! pre-TLS hook): counts the connection in its client's slots, bounds the
//! wait for the hello, and refuses a name without certificate with
//! `unrecognized_name`.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::stream::Stream as L4Stream;

use super::{alpn_challenge, certificate_for, LiveCerts};
use crate::conn::ConnGuard;
use crate::route::{normalize_host, HostBuf};

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
    live: Arc<dyn LiveCerts>,
    /// Counts a handshaking connection in its client's slots.
    guard: Arc<ConnGuard>,
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
    /// An ACME TLS-ALPN-01 validation for this server name.
    AcmeChallenge(String),
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
                let hello = accepted.client_hello();
                let name = hello.server_name().map(str::to_string);
                return match name {
                    Some(name) if alpn_challenge::is_challenge(&hello) => {
                        (seen, Hello::AcmeChallenge(name))
                    }
                    name => (seen, Hello::Parsed(name)),
                };
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
        let metrics = self.live.tls_metrics();
        metrics.connections.inc();
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
        if let Hello::AcmeChallenge(name) = &hello {
            let mut buf = HostBuf::new();
            let cert = normalize_host(name.as_bytes(), &mut buf)
                .ok()
                .and_then(|n| self.live.tls_alpn01(n));
            let answered = match cert {
                Some(cert) => {
                    tokio::time::timeout(self.timeout, alpn_challenge::answer(stream, &seen, cert))
                        .await
                        .is_ok_and(|r| r.is_ok())
                }
                None => false,
            };
            return Err(Error::explain(
                ErrorType::HandshakeError,
                if answered {
                    "ACME TLS-ALPN-01 challenge answered"
                } else {
                    "acme-tls/1 for a server name with no pending challenge"
                },
            ));
        }
        if let Hello::Parsed(Some(name)) = &hello {
            let mut buf = HostBuf::new();
            if let Ok(normalized) = normalize_host(name.as_bytes(), &mut buf) {
                // A tenant domain waiting for its ACME certificate: this
                // handshake starts the order (it gets the default
                // certificate or `unrecognized_name` meanwhile).
                self.live.on_demand(normalized);
            }
            if certificate_for(&*self.live, Some(name)).is_none() {
                metrics.no_certificate.inc();
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

/// The pre-handshake ClientHello gate of the HTTPS listener; `timeout`
/// bounds the wait for the hello.
pub fn hello_gate(
    live: Arc<dyn LiveCerts>,
    guard: Arc<ConnGuard>,
    timeout: std::time::Duration,
) -> Arc<HelloGate> {
    Arc::new(HelloGate {
        live,
        guard,
        timeout,
    })
}
