//! How a pool's peers speak (`UpstreamProtocol`): h2c with prior
//! knowledge, or TLS with SNI, ALPN and verification against the system's
//! or the config's roots. Parsed once per pool; every endpoint's peer is
//! built from it.

use std::sync::Arc;

use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use vestibule_config::model::{UpstreamProtocol, UpstreamVerify};

/// HTTP/2 streams one upstream connection carries at once (gRPC
/// multiplexes; Pingora's default is 1).
const H2_STREAMS: usize = 128;

/// A pool's protocol, with its roots parsed.
pub struct Wire {
    pub protocol: UpstreamProtocol,
    /// The config's roots (`UpstreamVerify::Roots`). Certificates that do
    /// not parse are left out; none left means every handshake fails,
    /// never that verification is skipped.
    roots: Option<Arc<[WrappedX509]>>,
    /// Tells this wire's pooled connections apart from others to the same
    /// address: Pingora's connection reuse key leaves out the per-peer
    /// roots, so a connection verified against one pool's CA would
    /// otherwise serve a pool that trusts another (or only the system's).
    group: u64,
}

impl Wire {
    pub fn new(protocol: UpstreamProtocol) -> Self {
        let roots = match protocol.tls().map(|t| &t.verify) {
            Some(UpstreamVerify::Roots(pem)) => Some(parse_roots(pem)),
            _ => None,
        };
        let group = {
            use std::hash::{Hash, Hasher};
            let mut h = ahash::AHasher::default();
            protocol.hash(&mut h);
            h.finish()
        };
        Wire {
            protocol,
            roots,
            group,
        }
    }

    /// A plain peer of `addr` (or one speaking this wire).
    pub fn peer(wire: Option<&Wire>, addr: std::net::SocketAddr) -> HttpPeer {
        let Some(wire) = wire else {
            return HttpPeer::new(addr, false, String::new());
        };
        let tls = wire.protocol.tls();
        let sni = tls.map_or_else(String::new, |t| t.server_name.as_str().to_string());
        let mut peer = HttpPeer::new(addr, tls.is_some(), sni);
        peer.group_key = wire.group;
        let o = &mut peer.options;
        if wire.protocol.h2() {
            o.alpn = ALPN::H2;
            o.max_h2_streams = H2_STREAMS;
        }
        match tls.map(|t| &t.verify) {
            Some(UpstreamVerify::Off) => {
                o.verify_cert = false;
                o.verify_hostname = false;
            }
            Some(UpstreamVerify::Roots(_)) => o.ca = wire.roots.clone(),
            Some(UpstreamVerify::SystemRoots) | None => {}
        }
        peer
    }
}

fn parse_roots(pem: &str) -> Arc<[WrappedX509]> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        // `parse_x509` panics on what x509-parser refuses: check first.
        .filter(|der| x509_parser::parse_x509_certificate(der).is_ok())
        .map(|der| WrappedX509::new(der.to_vec(), parse_x509))
        .collect::<Vec<_>>()
        .into()
}
