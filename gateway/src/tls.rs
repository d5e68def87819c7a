//! The certificate store of a runtime: the seam for the TLS listener.
//!
//! Today it only records which certificates a config carries. The HTTPS
//! listener (issue 5) parses them here, once per content id, into rustls
//! `CertifiedKey`s, and a `ResolvesServerCert` reads the store of the current
//! runtime through the same `ArcSwap` as the routes, so a config swap changes
//! certificates without restarting the listener.

use std::collections::BTreeSet;

use vestibule_config::model::{CertId, GatewayConfig};

#[derive(Debug, Default)]
pub struct CertStore {
    ids: BTreeSet<CertId>,
}

impl CertStore {
    pub fn from_config(config: &GatewayConfig) -> Self {
        CertStore {
            ids: config.certificates.keys().cloned().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}
