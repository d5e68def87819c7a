//! How the gateway speaks to a pool's endpoints: HTTP/1.1 over TCP unless
//! the pool is listed in `GatewayConfig::upstream_protocols` (ingress-nginx's
//! `backend-protocol`): h2c, or TLS with HTTP/1.1 or HTTP/2, verified
//! against roots the config names unless verification is explicitly off.

use serde::{Deserialize, Serialize};

use crate::hostname::Hostname;

/// Longest PEM bundle of upstream roots accepted.
pub const MAX_ROOTS_PEM: usize = 256 * 1024;

/// A pool's protocol, when it is not HTTP/1.1 over TCP.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum UpstreamProtocol {
    /// HTTP/2 with prior knowledge, no TLS (`H2C`, `GRPC`).
    H2c,
    /// TLS, then HTTP/1.1 (`HTTPS`).
    Https(UpstreamTls),
    /// TLS, then HTTP/2 by ALPN (`GRPCS`).
    H2(UpstreamTls),
}

impl UpstreamProtocol {
    /// A short tag for pool ids and logs.
    pub fn tag(&self) -> &'static str {
        match self {
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Https(_) => "https",
            UpstreamProtocol::H2(_) => "h2",
        }
    }

    pub fn tls(&self) -> Option<&UpstreamTls> {
        match self {
            UpstreamProtocol::H2c => None,
            UpstreamProtocol::Https(tls) | UpstreamProtocol::H2(tls) => Some(tls),
        }
    }

    /// Whether requests go over HTTP/2.
    pub fn h2(&self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2(_))
    }
}

/// TLS to an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamTls {
    /// Sent as SNI, and the name the certificate must carry.
    pub server_name: Hostname,
    pub verify: UpstreamVerify,
}

/// How an upstream's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum UpstreamVerify {
    /// Against the system's roots.
    SystemRoots,
    /// Against these PEM roots (a Secret's `ca.crt`).
    Roots(String),
    /// Not at all: asked for explicitly (`proxy-ssl-verify: "off"`).
    Off,
}
