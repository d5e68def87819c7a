//! Config sources: where `GatewayConfig`s come from. Every source is a
//! [`ConfigSource`] that loads a first config before serving and then sends
//! [`SourceEvent`]s; the controller compiles and swaps them. The file and
//! manifests sources watch the file system; the operator source (long-poll)
//! plugs in behind the same trait.

mod file;
mod manifests;
mod operator;
mod watch;

pub use file::FileSource;
pub use manifests::{Acme, ManifestsSource};
pub use operator::OperatorSource;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;
use vestibule_config::GatewayConfig;

/// What a source reports.
#[derive(Debug)]
pub enum SourceEvent {
    /// A complete config to serve.
    Config(Arc<GatewayConfig>),
    /// The source changed but can't produce a config; the last good one stays.
    Error(SourceError),
}

pub use crate::error::SourceError;

#[async_trait]
pub trait ConfigSource: Send + Sync + 'static {
    /// For logs and `/config`, e.g. `file:/etc/vestibule/config.yaml`.
    fn describe(&self) -> String;

    /// The config to start with, loaded before the listeners open. `None`
    /// means not yet known (the gateway starts unready); `Err` is a usage or
    /// config error at startup (exit code 2).
    fn initial(&self) -> Result<Option<GatewayConfig>, SourceError>;

    /// Sends every later change until the receiver is dropped.
    async fn run(self: Box<Self>, events: UnboundedSender<SourceEvent>);
}
