//! TLS Secrets -> certificates. Checks the shape of a `kubernetes.io/tls`
//! Secret (a PEM chain and a PEM private key) so a broken Secret becomes a
//! status here rather than a failed handshake later. Whether the key matches
//! the chain and the certificate's dates are checked by the gateway, which
//! parses each distinct certificate once.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::model::Certificate;
use crate::translate::backend::Unresolved;
use crate::translate::status::Reason;

const TLS_TYPE: &str = "kubernetes.io/tls";

/// Secrets by `namespace/name`.
pub struct SecretIndex<'a> {
    secrets: BTreeMap<(&'a str, &'a str), &'a Secret>,
}

impl<'a> SecretIndex<'a> {
    pub fn new(secrets: &'a [Arc<Secret>]) -> Self {
        let mut by_name = BTreeMap::new();
        for s in secrets {
            if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                by_name.entry((ns.as_str(), name.as_str())).or_insert(&**s);
            }
        }
        SecretIndex { secrets: by_name }
    }

    /// The certificate in Secret `namespace/name`, or why there is none. The
    /// messages never include Secret data.
    pub fn certificate(&self, namespace: &str, name: &str) -> Result<Certificate, Unresolved> {
        let invalid = |why: &str| Unresolved {
            reason: Reason::SecretInvalid,
            message: format!("Secret {namespace}/{name}: {why}"),
        };
        let secret = self
            .secrets
            .get(&(namespace, name))
            .ok_or_else(|| Unresolved {
                reason: Reason::SecretNotFound,
                message: format!("Secret {namespace}/{name} not found"),
            })?;
        if let Some(t) = secret.type_.as_deref() {
            if t != TLS_TYPE {
                return Err(invalid(&format!("type is {t:?}, want {TLS_TYPE:?}")));
            }
        }
        let data = secret.data.as_ref();
        let field = |key: &str| data.and_then(|d| d.get(key)).map(|b| b.0.as_slice());
        let cert = field("tls.crt").ok_or_else(|| invalid("no tls.crt"))?;
        let key = field("tls.key").ok_or_else(|| invalid("no tls.key"))?;
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
