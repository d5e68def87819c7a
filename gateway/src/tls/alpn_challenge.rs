//! ACME TLS-ALPN-01 (RFC 8737) on the HTTPS listener: a ClientHello that
//! offers only ALPN `acme-tls/1` for a domain with a pending challenge gets
//! the challenge certificate in a handshake of its own, then the connection
//! is closed. It never reaches the proxy or the tenant certificates.

use std::sync::Arc;

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ALPN protocol of the challenge.
pub const ACME_TLS_1: &[u8] = b"acme-tls/1";

/// Whether a ClientHello is a TLS-ALPN-01 validation: RFC 8737 §3 has the
/// CA offer `acme-tls/1` and nothing else.
pub fn is_challenge(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.all(|p| p == ACME_TLS_1))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Completes the handshake begun with the bytes in `seen` (the ClientHello
/// the gate read) presenting `cert`, then closes the TLS session. The
/// caller bounds the time it takes.
pub async fn answer(
    stream: &mut L4Stream,
    seen: &[u8],
    cert: Arc<CertifiedKey>,
) -> std::io::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(cert)));
    config.alpn_protocols = vec![ACME_TLS_1.to_vec()];
    let mut conn = ServerConnection::new(Arc::new(config)).map_err(std::io::Error::other)?;
    let mut input = seen.to_vec();
    let mut buf = [0u8; 4096];
    loop {
        let mut rest = &input[..];
        while !rest.is_empty() {
            conn.read_tls(&mut rest)?;
            conn.process_new_packets().map_err(std::io::Error::other)?;
        }
        flush(&mut conn, stream).await?;
        if !conn.is_handshaking() {
            break;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        input = buf[..n].to_vec();
    }
    conn.send_close_notify();
    flush(&mut conn, stream).await
}

async fn flush(conn: &mut ServerConnection, stream: &mut L4Stream) -> std::io::Result<()> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    if !out.is_empty() {
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
    Ok(())
}
