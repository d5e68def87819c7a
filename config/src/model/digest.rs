//! The config version: a sum of one digest per entry (host, pool, certificate,
//! tenant, ...), so a delta moves it by what it changes without rehashing
//! the rest, and a gateway can check its patched state against the
//! operator's in time proportional to the change.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ConfigVersion, GatewayConfig};

/// What an entry is, so equal bytes under different kinds differ.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Host = 1,
    DefaultBackend,
    Pool,
    UpstreamProtocol,
    Certificate,
    Tenant,
    AcmeHttp01,
    AcmeTlsAlpn01,
}

/// The running sum behind a [`ConfigVersion`] (32 hex digits: the sum is
/// read back from the version, so a patched config needs no hidden field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sum(u128);

impl Sum {
    /// The sum a version states; `None` for a version not made by [`Sum`]
    /// (a hand-written file's, or an older operator's 16 digits).
    pub(crate) fn of_version(v: &ConfigVersion) -> Option<Sum> {
        (v.as_str().len() == 32)
            .then(|| u128::from_str_radix(v.as_str(), 16).ok())
            .flatten()
            .map(Sum)
    }

    pub(crate) fn version(self) -> ConfigVersion {
        ConfigVersion::new(format!("{:032x}", self.0))
    }

    pub(crate) fn add(&mut self, kind: Kind, key: &impl Serialize, value: &impl Serialize) {
        self.0 = self.0.wrapping_add(entry(kind, key, value));
    }

    pub(crate) fn remove(&mut self, kind: Kind, key: &impl Serialize, value: &impl Serialize) {
        self.0 = self.0.wrapping_sub(entry(kind, key, value));
    }
}

/// One entry's digest: kind, key and value as JSON, streamed into the hash
/// (no buffer the size of a certificate chain).
fn entry(kind: Kind, key: &impl Serialize, value: &impl Serialize) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update([kind as u8]);
    {
        let mut out = std::io::BufWriter::with_capacity(4096, &mut hasher);
        // Plain data with string keys cannot fail to serialize.
        let _ = serde_json::to_writer(&mut out, key);
        let _ = std::io::Write::write_all(&mut out, &[0]);
        let _ = serde_json::to_writer(&mut out, value);
        let _ = std::io::Write::flush(&mut out);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// The sum over every entry of `config` (its `version` field aside).
pub(crate) fn of_config(config: &GatewayConfig) -> Sum {
    let mut sum = Sum::default();
    for vhost in &config.hosts {
        sum.add(Kind::Host, &vhost.host, vhost);
    }
    if let Some(b) = &config.default_backend {
        sum.add(Kind::DefaultBackend, &(), b);
    }
    for (k, v) in &config.pools {
        sum.add(Kind::Pool, k, v);
    }
    for (k, v) in &config.upstream_protocols {
        sum.add(Kind::UpstreamProtocol, k, v);
    }
    for (k, v) in &config.certificates {
        sum.add(Kind::Certificate, k, v);
    }
    for (k, v) in &config.tenants {
        sum.add(Kind::Tenant, k, v);
    }
    for (k, v) in &config.acme_http01 {
        sum.add(Kind::AcmeHttp01, k, v);
    }
    for (k, v) in &config.acme_tls_alpn01 {
        sum.add(Kind::AcmeTlsAlpn01, k, v);
    }
    sum
}
