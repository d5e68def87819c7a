//! PROXY protocol v1 and v2 (HAProxy's) on the HTTP and HTTPS listeners
//! (`--proxy-protocol`): a cloud load balancer or MetalLB speaks it to say
//! which client it carries. The address it names replaces the connection's
//! peer address before anything reads it, so per-IP connection caps, the
//! TLS gate, source-range rules, rate limits, forwarding headers and the
//! access log all see the client, not the balancer.
//!
//! With the flag on, every connection must start with a header: one without
//! is closed (as nginx's `listen ... proxy_protocol` does), since a client
//! reaching the listener directly could otherwise name any address. So the
//! flag belongs on listeners only the balancer can reach.

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use pingora_core::{Error, ErrorType};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;

/// The largest header accepted: v2 with TLVs (AWS adds a VPC endpoint id,
/// Azure a link id) stays far below; v1 is at most 107 bytes.
const MAX_HEADER: usize = 4096;

/// The longest v1 header, CRLF included (the spec's figure).
const V1_MAX: usize = 107;

/// What a header said of the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// The client's address, as the balancer saw it.
    Client(SocketAddr),
    /// `LOCAL` (v2) or `UNKNOWN` (v1): the balancer's own connection, a
    /// health check; the socket's peer stays.
    Local,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The first bytes are not a PROXY header.
    NotProxyProtocol,
    /// A header larger than [`MAX_HEADER`].
    TooLarge,
    /// The peer closed or erred before a whole header arrived.
    Closed,
}

/// Parses a header at the start of `buf`: `Ok(Some((source, length)))`
/// when a whole one is there, `Ok(None)` when more bytes may complete it.
pub fn parse(buf: &[u8]) -> Result<Option<(Source, usize)>, Refusal> {
    let parsed = HeaderResult::parse(buf);
    // ppp reads a v1 line with a bad field as one still coming: a v1
    // header is one line of at most 107 bytes, so once the line ended (or
    // ran past that) it is not one.
    let v1_done = buf.starts_with(b"PROXY") && (buf.contains(&b'\n') || buf.len() > V1_MAX);
    if parsed.is_incomplete() && v1_done {
        return Err(Refusal::NotProxyProtocol);
    }
    if parsed.is_incomplete() {
        return if buf.len() < MAX_HEADER {
            Ok(None)
        } else {
            Err(Refusal::TooLarge)
        };
    }
    let (source, len) = match parsed {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                v1::Addresses::Tcp4(a) => Source::Client((a.source_address, a.source_port).into()),
                v1::Addresses::Tcp6(a) => Source::Client((a.source_address, a.source_port).into()),
                v1::Addresses::Unknown => Source::Local,
            };
            (source, h.header.len())
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Source::Client((a.source_address, a.source_port).into())
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Source::Client((a.source_address, a.source_port).into())
                }
                // LOCAL, or a family with no IP (UNSPEC, UNIX).
                _ => Source::Local,
            };
            (source, h.len())
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => {
            return Err(Refusal::NotProxyProtocol)
        }
    };
    if len > MAX_HEADER {
        return Err(Refusal::TooLarge);
    }
    Ok(Some((source, len)))
}

/// Reads the header off `stream`; bytes read past it are put back.
async fn read_header(stream: &mut L4Stream) -> Result<Source, Refusal> {
    let mut seen = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        // Never read further than the largest header allowed.
        let room = (MAX_HEADER + 1 - seen.len()).min(buf.len());
        let n = match stream.read(&mut buf[..room]).await {
            Ok(0) | Err(_) => return Err(Refusal::Closed),
            Ok(n) => n,
        };
        seen.extend_from_slice(&buf[..n]);
        if let Some((source, len)) = parse(&seen)? {
            if len < seen.len() {
                stream.rewind(&seen[len..]);
            }
            return Ok(source);
        }
    }
}

/// Makes `client` the peer address every later reader of the stream sees.
fn set_peer(stream: &mut L4Stream, client: SocketAddr) {
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    // A fresh digest: nothing has read its peer yet.
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(client)));
    stream.set_socket_digest(digest);
}

/// The listeners' pre-handshake step: reads the PROXY header, then runs
/// `then` (the HTTPS listener's ClientHello gate).
pub struct ProxyProtocol {
    pub timeout: Duration,
    pub then: Option<Arc<dyn PreTlsProcess>>,
}

#[async_trait]
impl PreTlsProcess for ProxyProtocol {
    async fn process(&self, stream: &mut L4Stream) -> pingora_core::Result<()> {
        let read = tokio::time::timeout(self.timeout, read_header(stream)).await;
        match read {
            Ok(Ok(Source::Client(client))) => set_peer(stream, client),
            Ok(Ok(Source::Local)) => {}
            Ok(Err(why)) => {
                return Err(Error::explain(
                    ErrorType::HandshakeError,
                    format!("PROXY protocol header expected: {why:?}"),
                ))
            }
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "no PROXY protocol header within the header timeout",
                ))
            }
        }
        match &self.then {
            Some(next) => next.process(stream).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_name_the_client() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let (source, len) = parse(v1).unwrap().unwrap();
        assert_eq!(source, Source::Client("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(&v1[len..len + 3], b"GET");
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n";
        let (source, _) = parse(v6).unwrap().unwrap();
        assert_eq!(
            source,
            Source::Client("[2001:db8::7]:51234".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            Source::Local
        );

        let src: SocketAddr = "198.51.100.9:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (src, dst),
        )
        .write_tlv(v2::Type::NoOp, b"pad")
        .unwrap()
        .build()
        .unwrap();
        let mut wire = header.clone();
        wire.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&wire).unwrap().unwrap(),
            (Source::Client(src), header.len())
        );
        // Byte by byte, a header is incomplete until its last byte.
        for cut in 1..header.len() {
            assert_eq!(parse(&header[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(Refusal::NotProxyProtocol)
        );
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00"),
            Err(Refusal::NotProxyProtocol)
        );
        assert_eq!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"),
            Err(Refusal::NotProxyProtocol)
        );
        assert_eq!(
            parse(b"PROXY TCP4 bogus\r\nGET / HTTP/1.1\r\n"),
            Err(Refusal::NotProxyProtocol)
        );
        // A v1 line that never ends.
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(parse(&endless).is_err());
    }
}
