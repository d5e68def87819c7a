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
use vestibule_config::model::ConfigDelta;
use vestibule_config::GatewayConfig;

use crate::runtime::Totals;

/// What a source reports.
pub enum SourceEvent {
    /// A complete config to serve.
    Config(Arc<GatewayConfig>),
    /// A change to the config the source sent before.
    Delta(Box<Delta>),
    /// The source changed but can't produce a config; the last good one stays.
    Error(SourceError),
}

pub use crate::error::SourceError;

/// A delta, what the whole config counts after it, and the way back to a
/// whole config when the live one is not the delta's base.
pub struct Delta {
    pub delta: ConfigDelta,
    pub totals: Totals,
    /// The source's current config (a copy: costly, for resynchronising).
    pub full: Arc<dyn Fn() -> GatewayConfig + Send + Sync>,
}

impl SourceEvent {
    /// `self` followed by `newer`, as one event: deltas compose, a config
    /// or an error replaces.
    pub fn then(self, newer: SourceEvent) -> SourceEvent {
        match (self, newer) {
            (SourceEvent::Delta(mut a), SourceEvent::Delta(b))
                if a.delta.version == b.delta.base =>
            {
                a.delta.then(&b.delta);
                a.totals = b.totals;
                a.full = b.full;
                SourceEvent::Delta(a)
            }
            (SourceEvent::Config(c), SourceEvent::Delta(d)) => {
                // A copy only if the config is shared.
                let mut config = Arc::unwrap_or_clone(c);
                match config.apply(&d.delta) {
                    Ok(()) => SourceEvent::Config(Arc::new(config)),
                    Err(_) => SourceEvent::Config(Arc::new((d.full)())),
                }
            }
            (_, newer) => newer,
        }
    }
}

impl std::fmt::Debug for SourceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceEvent::Config(c) => write!(f, "Config({})", c.version),
            SourceEvent::Delta(d) => write!(f, "Delta({} -> {})", d.delta.base, d.delta.version),
            SourceEvent::Error(e) => write!(f, "Error({e})"),
        }
    }
}

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
