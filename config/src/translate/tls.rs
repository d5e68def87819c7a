//! TLS Secrets -> certificates. Checks the shape of a `kubernetes.io/tls`
//! Secret (a PEM chain and a PEM private key) so a broken Secret becomes a
//! status here rather than a failed handshake later. Whether the key matches
//! the chain and the certificate's dates are checked by the gateway, which
//! parses each distinct certificate once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::model::{CertId, Certificate};
use crate::translate::backend::Unresolved;
use crate::translate::status::Reason;

const TLS_TYPE: &str = "kubernetes.io/tls";

/// Secrets by `namespace/name`.
pub struct SecretIndex<'a> {
    secrets: BTreeMap<(&'a str, &'a str), &'a Arc<Secret>>,
}

/// The outcome of checking a TLS Secret, remembered between translations
/// for as long as the same (shared, unchanged) Secret object comes back, as
/// it does from the manifest cache: a reload that changed one file checks
/// one file's Secrets, not all of them. Holds no key material: a remembered
/// good Secret's PEM is copied out of the Secret again.
#[derive(Debug, Default)]
pub struct CertificateMemo {
    /// By the Secret's address; the `Arc` held here keeps the address from
    /// being reused by another object.
    checked: HashMap<usize, (Arc<Secret>, Result<CertId, Unresolved>)>,
}

impl CertificateMemo {
    pub fn len(&self) -> usize {
        self.checked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checked.is_empty()
    }
}

/// One field of a Secret's `data`.
/// The label of Opaque Secrets holding upstream roots (`ca.crt`), which
/// the operator watches beside `kubernetes.io/tls` Secrets.
pub const UPSTREAM_CA_LABEL: &str = "vestibule.dev/upstream-ca";

/// Checks a PEM bundle of upstream roots (`ca.crt` of a Secret or a
/// ConfigMap): at most 256 KiB, valid PEM, at least one certificate.
pub fn check_roots(pem: &[u8]) -> Result<(), &'static str> {
    if pem.len() > crate::model::MAX_ROOTS_PEM {
        return Err("ca.crt is larger than 256 KiB");
    }
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "ca.crt is not valid PEM")?;
    if certs.is_empty() {
        return Err("ca.crt holds no CERTIFICATE block");
    }
    Ok(())
}

fn secret_field<'s>(secret: &'s Secret, key: &str) -> Option<&'s [u8]> {
    secret.data.as_ref()?.get(key).map(|b| b.0.as_slice())
}

impl<'a> SecretIndex<'a> {
    pub fn new(secrets: &'a [Arc<Secret>]) -> Self {
        let mut by_name = BTreeMap::new();
        for s in secrets {
            if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                by_name.entry((ns.as_str(), name.as_str())).or_insert(s);
            }
        }
        SecretIndex { secrets: by_name }
    }

    /// One key of Secret `namespace/name`'s data.
    pub fn field(&self, namespace: &str, name: &str, key: &str) -> Option<&'a [u8]> {
        secret_field(self.secrets.get(&(namespace, name))?, key)
    }

    /// One annotation of Secret `namespace/name`.
    pub fn annotation(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        let secret = self.secrets.get(&(namespace, name))?;
        secret.metadata.annotations.as_ref()?.get(key).cloned()
    }

    /// Like [`SecretIndex::certificate`], with the certificate's id, reusing
    /// `previous` checks and recording this one in `next`.
    pub fn certificate_memo(
        &self,
        namespace: &str,
        name: &str,
        previous: &mut CertificateMemo,
        next: &mut CertificateMemo,
    ) -> Result<(Certificate, CertId), Unresolved> {
        let check = || self.certificate_with_id(namespace, name);
        let Some(secret) = self.secrets.get(&(namespace, name)) else {
            return check();
        };
        let addr = Arc::as_ptr(secret) as usize;
        let remembered = previous
            .checked
            .remove(&addr)
            .or_else(|| next.checked.remove(&addr))
            .filter(|(s, _)| Arc::ptr_eq(s, secret));
        let checked = match remembered {
            Some((_, Ok(id))) => {
                let field = |key| {
                    secret_field(secret, key).and_then(|b| String::from_utf8(b.to_vec()).ok())
                };
                match (field("tls.crt"), field("tls.key")) {
                    (Some(cert_pem), Some(key_pem)) => Ok((Certificate { cert_pem, key_pem }, id)),
                    // Cannot happen for a Secret that passed; check again.
                    _ => check(),
                }
            }
            Some((_, Err(u))) => Err(u),
            None => check(),
        };
        let verdict = checked
            .as_ref()
            .map(|(_, id)| id.clone())
            .map_err(Clone::clone);
        next.checked.insert(addr, (Arc::clone(secret), verdict));
        checked
    }

    /// [`SecretIndex::certificate`] with the certificate's id.
    pub fn certificate_with_id(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Certificate, CertId), Unresolved> {
        self.certificate(namespace, name).map(|c| {
            let id = c.id();
            (c, id)
        })
    }

    /// The PEM roots in Secret `namespace/name`'s `ca.crt` (upstream
    /// verification), or why there are none.
    pub fn roots(&self, namespace: &str, name: &str) -> Result<String, Unresolved> {
        let secret = self.lookup(
            namespace,
            name,
            &format!(" (of type {TLS_TYPE:?} or labelled {UPSTREAM_CA_LABEL}=true)"),
        )?;
        let invalid = |why: &str| Unresolved {
            reason: Reason::SecretInvalid,
            message: format!("Secret {namespace}/{name}: {why}"),
        };
        let pem = secret_field(secret, "ca.crt").ok_or_else(|| invalid("no ca.crt"))?;
        check_roots(pem).map_err(invalid)?;
        String::from_utf8(pem.to_vec()).map_err(|_| invalid("ca.crt is not UTF-8"))
    }

    /// Secret `namespace/name`, or `SecretNotFound` (with `hint`).
    fn lookup(&self, namespace: &str, name: &str, hint: &str) -> Result<&'a Secret, Unresolved> {
        self.secrets
            .get(&(namespace, name))
            .map(|s| &***s)
            .ok_or_else(|| Unresolved {
                reason: Reason::SecretNotFound,
                message: format!("Secret {namespace}/{name} not found{hint}"),
            })
    }

    /// The certificate in Secret `namespace/name`, or why there is none. The
    /// messages never include Secret data.
    pub fn certificate(&self, namespace: &str, name: &str) -> Result<Certificate, Unresolved> {
        let invalid = |why: &str| Unresolved {
            reason: Reason::SecretInvalid,
            message: format!("Secret {namespace}/{name}: {why}"),
        };
        let secret = self.lookup(namespace, name, "")?;
        if let Some(t) = secret.type_.as_deref() {
            if t != TLS_TYPE {
                return Err(invalid(&format!("type is {t:?}, want {TLS_TYPE:?}")));
            }
        }
        let cert = secret_field(secret, "tls.crt").ok_or_else(|| invalid("no tls.crt"))?;
        let key = secret_field(secret, "tls.key").ok_or_else(|| invalid("no tls.key"))?;
        let cert_count = CertificateDer::pem_slice_iter(cert)
            .map(|c| c.map_err(|_| invalid("tls.crt is not valid PEM")))
            .collect::<Result<Vec<_>, _>>()?
            .len();
        if cert_count == 0 {
            return Err(invalid("tls.crt holds no CERTIFICATE block"));
        }
        PrivateKeyDer::from_pem_slice(key)
            .map_err(|_| invalid("tls.key holds no PEM private key"))?;
        let text = |b: &[u8], what: &str| {
            String::from_utf8(b.to_vec()).map_err(|_| invalid(&format!("{what} is not UTF-8")))
        };
        Ok(Certificate {
            cert_pem: text(cert, "tls.crt")?,
            key_pem: text(key, "tls.key")?,
        })
    }
}

// === impl Translator: this phase ===

use super::*;

impl<'a> Translator<'a> {
    /// The certificate in a Secret, kept for the output, or why there is none.
    pub(super) fn checked_certificate(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<CertId, Unresolved> {
        let (cert, id) = match &mut self.memo {
            Some((previous, next)) => self
                .secrets
                .certificate_memo(namespace, name, previous, next),
            None => self.secrets.certificate_with_id(namespace, name),
        }?;
        self.certificates.entry(id.clone()).or_insert(cert);
        Ok(id)
    }

    /// The TLS setting for a Secret: its certificate, or `Unavailable` (the
    /// host stays a TLS host) with a condition saying why.
    pub(super) fn certificate(
        &mut self,
        namespace: &str,
        name: &str,
        conditions: &mut Vec<Condition>,
    ) -> HostTls {
        match self.checked_certificate(namespace, name) {
            Ok(id) => HostTls::Certificate(id),
            Err(u) => {
                let c = Condition::new(
                    ConditionType::ResolvedRefs,
                    false,
                    u.reason,
                    u.message.clone(),
                );
                if !conditions.contains(&c) {
                    conditions.push(c);
                }
                HostTls::Unavailable(Unavailable {
                    reason: match u.reason {
                        Reason::SecretNotFound => TlsUnavailable::SecretNotFound,
                        _ => TlsUnavailable::SecretInvalid,
                    },
                    message: u.message,
                })
            }
        }
    }
}
