//! ReferenceGrant v1beta1: the version every Gateway API release since
//! v0.6 serves (v1.5 serves v1 beside it, and stores v1beta1). The operator
//! watches this version so it works with the CRDs most clusters have; the
//! spec is v1's, so a grant converts to the v1 type the translator reads.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::referencegrants::{
    ReferenceGrant, ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo,
};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1beta1",
    kind = "ReferenceGrant",
    plural = "referencegrants",
    root = "ReferenceGrantV1Beta1",
    namespaced
)]
pub struct ReferenceGrantV1Beta1Spec {
    pub from: Vec<ReferenceGrantFrom>,
    pub to: Vec<ReferenceGrantTo>,
}

impl From<&ReferenceGrantV1Beta1> for ReferenceGrant {
    fn from(g: &ReferenceGrantV1Beta1) -> Self {
        ReferenceGrant {
            metadata: g.metadata.clone(),
            spec: ReferenceGrantSpec {
                from: g.spec.from.clone(),
                to: g.spec.to.clone(),
            },
        }
    }
}
