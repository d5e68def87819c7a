//! The controller: the long-lived background service that runs the config
//! source, applies its events ([`crate::apply`]) and runs the health and DNS
//! loops ([`crate::upstream::health`]) over whatever pools the live runtime
//! holds.
//!
//! Pingora's `LoadBalancer` only health-checks inside a background service
//! registered before the server starts; pools created by a later swap would
//! never be checked, so this one service drives the checks of every pool.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::apply;
use crate::runtime::Shared;
use crate::source::{ConfigSource, SourceEvent};
use crate::upstream::health::{self, LivePools};

pub struct Controller {
    shared: Arc<Shared>,
    source: Mutex<Option<Box<dyn ConfigSource>>>,
}

impl Controller {
    pub fn new(shared: Arc<Shared>, source: Box<dyn ConfigSource>) -> Self {
        Controller {
            shared,
            source: Mutex::new(Some(source)),
        }
    }
}

#[async_trait]
impl BackgroundService for Controller {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let source = self.source.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(source) = source else { return };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let source_task = tokio::spawn(source.run(tx));
        let live: Arc<dyn LivePools> = self.shared.clone();
        let upstream = &self.shared.upstream;
        let health = tokio::spawn(health::health_loop(live.clone(), upstream.health_interval));
        let dns = tokio::spawn(health::dns_loop(live, upstream.dns_interval));
        // The initial config: build its certificate keys in the background,
        // resolve ExternalNames right away.
        {
            let runtime = self.shared.runtime.load_full();
            apply::settle(runtime.clone());
            for p in runtime
                .pools
                .values()
                .filter(|p| p.is_external() && !p.resolved())
            {
                p.resolve().await;
            }
        }
        loop {
            tokio::select! {
                event = rx.recv() => {
                    let Some(mut event) = event else { break };
                    // Coalesce a backlog: the newest config, or the deltas
                    // composed into one.
                    while let Ok(newer) = rx.try_recv() {
                        if let SourceEvent::Error(e) = &event {
                            self.shared.report_error(e.to_string());
                        }
                        event = event.then(newer);
                    }
                    match event {
                        SourceEvent::Config(config) => {
                            apply::apply(&self.shared, &config).await;
                        }
                        SourceEvent::Delta(delta) => {
                            apply::apply_delta(&self.shared, &delta).await;
                        }
                        SourceEvent::Error(e) => self.shared.report_error(e.to_string()),
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        source_task.abort();
        health.abort();
        dns.abort();
    }
}
