//! Snapshot -> GatewayConfig + statuses.
pub mod status;
use crate::{manifests::Snapshot, model::GatewayConfig};
pub use status::*;
#[derive(Clone, Debug)]
pub struct Options { pub controller: String, pub require_tenant: bool }
pub struct Translation { pub config: GatewayConfig, pub statuses: Vec<ObjectStatus> }
pub fn translate(_s: &Snapshot, _o: &Options) -> Translation { todo!() }
