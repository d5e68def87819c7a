//! The snapshot a translation reads: the Kubernetes objects it uses, from
//! manifest files or from the operator's reflector stores.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use std::collections::BTreeMap;

use crate::gateway_api::{Gateway, GatewayClass, HttpRoute, ReferenceGrant};
use crate::hostname::Hostname;
use crate::issuer::AcmeIssuer;
use crate::tenant::Tenant;

/// The Kubernetes objects a translation reads. Order does not matter: the
/// translator sorts what it needs. Objects are shared (`Arc`), so a snapshot
/// assembled from cached files or from kube reflector stores copies no object.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ingress_classes: Vec<Arc<IngressClass>>,
    pub ingresses: Vec<Arc<Ingress>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
    /// ConfigMaps of upstream roots (`proxy-ssl-ca-configmap`; the
    /// operator watches those labelled `vestibule.dev/upstream-ca=true`).
    pub config_maps: Vec<Arc<ConfigMap>>,
    pub tenants: Vec<Arc<Tenant>>,
    pub acme_issuers: Vec<Arc<AcmeIssuer>>,
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub http_routes: Vec<Arc<HttpRoute>>,
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    /// Namespaces, for their labels (Gateway listeners' namespace
    /// selectors). A namespace without an object here still has the
    /// `kubernetes.io/metadata.name` label the API server gives them all.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Domains whose last ACME order failed, with the CA's problem (from
    /// the issuer, not from objects): their Tenant's status says so.
    pub acme_failures: BTreeMap<Hostname, String>,
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.ingress_classes.is_empty()
            && self.ingresses.is_empty()
            && self.services.is_empty()
            && self.endpoint_slices.is_empty()
            && self.secrets.is_empty()
            && self.config_maps.is_empty()
            && self.tenants.is_empty()
            && self.acme_issuers.is_empty()
            && self.gateway_classes.is_empty()
            && self.gateways.is_empty()
            && self.http_routes.is_empty()
            && self.reference_grants.is_empty()
            && self.namespaces.is_empty()
    }

    /// Moves `other`'s objects to the end of `self`.
    pub fn append(&mut self, other: Snapshot) {
        let Snapshot {
            ingress_classes,
            ingresses,
            services,
            endpoint_slices,
            secrets,
            config_maps,
            tenants,
            acme_issuers,
            gateway_classes,
            gateways,
            http_routes,
            reference_grants,
            namespaces,
            acme_failures,
        } = other;
        self.ingress_classes.extend(ingress_classes);
        self.ingresses.extend(ingresses);
        self.services.extend(services);
        self.endpoint_slices.extend(endpoint_slices);
        self.secrets.extend(secrets);
        self.config_maps.extend(config_maps);
        self.tenants.extend(tenants);
        self.acme_issuers.extend(acme_issuers);
        self.gateway_classes.extend(gateway_classes);
        self.gateways.extend(gateways);
        self.http_routes.extend(http_routes);
        self.reference_grants.extend(reference_grants);
        self.namespaces.extend(namespaces);
        self.acme_failures.extend(acme_failures);
    }

    /// Appends `other`'s objects (shared, not copied).
    pub fn extend_from(&mut self, other: &Snapshot) {
        self.append(other.clone());
    }
}
