//! The `AcmeIssuer` custom resource (vestibule.dev/v1alpha1, cluster-scoped):
//! an ACME CA that Tenants with `tls.acme` get their certificates from.
//!
//! A CRD rather than operator flags: platforms run more than one CA (Let's
//! Encrypt staging while onboarding, production after; a private CA with
//! External Account Binding), the same object works in `--manifests` mode,
//! and the issuer's account state has a status to be reported on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An ACME CA and how to use it.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "vestibule.dev",
    version = "v1alpha1",
    kind = "AcmeIssuer",
    derive = "PartialEq",
    plural = "acmeissuers",
    status = "AcmeIssuerStatus",
    printcolumn = r#"{"name":"Directory","type":"string","jsonPath":".spec.directoryUrl"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.default"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AcmeIssuerSpec {
    /// The CA's ACME directory, e.g.
    /// `https://acme-staging-v02.api.letsencrypt.org/directory`. Must be https.
    pub directory_url: String,
    /// Contact address registered with the account (`mailto:` is added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// External Account Binding, for CAs that require one (ZeroSSL, Google
    /// Trust Services, most private CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account_binding: Option<ExternalAccountBinding>,
    /// PEM roots that the CA's ACME endpoint is verified against, for private
    /// CAs; the system roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// The challenge type to answer.
    #[serde(default)]
    pub challenge: ChallengeKind,
    /// When a tenant domain's first certificate is ordered.
    #[serde(default)]
    pub issue: IssueWhen,
    /// Tenants whose `tls.acme` names no issuer use the default one (the
    /// oldest, if several say so).
    #[serde(default)]
    pub default: bool,
}

/// The EAB key id and the Secret key holding its base64url HMAC key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalAccountBinding {
    pub key_id: String,
    pub key_secret_ref: SecretKeyRef,
}

/// One key of a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

/// How domain control is proven. DNS-01 (and with it wildcard domains) is
/// not supported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ChallengeKind {
    /// A token served at `/.well-known/acme-challenge/` on port 80.
    #[default]
    #[serde(rename = "HTTP-01")]
    Http01,
    /// A self-signed certificate presented for ALPN `acme-tls/1` on port 443
    /// (RFC 8737): works when port 80 is closed.
    #[serde(rename = "TLS-ALPN-01")]
    TlsAlpn01,
}

/// When a domain's first certificate is ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum IssueWhen {
    /// At the first TLS handshake that names the domain (Caddy's on-demand
    /// TLS): a customer may point their DNS days after onboarding, and no
    /// order fails for want of it.
    #[default]
    OnDemand,
    /// As soon as the Tenant is accepted (and at the first handshake too).
    Onboarding,
}

/// Observed state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeIssuerStatus {
    /// `Accepted` (the spec is usable), `Ready` (the account is registered).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
