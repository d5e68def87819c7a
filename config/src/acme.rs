//! What the translator asks of an ACME issuer (the [`AcmePlan`]: which
//! domains want a certificate from which CA) and where issued certificates
//! live: a `kubernetes.io/tls` Secret per domain, named and annotated here,
//! whether it sits in the cluster (operator mode) or is rebuilt from files
//! under `--state-dir` (`--manifests` mode).
//!
//! The plan is never part of the `GatewayConfig`: gateways in operator mode
//! do not talk to the CA and must not hold the EAB key.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::hostname::Hostname;
use crate::issuer::{ChallengeKind, IssueWhen};
use crate::model::{CertId, TenantId};

/// Annotation: when the certificate stops being valid (RFC 3339).
pub const NOT_AFTER: &str = "vestibule.dev/acme-not-after";
/// Annotation: when the issuer plans to renew it (RFC 3339).
pub const RENEW_AT: &str = "vestibule.dev/acme-renew-at";
/// Annotation: the ACME order that produced it.
pub const ORDER: &str = "vestibule.dev/acme-order";
/// Annotation: the certificate's ACME Renewal Information id (RFC 9773
/// §4.1, `base64url(AKI).base64url(serial)`).
pub const ARI_ID: &str = "vestibule.dev/acme-ari-id";
/// Annotation: the domain (label values can't hold a 253-byte name).
pub const DOMAIN: &str = "vestibule.dev/acme-domain";
/// Label: the tenant the certificate was issued for.
pub const TENANT_LABEL: &str = "vestibule.dev/tenant";
/// Label on every issued-certificate Secret.
pub const ISSUED_LABEL: &str = "vestibule.dev/acme";

/// The Secret holding `domain`'s issued certificate: `acme.<domain>`, or
/// a hash of the domain when that would exceed a Secret name's 253 bytes.
pub fn secret_name(domain: &Hostname) -> String {
    let name = format!("acme.{domain}");
    if name.len() <= 253 {
        return name;
    }
    let digest = Sha256::digest(domain.as_str().as_bytes());
    format!("acme.{}", hex::encode(&digest[..16]))
}

/// What the issuer should do, as the translator found it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AcmePlan {
    /// Accepted issuers by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub issuers: BTreeMap<String, IssuerPlan>,
    /// Every non-wildcard domain of a Tenant with `tls.acme` whose issuer
    /// exists: the only names an order may ever be placed for.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub domains: BTreeMap<Hostname, PlannedDomain>,
}

impl AcmePlan {
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty() && self.domains.is_empty()
    }
}

/// An accepted `AcmeIssuer`, its Secret references resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuerPlan {
    pub directory_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eab: Option<Eab>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    pub challenge: ChallengeKind,
    pub issue: IssueWhen,
}

/// External Account Binding: the key id and the decoded HMAC key, which is
/// never serialized or printed.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Eab {
    pub key_id: String,
    #[serde(skip)]
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab")
            .field("key_id", &self.key_id)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// One domain wanting an ACME certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedDomain {
    pub tenant: TenantId,
    pub issuer: String,
    /// The certificate it has now, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertId>,
    /// When that certificate expires (RFC 3339, from its Secret's annotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When that certificate is due for renewal (RFC 3339, from its
    /// Secret's annotation; unknown for a Secret not written by an issuer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<String>,
    /// Its ACME Renewal Information id, to ask the CA when to renew.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ari_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_readable_and_bounded() {
        let h = Hostname::parse("Shop.Customer.com").unwrap();
        assert_eq!(secret_name(&h), "acme.shop.customer.com");
        let long = format!("{}.com", vec!["a".repeat(63); 3].join("."));
        let long = Hostname::parse(&format!("{}.{long}", "b".repeat(55))).unwrap();
        let name = secret_name(&long);
        assert!(name.len() <= 253 && name.starts_with("acme."), "{name}");
        assert_ne!(name, secret_name(&h));
    }
}
