//! The SNI table of one runtime: each host pattern's certificate, chosen
//! with the route table's precedence ([`HostMap`]), so the most specific
//! vhost decides and an exact host without a usable certificate never
//! borrows a wildcard certificate that may belong to another tenant.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use vestibule_config::model::{
    CertId, GatewayConfig, HostTls, TlsUnavailable, Unavailable, VirtualHost,
};
use vestibule_config::HostPattern;

use super::cert::{CertProblem, ParsedCert};
use crate::metrics::TlsMetrics;
use crate::route::HostMap;

/// What the TLS metrics of a runtime report.
#[derive(Debug, Default)]
pub struct CertReport {
    /// Hosts whose certificate is not served, by (tenant, reason).
    pub errors: BTreeMap<(String, CertProblem), i64>,
    /// The earliest `notAfter` (Unix seconds) among each tenant's
    /// certificates, expired ones included; `""` for hosts without tenant.
    pub expiry: BTreeMap<String, i64>,
}

/// The SNI table of one runtime: host -> certificate to present.
///
/// Each host keeps its own state (tenant and certificate or problem), so a
/// patch replaces a host's entry alone; the reports are summed over the
/// table when asked (a scrape), not kept up to date per change.
#[derive(Clone, Debug, Default)]
pub struct CertStore {
    /// Each host pattern's certificate, with the route table's precedence.
    hosts: HostMap<HostCert>,
}

/// One host's certificate state.
#[derive(Clone, Debug)]
struct HostCert {
    tenant: Arc<str>,
    state: CertState,
}

#[derive(Clone, Debug)]
enum CertState {
    /// A plain host: the default certificate, if any.
    Plain,
    Serving(Arc<ParsedCert>),
    /// Not served (the default is): why, and the certificate when it parsed
    /// (an expired one still reports its expiry).
    Refused(CertProblem, Option<Arc<ParsedCert>>),
    /// An exact host whose ACME certificate is not issued yet: a handshake
    /// naming it may start its order.
    AcmePending,
}

impl HostCert {
    fn of(
        vhost: &VirtualHost,
        parsed: &HashMap<CertId, Result<Arc<ParsedCert>, CertProblem>>,
        now: i64,
    ) -> Self {
        let tenant: Arc<str> = vhost.tenant.as_ref().map_or("", |t| t.as_str()).into();
        let state = match &vhost.tls {
            None => CertState::Plain,
            Some(HostTls::Unavailable(Unavailable {
                reason: TlsUnavailable::AcmePending,
                ..
            })) if matches!(vhost.host, HostPattern::Exact(_)) => CertState::AcmePending,
            Some(HostTls::Unavailable(_)) => CertState::Refused(CertProblem::Unavailable, None),
            // validate() guarantees the reference; be safe anyway.
            Some(HostTls::Certificate(id)) => match parsed.get(id) {
                None => CertState::Refused(CertProblem::Unavailable, None),
                Some(Err(p)) => CertState::Refused(*p, None),
                Some(Ok(c)) => match c.check_dates(now) {
                    Ok(()) => CertState::Serving(c.clone()),
                    Err(p) => CertState::Refused(p, Some(c.clone())),
                },
            },
        };
        HostCert { tenant, state }
    }
}

impl CertStore {
    /// Builds the table of `config` from parsed certificates, checking
    /// validity dates against `now` (Unix seconds).
    pub fn build(
        config: &GatewayConfig,
        parsed: &HashMap<CertId, Result<Arc<ParsedCert>, CertProblem>>,
        now: i64,
    ) -> Self {
        let mut store = CertStore::default();
        for vhost in &config.hosts {
            // First vhost of a pattern wins, as in the route table; `*`
            // never has a certificate of its own (the default serves it).
            if vhost.host != HostPattern::Any {
                let cert = HostCert::of(vhost, parsed, now);
                store.hosts.insert(&vhost.host, vhost.wildcard, cert);
            }
        }
        store
    }

    /// A copy with the hosts `removed` gone and `set` (re)built.
    pub fn patched<'a>(
        &self,
        removed: &[HostPattern],
        set: impl IntoIterator<Item = &'a VirtualHost>,
        parsed: &HashMap<CertId, Result<Arc<ParsedCert>, CertProblem>>,
        now: i64,
    ) -> Self {
        let mut hosts = self.hosts.clone();
        for p in removed {
            hosts.remove(p);
        }
        for vhost in set {
            if vhost.host != HostPattern::Any {
                hosts.set(
                    &vhost.host,
                    vhost.wildcard,
                    HostCert::of(vhost, parsed, now),
                );
            }
        }
        CertStore { hosts }
    }

    /// The certificate for a normalized SNI host name (`None`: no SNI):
    /// the most specific vhost's ([`HostMap`] precedence),
    /// else `default`.
    #[inline]
    pub fn select<'a>(
        &'a self,
        name: Option<&str>,
        default: Option<&'a Arc<CertifiedKey>>,
    ) -> Option<&'a Arc<CertifiedKey>> {
        let Some(name) = name else { return default };
        match self.hosts.get(name).map(|h| &h.state) {
            // A key that fails to build is served like no certificate.
            Some(CertState::Serving(cert)) => cert.key().ok().or(default),
            _ => default,
        }
    }

    /// Whether `name` (normalized) is a host whose ACME certificate is
    /// wanted and not issued yet.
    pub fn is_acme_pending(&self, name: &str) -> bool {
        // Only exact hosts are pending, so a match is the name's own entry.
        self.hosts
            .get(name)
            .is_some_and(|h| matches!(h.state, CertState::AcmePending))
    }

    /// Hosts not served their certificate, by (tenant, reason), and each
    /// tenant's earliest `notAfter`; keys that failed when built count too.
    pub fn report(&self) -> CertReport {
        let mut report = CertReport::default();
        for h in self.hosts.values() {
            let mut error = |p: CertProblem| {
                *report.errors.entry((h.tenant.to_string(), p)).or_insert(0) += 1;
            };
            let cert = match &h.state {
                CertState::Plain => None,
                CertState::AcmePending => {
                    error(CertProblem::Unavailable);
                    None
                }
                CertState::Refused(p, cert) => {
                    error(*p);
                    cert.as_ref()
                }
                CertState::Serving(c) => {
                    if let Some(p) = c.key_problem() {
                        error(p);
                    }
                    Some(c)
                }
            };
            if let Some(c) = cert {
                let e = report
                    .expiry
                    .entry(h.tenant.to_string())
                    .or_insert(i64::MAX);
                *e = (*e).min(c.not_after);
            }
        }
        report
    }

    /// Builds every signing key this store may serve that no handshake
    /// built yet, a batch at a time, so the listeners keep the CPU. Run off
    /// the request path, after a swap. Stops early as soon as `go_on` (asked
    /// between batches) says so: a newer runtime makes these keys moot.
    pub fn warm_up(&self, mut go_on: impl FnMut() -> bool) {
        let mut built = 0usize;
        for h in self.hosts.values() {
            let CertState::Serving(cert) = &h.state else {
                continue;
            };
            if cert.key_problem().is_some() || cert.key().is_err() {
                continue;
            }
            built += 1;
            if built.is_multiple_of(64) {
                std::thread::sleep(std::time::Duration::from_millis(1));
                if !go_on() {
                    return;
                }
            }
        }
    }

    /// Publishes this (live) store's certificate state; days left are
    /// computed at scrape time so the gauge falls without config changes.
    pub fn publish(&self, metrics: &TlsMetrics, now: i64) {
        let report = self.report();
        metrics.cert_errors.reset();
        for ((tenant, problem), n) in &report.errors {
            metrics
                .cert_errors
                .with_label_values(&[tenant.as_str(), problem.as_str()])
                .set(*n);
        }
        metrics.cert_expiry_days.reset();
        for (tenant, not_after) in &report.expiry {
            let days = (*not_after - now) as f64 / 86_400.0;
            metrics
                .cert_expiry_days
                .with_label_values(&[tenant.as_str()])
                .set((days * 100.0).floor() / 100.0);
        }
    }

    /// Distinct certificates this runtime serves.
    pub fn len(&self) -> usize {
        let served: HashSet<*const ParsedCert> = self
            .hosts
            .values()
            .filter_map(|h| match &h.state {
                CertState::Serving(c) => Some(Arc::as_ptr(c)),
                _ => None,
            })
            .collect();
        served.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether two selections present the same certificate. Every host using a
/// `CertId` shares one `Arc`, so identity is a pointer comparison.
#[inline]
pub fn same_cert(a: Option<&Arc<CertifiedKey>>, b: Option<&Arc<CertifiedKey>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tls::cert::CertCache;
    use vestibule_config::model::Certificate;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
    use vestibule_config::model::TenantId;

    fn cert(names: &[&str]) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        Certificate {
            cert_pem: c.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn host(pattern: &str, tenant: Option<&str>, tls: Option<HostTls>) -> VirtualHost {
        VirtualHost {
            host: HostPattern::parse(pattern).unwrap(),
            tenant: tenant.map(TenantId::new),
            tls,
            wildcard: Default::default(),
            plain_http: Default::default(),
            routes: vec![],
        }
    }

    /// Reads the PEMs and builds the key at once.
    fn parse_now(cert_pem: &[u8], key_pem: &[u8]) -> Result<ParsedCert, CertProblem> {
        let parsed = ParsedCert::parse(cert_pem, key_pem)?;
        parsed.key()?;
        Ok(parsed)
    }

    #[test]
    fn key_types_and_mismatch() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let c = rcgen::CertificateParams::new(vec!["a.test".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let parsed = parse_now(c.pem().as_bytes(), key.serialize_pem().as_bytes());
            assert!(parsed.is_ok(), "{alg:?}");
        }
        let a = cert(&["a.test"]);
        let b = cert(&["b.test"]);
        // The key is checked when first built, not when the PEMs are read.
        let lazy = ParsedCert::parse(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap();
        assert_eq!(lazy.key_problem(), None);
        assert_eq!(lazy.key().unwrap_err(), CertProblem::KeyMismatch);
        assert_eq!(lazy.key_problem(), Some(CertProblem::KeyMismatch));
        let mismatch = parse_now(a.cert_pem.as_bytes(), b.key_pem.as_bytes());
        assert_eq!(mismatch.unwrap_err(), CertProblem::KeyMismatch);
        let garbage = ParsedCert::parse(b"nope", a.key_pem.as_bytes());
        assert_eq!(garbage.unwrap_err(), CertProblem::BadCertificate);
        let nokey = ParsedCert::parse(a.cert_pem.as_bytes(), b"nope");
        assert_eq!(nokey.unwrap_err(), CertProblem::BadKey);
    }

    #[test]
    fn selection_precedence_and_cache_reuse() {
        let a = cert(&["a.test"]);
        let w = cert(&["*.w.test"]);
        let bad = Certificate {
            cert_pem: "garbage".into(),
            key_pem: a.key_pem.clone(),
        };
        let mut config = GatewayConfig::default();
        for c in [&a, &w, &bad] {
            config.certificates.insert(c.id(), c.clone());
        }
        config.hosts = vec![
            host("a.test", Some("t"), Some(HostTls::Certificate(a.id()))),
            host("*.w.test", None, Some(HostTls::Certificate(w.id()))),
            // An exact host under the wildcard with a broken cert never
            // borrows the wildcard's certificate.
            host("x.w.test", Some("t"), Some(HostTls::Certificate(bad.id()))),
            host("plain.w.test", None, None),
        ];
        let cache = CertCache::default();
        let parsed = cache.prepare(&config);
        let store = CertStore::build(&config, &parsed, now());
        let ka = store.select(Some("a.test"), None).unwrap();
        let kw = store.select(Some("y.w.test"), None).unwrap();
        assert!(!same_cert(Some(ka), Some(kw)));
        assert!(store.select(Some("x.w.test"), None).is_none());
        assert!(store.select(Some("plain.w.test"), None).is_none());
        assert!(store.select(Some("a.b.w.test"), None).is_none());
        assert!(store.select(None, Some(ka)).is_some());
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.report().errors[&("t".to_string(), CertProblem::BadCertificate)],
            1
        );

        // A second compile reuses the parsed key (same Arc); dropping a
        // certificate from the config drops it from the cache.
        let parsed2 = cache.prepare(&config);
        let store2 = CertStore::build(&config, &parsed2, now());
        assert!(same_cert(store2.select(Some("a.test"), None), Some(ka)));
        config.certificates.remove(&bad.id());
        config.hosts.truncate(2);
        cache.prepare(&config);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn expired_is_rejected_for_its_host_only() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["old.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let old = Certificate {
            cert_pem: params.self_signed(&key).unwrap().pem(),
            key_pem: key.serialize_pem(),
        };
        let good = cert(&["good.test"]);
        let mut config = GatewayConfig::default();
        config.certificates.insert(old.id(), old.clone());
        config.certificates.insert(good.id(), good.clone());
        config.hosts = vec![
            host(
                "old.test",
                Some("old"),
                Some(HostTls::Certificate(old.id())),
            ),
            host(
                "good.test",
                Some("good"),
                Some(HostTls::Certificate(good.id())),
            ),
        ];
        let cache = CertCache::default();
        let now = now();
        let store = CertStore::build(&config, &cache.prepare(&config), now);
        assert!(store.select(Some("old.test"), None).is_none());
        assert!(store.select(Some("good.test"), None).is_some());
        assert_eq!(
            store.report().errors[&("old".to_string(), CertProblem::Expired)],
            1
        );
        assert!(store.report().expiry["old"] < now);
        assert!(store.report().expiry["good"] > now);
    }
}
