//! Vestibule's config: the gateway IR ([`model`]), the `Tenant` and
//! `AcmeIssuer` CRDs ([`tenant`], [`issuer`]), the ACME plan ([`acme`]), the manifest loader ([`manifests`]) and the pure translator
//! from Kubernetes objects to a [`model::GatewayConfig`] ([`translate`]).
#![forbid(unsafe_code)]

pub mod acme;
pub mod gateway_api;
pub mod hostname;
pub mod issuer;
pub mod manifests;
pub mod migrate;
pub mod model;
pub mod snapshot;
pub mod tenant;
pub mod translate;

pub use hostname::{HostPattern, Hostname};
pub use manifests::{load_paths, Loaded};
pub use model::GatewayConfig;
pub use snapshot::Snapshot;
pub use translate::{translate, translate_with, CertificateMemo, Options, Translation};
