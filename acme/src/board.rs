//! The challenge board: answers to pending ACME challenges, published by
//! orders and read by the data plane without locks (an HTTP-01 request or
//! a TLS-ALPN-01 handshake reads one `ArcSwap`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

/// Pending challenges of the orders under way in this process.
pub struct Board {
    /// HTTP-01: token -> key authorization.
    http01: ArcSwap<HashMap<String, String>>,
    /// TLS-ALPN-01: domain -> the self-signed challenge certificate.
    tls_alpn01: ArcSwap<HashMap<String, AlpnChallenge>>,
    /// Bumped at every change, for processes that pass challenges on (the
    /// operator puts HTTP-01 tokens in the config it serves).
    changes: watch::Sender<u64>,
}

/// A TLS-ALPN-01 challenge certificate, built for this process's
/// listeners and as PEM for other processes' (a throwaway key).
#[derive(Clone)]
pub struct AlpnChallenge {
    pub key: Arc<CertifiedKey>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            http01: ArcSwap::default(),
            tls_alpn01: ArcSwap::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl Board {
    /// Every pending HTTP-01 challenge, sorted.
    pub fn http01_all(&self) -> BTreeMap<String, String> {
        self.http01
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Changes as they happen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    /// The key authorization for an HTTP-01 `token`, if one is pending.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.load().get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `domain` (normalized), if pending.
    pub fn tls_alpn01(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01.load().get(domain).map(|c| c.key.clone())
    }

    /// Every pending TLS-ALPN-01 challenge: domain -> (certificate, key) PEM.
    pub fn tls_alpn01_all(&self) -> BTreeMap<String, (String, String)> {
        self.tls_alpn01
            .load()
            .iter()
            .map(|(d, c)| (d.clone(), (c.cert_pem.clone(), c.key_pem.clone())))
            .collect()
    }

    pub(crate) fn publish_http01(&self, token: &str, key_authorization: &str) {
        self.edit(&self.http01, |m| {
            m.insert(token.to_string(), key_authorization.to_string());
        });
    }

    pub(crate) fn withdraw_http01(&self, token: &str) {
        self.edit(&self.http01, |m| {
            m.remove(token);
        });
    }

    pub(crate) fn publish_tls_alpn01(&self, domain: &str, cert: AlpnChallenge) {
        self.edit(&self.tls_alpn01, |m| {
            m.insert(domain.to_string(), cert.clone());
        });
    }

    pub(crate) fn withdraw_tls_alpn01(&self, domain: &str) {
        self.edit(&self.tls_alpn01, |m| {
            m.remove(domain);
        });
    }

    /// Publishes a changed copy of `map` (writes are rare: one per order
    /// step; reads never wait).
    fn edit<V: Clone>(
        &self,
        map: &ArcSwap<HashMap<String, V>>,
        change: impl Fn(&mut HashMap<String, V>),
    ) {
        map.rcu(|m| {
            let mut m = HashMap::clone(m);
            change(&mut m);
            m
        });
        self.changed();
    }
}
