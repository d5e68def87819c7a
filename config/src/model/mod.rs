//! The GatewayConfig IR: what a gateway serves, independent of where it came from.
//!
//! Every collection is sorted (maps are `BTreeMap`, vectors are sorted by the
//! translator), so the same config always serializes to the same bytes and the
//! `version` (a content hash) is stable across runs and replicas.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::hostname::{HostPattern, Hostname};

mod auth;
mod cors;
mod delta;
mod digest;
mod route;
mod upstream;

pub use auth::*;
pub use cors::*;
pub use delta::*;
pub use route::*;
pub use upstream::*;

// === impl GatewayConfig ===

/// One complete gateway configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayConfig {
    /// Content hash of everything below; see [`GatewayConfig::seal`].
    #[serde(default)]
    pub version: ConfigVersion,
    /// Virtual hosts, sorted by host pattern.
    #[serde(default)]
    pub hosts: Vec<VirtualHost>,
    /// Catch-all used when no host and no route matches (`spec.defaultBackend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<Backend>,
    #[serde(default)]
    pub pools: BTreeMap<PoolId, Pool>,
    /// Pools that speak h2c or TLS upstream; the rest speak HTTP/1.1 over TCP.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream_protocols: BTreeMap<PoolId, UpstreamProtocol>,
    /// Certificates by content id; hosts refer to them, so one PEM shared by
    /// many hosts is stored (and parsed by the gateway) once.
    #[serde(default)]
    pub certificates: BTreeMap<CertId, Certificate>,
    #[serde(default)]
    pub tenants: BTreeMap<TenantId, Tenant>,
    /// Pending ACME HTTP-01 challenges: token -> key authorization, which
    /// every replica answers at `/.well-known/acme-challenge/<token>` on its
    /// HTTP listener (RFC 8555 §8.3).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acme_http01: BTreeMap<String, String>,
    /// Pending ACME TLS-ALPN-01 challenges: domain -> the self-signed
    /// challenge certificate (a throwaway key), which every replica presents
    /// to a ClientHello offering only `acme-tls/1` (RFC 8737).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acme_tls_alpn01: BTreeMap<Hostname, Certificate>,
}

/// Longest PEM accepted for a TLS-ALPN-01 challenge certificate or key.
const MAX_CHALLENGE_PEM: usize = 8 * 1024;

/// Longest ACME token or key authorization accepted (RFC 8555 tokens are
/// 128 bits of base64url; a key authorization adds a 43-byte thumbprint).
const MAX_ACME_VALUE: usize = 256;

/// Base64url, and `.` between token and thumbprint: safe in a path and in
/// a response body as is.
fn acme_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_ACME_VALUE
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl GatewayConfig {
    /// The content hash of the config, ignoring the current `version` field:
    /// a sum of one digest per entry (see [`digest`]), so a [`ConfigDelta`]
    /// updates it in time proportional to the change.
    pub fn content_version(&self) -> ConfigVersion {
        digest::of_config(self).version()
    }

    /// The stated version, or the content hash when none is stated (a
    /// hand-written config file).
    pub fn effective_version(&self) -> ConfigVersion {
        if self.version.is_empty() {
            self.content_version()
        } else {
            self.version.clone()
        }
    }

    /// Sets `version` to the content hash.
    pub fn seal(mut self) -> Self {
        self.version = self.content_version();
        self
    }

    /// Parses a config from YAML or JSON and checks its integrity. JSON
    /// (what the operator sends and `--state-dir` holds) is read by a JSON
    /// parser: the YAML parser's node budget, a guard for hand-written
    /// files, would refuse 100k tenants.
    pub fn from_text(text: &str) -> Result<Self, ConfigError> {
        let config: GatewayConfig = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the references inside the config: every route names a known
    /// pool, every TLS host a known certificate, every tenant host a known tenant.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let pool = |b: &Backend| match b {
            Backend::Pool(id) if !self.pools.contains_key(id) => {
                Err(ConfigError::Reference(format!("unknown pool {id}")))
            }
            _ => Ok(()),
        };
        for vhost in &self.hosts {
            self.check_host(vhost)?;
        }
        if let Some(b) = &self.default_backend {
            pool(b)?;
        }
        for (id, protocol) in &self.upstream_protocols {
            self.check_upstream_protocol(id, protocol)?;
        }
        for (token, key_authorization) in &self.acme_http01 {
            check_http01(token, key_authorization)?;
        }
        for (domain, cert) in &self.acme_tls_alpn01 {
            check_tls_alpn01(domain, cert)?;
        }
        if !self.version.is_empty() && self.version != self.content_version() {
            return Err(ConfigError::Version {
                stated: self.version.clone(),
                actual: self.content_version(),
            });
        }
        Ok(())
    }
}

/// An HTTP-01 token and key authorization are base64url, bounded.
pub(crate) fn check_http01(token: &str, key_authorization: &str) -> Result<(), ConfigError> {
    if token.contains('.') || !acme_value(token) || !acme_value(key_authorization) {
        return Err(ConfigError::AcmeChallenge {
            token: token.chars().take(64).collect(),
        });
    }
    Ok(())
}

/// A TLS-ALPN-01 challenge certificate is small.
pub(crate) fn check_tls_alpn01(domain: &Hostname, cert: &Certificate) -> Result<(), ConfigError> {
    if cert.cert_pem.len() > MAX_CHALLENGE_PEM || cert.key_pem.len() > MAX_CHALLENGE_PEM {
        return Err(ConfigError::AcmeTlsAlpn01 {
            domain: domain.to_string(),
        });
    }
    Ok(())
}

impl GatewayConfig {
    /// An upstream protocol names a pool of the config; its roots are bounded.
    pub(crate) fn check_upstream_protocol(
        &self,
        id: &PoolId,
        protocol: &UpstreamProtocol,
    ) -> Result<(), ConfigError> {
        if !self.pools.contains_key(id) {
            return Err(ConfigError::Reference(format!(
                "upstream protocol for unknown pool {id}"
            )));
        }
        if let Some(UpstreamVerify::Roots(pem)) = protocol.tls().map(|t| &t.verify) {
            if pem.len() > MAX_ROOTS_PEM {
                return Err(ConfigError::Reference(format!(
                    "pool {id}: upstream roots larger than {MAX_ROOTS_PEM} bytes"
                )));
            }
        }
        Ok(())
    }

    /// The references of one vhost: its pools, certificate and tenant exist.
    fn check_host(&self, vhost: &VirtualHost) -> Result<(), ConfigError> {
        for route in &vhost.routes {
            if let Some(id) = route.pools().find(|id| !self.pools.contains_key(*id)) {
                return Err(ConfigError::Reference(format!("unknown pool {id}")));
            }
        }
        if let Some(HostTls::Certificate(id)) = &vhost.tls {
            if !self.certificates.contains_key(id) {
                return Err(ConfigError::Reference(format!(
                    "host {} uses unknown certificate {id}",
                    vhost.host
                )));
            }
        }
        if let Some(t) = &vhost.tenant {
            if !self.tenants.contains_key(t) {
                return Err(ConfigError::Reference(format!(
                    "host {} names unknown tenant {t}",
                    vhost.host
                )));
            }
        }
        Ok(())
    }
}

/// A config file or payload that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid YAML/JSON for a GatewayConfig: {0}")]
    Parse(String),
    #[error("config refers to something it does not define: {0}")]
    Reference(String),
    #[error("ACME TLS-ALPN-01 challenge for {domain}: certificate or key over 8 KiB")]
    AcmeTlsAlpn01 { domain: String },
    #[error("ACME HTTP-01 challenge {token:?}: token and key authorization must be base64url (at most 256 bytes)")]
    AcmeChallenge { token: String },
    #[error("config version {stated} does not match its content (hash {actual})")]
    Version {
        stated: ConfigVersion,
        actual: ConfigVersion,
    },
}

// === impl VirtualHost ===

/// Name-based virtual host: a host pattern and its routes, most specific first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualHost {
    pub host: HostPattern,
    /// The tenant that owns this host: requests get `X-Tenant-Id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// Set when the host is served over TLS. Plain HTTP to it redirects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HostTls>,
    /// How many labels a `*.suffix` host stands for.
    #[serde(default, skip_serializing_if = "WildcardDepth::is_one_label")]
    pub wildcard: WildcardDepth,
    /// What plain HTTP requests to the host get.
    #[serde(default, skip_serializing_if = "PlainHttp::is_default")]
    pub plain_http: PlainHttp,
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// What the HTTP listener does with a host's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PlainHttp {
    /// A 308 to https when the host has TLS; served otherwise.
    #[default]
    RedirectIfTls,
    /// Served over plain HTTP too (ingress-nginx `ssl-redirect: "false"`).
    Serve,
    /// Always a 308 to https (`force-ssl-redirect`: TLS ends in front).
    Redirect,
}

impl PlainHttp {
    pub fn is_default(&self) -> bool {
        *self == PlainHttp::RedirectIfTls
    }

    /// Whether plain HTTP to a host with (`tls`) or without TLS redirects.
    pub fn redirects(self, tls: bool) -> bool {
        match self {
            PlainHttp::RedirectIfTls => tls,
            PlainHttp::Serve => false,
            PlainHttp::Redirect => true,
        }
    }
}

/// What a wildcard host pattern matches below its suffix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WildcardDepth {
    /// Exactly one label (Ingress and Tenant semantics).
    #[default]
    OneLabel,
    /// Any number of labels (Gateway API listener and route hostnames);
    /// a nearer pattern still wins.
    AnyDepth,
}

impl WildcardDepth {
    pub fn is_one_label(&self) -> bool {
        *self == WildcardDepth::OneLabel
    }
}

/// TLS for a host. A host that asked for TLS stays a TLS host even when its
/// certificate is unusable: it is never downgraded to plain text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum HostTls {
    /// Serve this certificate for the host's SNI.
    Certificate(CertId),
    /// TLS was requested but no usable certificate exists (the reason says
    /// why); the gateway presents its default certificate or fails the handshake.
    Unavailable(Unavailable),
}

impl HostTls {
    pub fn certificate(&self) -> Option<&CertId> {
        match self {
            HostTls::Certificate(id) => Some(id),
            HostTls::Unavailable(_) => None,
        }
    }
}

/// Why a host that asked for TLS has no usable certificate, and the
/// message its object's condition says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "UnavailableRepr")]
pub struct Unavailable {
    pub reason: TlsUnavailable,
    pub message: String,
}

/// The kinds of [`Unavailable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TlsUnavailable {
    /// No Secret is named, or the named Secret does not exist.
    SecretNotFound,
    /// The Secret is no usable `kubernetes.io/tls` Secret (type, PEM, key).
    SecretInvalid,
    /// An ACME certificate is wanted and not issued yet: a handshake for
    /// the host may start the order (on-demand issuance).
    AcmePending,
    /// `tls.acme` names no accepted `AcmeIssuer` (or there is no default).
    IssuerNotFound,
    /// A wildcard domain with `tls.acme`: it needs DNS-01, not supported.
    Dns01Required,
}

/// What an `unavailable` reads from: the typed form, or the bare message
/// of configs written before the reason was kept (a gateway's persisted
/// last config), whose reason is unknown and read as `SecretInvalid`.
/// Unknown fields are refused in the typed form as everywhere in the config.
#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum UnavailableRepr {
    Typed {
        reason: TlsUnavailable,
        message: String,
    },
    Message(String),
}

impl From<UnavailableRepr> for Unavailable {
    fn from(repr: UnavailableRepr) -> Self {
        match repr {
            UnavailableRepr::Typed { reason, message } => Unavailable { reason, message },
            UnavailableRepr::Message(message) => Unavailable {
                reason: TlsUnavailable::SecretInvalid,
                message,
            },
        }
    }
}

// === impl Pool ===

/// A set of upstream endpoints, or a DNS name resolved by the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Pool {
    /// Ready endpoints with weights (sorted by address). May be empty: the
    /// gateway answers 503 rather than routing elsewhere.
    Endpoints(Vec<Endpoint>),
    /// A Service of type ExternalName: resolve `host` and connect to `port`.
    ExternalName { host: Hostname, port: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    pub address: SocketAddr,
    /// Relative weight for weighted round robin (>= 1).
    pub weight: u32,
}

// === impl Certificate ===

/// A PEM certificate chain and its private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Certificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Certificate {
    /// Content id: hash of chain and key, so identical secrets share one entry.
    pub fn id(&self) -> CertId {
        let mut h = Sha256::new();
        h.update(self.cert_pem.as_bytes());
        h.update([0u8]);
        h.update(self.key_pem.as_bytes());
        CertId(hex::encode(&h.finalize()[..8]))
    }
}

// Keys never reach logs, even through `{:?}`.
impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

// === impl Tenant ===

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tenant {
    pub domains: Vec<HostPattern>,
    /// This replica's share of the tenant's limit (the operator divides it
    /// by `--gateway-replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The tenant's whole limit when `rate_limit` is a share of it: what a
    /// cluster-wide store (`--rate-limit-store`) enforces for the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_rate_limit: Option<RateLimit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

// === newtypes ===

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self)
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self(s.to_string()))
            }
        }
    };
}

string_id!(
    /// Content hash of a config (32 hex digits; see [`GatewayConfig::content_version`]).
    ConfigVersion
);
string_id!(
    /// A pool: `namespace/service:port`, `tenant/name` for a tenant backend, or
    /// `namespace/Kind/name` for an unsupported resource backend (always empty).
    PoolId
);
string_id!(
    /// Content hash of a certificate and key.
    CertId
);
string_id!(
    /// A tenant's name (the `Tenant` object's name).
    TenantId
);
string_id!(
    /// The source of a route, used as a bounded metrics label.
    RouteName
);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_json_config_of_tens_of_thousands_of_hosts_loads() {
        // Past the YAML parser's node budget (250k nodes).
        let mut config = GatewayConfig::default();
        config
            .pools
            .insert(PoolId::new("p"), Pool::Endpoints(vec![]));
        for i in 0..30_000 {
            config.hosts.push(VirtualHost {
                host: HostPattern::parse(&format!("h{i}.example.com")).unwrap(),
                tenant: None,
                tls: None,
                wildcard: WildcardDepth::OneLabel,
                plain_http: PlainHttp::default(),
                routes: vec![Route::to_pool(
                    RouteName::new(format!("r{i}")),
                    PathMatch::prefix("/"),
                    PoolId::new("p"),
                )],
            });
        }
        config.hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let config = config.seal();
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(GatewayConfig::from_text(&text).unwrap(), config);
    }

    #[test]
    fn unavailable_tls_keeps_its_reason_and_reads_bare_messages() {
        let typed: HostTls = serde_json::from_str(
            r#"{"unavailable": {"reason": "secretNotFound", "message": "Secret a/b not found"}}"#,
        )
        .unwrap();
        let HostTls::Unavailable(u) = &typed else {
            panic!("{typed:?}")
        };
        assert_eq!(u.reason, TlsUnavailable::SecretNotFound);
        // A config persisted before the reason was kept still loads.
        let legacy: HostTls = serde_json::from_str(r#"{"unavailable": "old message"}"#).unwrap();
        let HostTls::Unavailable(u) = &legacy else {
            panic!("{legacy:?}")
        };
        assert_eq!(u.message, "old message");
        let back: HostTls = serde_json::from_str(&serde_json::to_string(&typed).unwrap()).unwrap();
        assert_eq!(back, typed);
        // A typo is no silent extra field.
        let typo = serde_json::from_str::<HostTls>(
            r#"{"unavailable": {"reason": "secretNotFound", "message": "m", "reasn": "x"}}"#,
        );
        assert!(typo.is_err(), "{typo:?}");
    }
}
