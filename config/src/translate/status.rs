//! Statuses the translator reports for the objects it read: what it accepted,
//! what it rejected and why. The operator turns these into Tenant conditions
//! and Kubernetes Events; `translate` prints them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The object a status is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub kind: ObjectKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{:?} {ns}/{}", self.kind, self.name),
            None => write!(f, "{:?} {}", self.kind, self.name),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    Ingress,
    Tenant,
    AcmeIssuer,
    GatewayClass,
    Gateway,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub object: ObjectRef,
    pub conditions: Vec<Condition>,
    /// For Tenants: Ingress rules attached to the tenant's domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<u32>,
    /// For Tenants with `tls.acme`: each domain's certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<DomainCertificate>,
    /// For Gateways: each listener's conditions and attached routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerStatus>,
    /// For HTTPRoutes: the conditions per parent Gateway of ours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentStatus>,
}

/// A Gateway listener's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: u32,
    pub conditions: Vec<Condition>,
}

/// An HTTPRoute's status for one parentRef.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    pub conditions: Vec<Condition>,
}

/// Where one tenant domain's ACME certificate stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainCertificate {
    pub domain: String,
    pub state: CertificateState,
    /// The certificate's notAfter (RFC 3339) when issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Why it is not issued: the CA's problem document, or what is missing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum CertificateState {
    /// Not issued yet (ordered on demand or under way).
    Pending,
    Issued,
    /// The last order failed; retried with backoff.
    Failed,
    /// Never attempted (a wildcard needs DNS-01; no issuer).
    Unsupported,
}

impl ObjectStatus {
    /// A status with only these conditions.
    pub fn new(object: ObjectRef, conditions: Vec<Condition>) -> Self {
        ObjectStatus {
            object,
            conditions,
            routes: None,
            certificates: Vec::new(),
            listeners: Vec::new(),
            parents: Vec::new(),
        }
    }

    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Conditions that describe a rejected part of the object (for Events).
    pub fn problems(&self) -> impl Iterator<Item = &Condition> {
        self.conditions.iter().filter(|c| c.is_problem())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

impl Condition {
    pub fn new(type_: ConditionType, status: bool, reason: Reason, message: String) -> Self {
        Condition {
            type_,
            status,
            reason,
            message,
        }
    }

    /// A problem is a condition in its bad state: `Accepted`/`ResolvedRefs`/
    /// `CertificateReady` false, or `Conflicted`/`DomainsConflict` true.
    pub fn is_problem(&self) -> bool {
        match self.type_ {
            ConditionType::Accepted
            | ConditionType::ResolvedRefs
            | ConditionType::Programmed
            | ConditionType::CertificateReady => !self.status,
            ConditionType::Conflicted | ConditionType::DomainsConflict => self.status,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConditionType {
    /// The object (or a part of it, with status false) is served.
    Accepted,
    /// Every Service and Secret the object names exists and is usable.
    ResolvedRefs,
    /// Another, older object already serves the same host and path.
    Conflicted,
    /// Tenant: an older Tenant already owns some of these domains.
    DomainsConflict,
    /// Tenant: the certificate Secret is present and valid.
    CertificateReady,
    /// Gateway API: the object (or listener) is served.
    Programmed,
}

/// Why a condition has its status. Stable names: they appear in Events and
/// Tenant conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    Accepted,
    /// Nothing in the object could be served.
    NoValidRules,
    InvalidHost,
    InvalidPath,
    /// The host belongs to a Tenant that does not list this namespace.
    HostNotAllowed,
    /// `--require-tenant` is on and no Tenant owns the host.
    TenantRequired,
    RouteConflict,
    DefaultBackendConflict,
    TlsConflict,
    UnsupportedBackend,
    ServiceNotFound,
    ServicePortNotFound,
    InvalidExternalName,
    SecretNotFound,
    SecretInvalid,
    ResolvedRefs,
    InvalidDomain,
    DomainsConflict,
    NoConflict,
    NoDomains,
    CertificateReady,
    /// ACME: some domains have no certificate yet.
    CertificatePending,
    /// ACME: the last order for some domain failed.
    CertificateFailed,
    /// ACME: every domain is served, but a renewal is failing.
    RenewalFailing,
    /// ACME: a wildcard domain needs DNS-01, which is not supported.
    Dns01Required,
    /// `tls.acme` names no accepted `AcmeIssuer`, or none is the default.
    IssuerNotFound,
    /// An `AcmeIssuer` whose spec can't be used.
    InvalidIssuer,
    // Gateway API reasons, as the spec names them.
    Programmed,
    Invalid,
    ListenersNotValid,
    HostnameConflict,
    NoConflicts,
    UnsupportedProtocol,
    PortUnavailable,
    InvalidRouteKinds,
    InvalidCertificateRef,
    RefNotPermitted,
    NoMatchingParent,
    NotAllowedByListeners,
    NoMatchingListenerHostname,
    UnsupportedValue,
    InvalidKind,
    BackendNotFound,
    // ingress-nginx annotations.
    /// An annotation Vestibule does not implement: it has no effect.
    UnsupportedAnnotation,
    /// A `*-snippet` annotation: raw configuration is never accepted.
    SnippetRefused,
    /// An annotation with a value that can't be used.
    InvalidAnnotation,
    /// A canary Ingress whose host and path no primary Ingress serves.
    CanaryWithoutPrimary,
}
