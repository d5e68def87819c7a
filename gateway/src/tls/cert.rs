//! Certificates: PEM parsed and checked once per content id, signing keys
//! built at first use, and the process-wide cache that keeps them across
//! config swaps (plus the default certificate).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use vestibule_config::model::{CertId, Certificate, ConfigDelta, GatewayConfig};

/// Why a certificate is not served. The `str` form is the bounded `reason`
/// label of `vestibule_tls_cert_errors`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CertProblem {
    /// The chain PEM holds no certificate, or the leaf isn't valid X.509.
    BadCertificate,
    /// The key PEM holds no private key.
    BadKey,
    /// A key type the crypto provider can't sign with.
    UnsupportedKey,
    /// The private key is not the leaf certificate's key.
    KeyMismatch,
    Expired,
    NotYetValid,
    /// The config asked for TLS but had no usable certificate for the host
    /// (`HostTls::Unavailable`, e.g. a missing or malformed Secret).
    Unavailable,
}

impl CertProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            CertProblem::BadCertificate => "bad_certificate",
            CertProblem::BadKey => "bad_key",
            CertProblem::UnsupportedKey => "unsupported_key",
            CertProblem::KeyMismatch => "key_mismatch",
            CertProblem::Expired => "expired",
            CertProblem::NotYetValid => "not_yet_valid",
            CertProblem::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for CertProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate read from its PEMs: the validity window (Unix seconds,
/// checked on every compile since time moves between swaps) and the signing
/// key, which is built only when first needed.
///
/// Building a key is the expensive part (ring derives and checks the public
/// key: ~30 µs for P-256, far more for RSA), so a cold start with 10k tenants
/// does not pay it up front: the first handshake for a host builds its key,
/// and [`warm_up`] builds the rest in the background right after a swap, so
/// a key that doesn't match its certificate still shows in the metrics soon.
#[derive(Debug)]
pub struct ParsedCert {
    pub not_before: i64,
    pub not_after: i64,
    /// The chain and the key until the signing key is built.
    pending: Mutex<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>>,
    key: OnceLock<Result<Arc<CertifiedKey>, CertProblem>>,
}

impl ParsedCert {
    /// Decodes a PEM chain (leaf first, intermediates after; all are
    /// served) and a PEM private key (PKCS#8, PKCS#1 or SEC1), and reads the
    /// leaf's validity. The key itself is checked by [`ParsedCert::key`].
    pub fn parse(cert_pem: &[u8], key_pem: &[u8]) -> Result<ParsedCert, CertProblem> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| CertProblem::BadCertificate)?;
        let leaf = chain.first().ok_or(CertProblem::BadCertificate)?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(leaf).map_err(|_| CertProblem::BadCertificate)?;
        let validity = x509.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        // The pki-types error names the PEM section, never its contents.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertProblem::BadKey)?;
        Ok(ParsedCert {
            not_before,
            not_after,
            pending: Mutex::new(Some((chain, key))),
            key: OnceLock::new(),
        })
    }

    /// The signing key for handshakes (RSA, ECDSA P-256/P-384, Ed25519),
    /// built on first use and checked against the leaf.
    pub fn key(&self) -> Result<&Arc<CertifiedKey>, CertProblem> {
        self.key
            .get_or_init(|| {
                let pending = self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                // `get_or_init` runs this once, and `pending` is only taken here.
                let (chain, key) = pending.ok_or(CertProblem::BadKey)?;
                build_key(chain, &key).map(Arc::new)
            })
            .as_ref()
            .map_err(|p| *p)
    }

    /// The key's problem, once it was built and failed.
    pub fn key_problem(&self) -> Option<CertProblem> {
        self.key.get().and_then(|k| k.as_ref().err().copied())
    }

    /// `Ok` when `now` (Unix seconds) is inside the validity window.
    pub fn check_dates(&self, now: i64) -> Result<(), CertProblem> {
        if now < self.not_before {
            Err(CertProblem::NotYetValid)
        } else if now > self.not_after {
            Err(CertProblem::Expired)
        } else {
            Ok(())
        }
    }
}

fn build_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<CertifiedKey, CertProblem> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|_| CertProblem::UnsupportedKey)?;
    let key = CertifiedKey::new(chain, signer);
    match key.keys_match() {
        // Unknown: the signer can't tell its public key; rustls itself
        // accepts that, and the handshake would fail visibly anyway.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(key),
        Err(_) => Err(CertProblem::KeyMismatch),
    }
}

// === impl CertCache ===

/// A cache entry: the parse result (errors too, so a broken Secret is not
/// parsed again on every swap) and a fingerprint of the PEM it came from.
struct Entry {
    fingerprint: u64,
    parsed: Result<Arc<ParsedCert>, CertProblem>,
}

/// Parsed certificates by `CertId`, shared by every compile of the process.
#[derive(Default)]
pub struct CertCache {
    entries: Mutex<HashMap<CertId, Entry>>,
    /// `--default-cert/--default-key`: set once at startup.
    default: OnceLock<Arc<CertifiedKey>>,
}

/// Content fingerprint with fixed seeds: a cheap guard (GB/s) against a
/// hand-written config that changes a PEM but keeps its `CertId`, so the
/// cache still never serves stale key material.
fn fingerprint(cert: &Certificate) -> u64 {
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    h.write(cert.cert_pem.as_bytes());
    h.write_u8(0);
    h.write(cert.key_pem.as_bytes());
    h.finish()
}

impl CertCache {
    /// The default certificate, if one was configured.
    #[inline]
    pub fn default_cert(&self) -> Option<&Arc<CertifiedKey>> {
        self.default.get()
    }

    /// Sets the default certificate (first call wins).
    pub fn set_default(&self, key: Arc<CertifiedKey>) {
        let _ = self.default.set(key);
    }

    /// Parses the certificates of `config` not cached yet (in parallel: a
    /// cold start with 10k RSA keys is dominated by key parsing), drops the
    /// entries `config` no longer uses, and returns the results by id.
    pub fn prepare(
        &self,
        config: &GatewayConfig,
    ) -> HashMap<CertId, Result<Arc<ParsedCert>, CertProblem>> {
        let prints: Vec<(&CertId, &Certificate, u64)> = config
            .certificates
            .iter()
            .map(|(id, c)| (id, c, fingerprint(c)))
            .collect();
        self.parse_missing(&prints);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|id, _| config.certificates.contains_key(id));
        prints
            .iter()
            .filter_map(|(id, _, _)| Some(((*id).clone(), entries.get(*id)?.parsed.clone())))
            .collect()
    }

    /// For a patch: parses the certificates `delta` adds, forgets those it
    /// removes, and returns the results for `wanted` (ids the config holds).
    pub fn prepare_delta<'a>(
        &self,
        delta: &ConfigDelta,
        wanted: impl IntoIterator<Item = &'a CertId>,
    ) -> HashMap<CertId, Result<Arc<ParsedCert>, CertProblem>> {
        let added: Vec<(&CertId, &Certificate, u64)> = delta
            .certificates
            .set
            .iter()
            .map(|(id, c)| (id, c, fingerprint(c)))
            .collect();
        self.parse_missing(&added);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for id in &delta.certificates.removed {
            entries.remove(id);
        }
        wanted
            .into_iter()
            .filter_map(|id| Some((id.clone(), entries.get(id)?.parsed.clone())))
            .collect()
    }

    /// Parses and caches those of `prints` not cached with that content.
    fn parse_missing(&self, prints: &[(&CertId, &Certificate, u64)]) {
        let missing: Vec<(&CertId, &Certificate, u64)> = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            prints
                .iter()
                .filter(|(id, _, fp)| entries.get(*id).is_none_or(|e| e.fingerprint != *fp))
                .copied()
                .collect()
        };
        let parsed = parse_all(&missing);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for ((id, _, fp), parsed) in missing.iter().zip(parsed) {
            if let Err(problem) = &parsed {
                tracing::warn!(cert = %id, %problem, "certificate rejected; its hosts get the default certificate or fail the handshake");
            }
            entries.insert(
                (*id).clone(),
                Entry {
                    fingerprint: *fp,
                    parsed,
                },
            );
        }
    }

    /// Entries held (for tests and `/config`).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse_all(items: &[(&CertId, &Certificate, u64)]) -> Vec<Result<Arc<ParsedCert>, CertProblem>> {
    let parse = |c: &Certificate| {
        ParsedCert::parse(c.cert_pem.as_bytes(), c.key_pem.as_bytes()).map(Arc::new)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Threads only pay off for a batch (cold start, bulk onboarding).
    if items.len() < 64 || threads == 1 {
        return items.iter().map(|(_, c, _)| parse(c)).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|(_, c, _)| parse(c)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(CertProblem::BadCertificate); chunk])
            })
            .collect()
    })
}

/// Reads `--default-cert/--default-key` and installs them. Errors name the
/// file and the reason, never the content.
/// Loads `--default-cert`/`--default-key`, checked against `now` (Unix
/// seconds).
pub fn load_default_cert(
    cache: &CertCache,
    cert: &Path,
    key: &Path,
    now: i64,
) -> Result<(), DefaultCertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| DefaultCertError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let unusable = |problem| DefaultCertError::Unusable {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        problem,
    };
    let parsed = ParsedCert::parse(&read(cert)?, &read(key)?).map_err(unusable)?;
    let signing = parsed.key().map_err(unusable)?.clone();
    parsed.check_dates(now).map_err(unusable)?;
    cache.set_default(signing);
    Ok(())
}

/// Why `--default-cert`/`--default-key` can't be served.
#[derive(Debug, thiserror::Error)]
pub enum DefaultCertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("default certificate {} / {} is unusable: {problem}", cert.display(), key.display())]
    Unusable {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        problem: CertProblem,
    },
}
