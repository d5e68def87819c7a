//! The `Tenant` custom resource (vestibule.dev/v1alpha1, cluster-scoped): one
//! object onboards a customer's domains, certificate, backend and rate limit.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::RateLimit;

/// Desired state of a tenant.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "vestibule.dev",
    version = "v1alpha1",
    kind = "Tenant",
    derive = "PartialEq",
    plural = "tenants",
    shortname = "tn",
    status = "TenantStatus",
    printcolumn = r#"{"name":"Domains","type":"string","jsonPath":".spec.domains"}"#,
    printcolumn = r#"{"name":"Routes","type":"integer","jsonPath":".status.routes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
// Unknown fields are refused (a `rateLimt:` typo must not load as "no rate
// limit"). On the API server the CRD's structural schema (no field preserves
// unknowns) does the same: kubectl's strict field validation rejects them,
// and anything else has them pruned.
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TenantSpec {
    /// Hostnames this tenant owns: exact (`acme.example.com`) or one-label
    /// wildcards (`*.acme.example.com`).
    pub domains: Vec<String>,
    /// Namespaces whose Ingresses may route these domains. Ingresses in other
    /// namespaces that name them are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Serve every domain of the tenant from these Services, no Ingress needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<TenantBackend>,
    /// Certificates for the tenant's domains: `{secretRef: {namespace, name}}`
    /// or `{acme: {issuer: NAME}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TenantTls>,
    /// Requests per second and burst, per tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TenantBackend {
    pub namespace: String,
    pub services: Vec<WeightedService>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightedService {
    pub name: String,
    /// Service port, by number or by name.
    pub port: IntOrString,
    /// Share of the tenant's traffic, relative to the other services (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Where the tenant's certificates come from: one of the two.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum TenantTls {
    /// A `kubernetes.io/tls` Secret covering every domain.
    SecretRef(SecretRef),
    /// A certificate per (non-wildcard) domain from an ACME CA.
    Acme(TenantAcme),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TenantAcme {
    /// The `AcmeIssuer`; the default issuer when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

/// Observed state, written by the operator's leader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// `Accepted`, `DomainsConflict`, `CertificateReady`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Ingress rules attached to the tenant's domains.
    #[serde(default)]
    pub routes: u32,
    /// With `tls.acme`: each domain's certificate (Pending, Issued with its
    /// notAfter, Failed with the CA's problem, Unsupported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<crate::translate::status::DomainCertificate>,
}
