//! `--manifests DIR`: Kubernetes YAML translated in process, watched; with
//! `--state-dir`, the ACME issuer of this process gets the translator's
//! plan and its certificates and failures go into the next translation.
//! Translation is incremental: a changed file re-translates what its
//! objects reach, and goes live as a delta.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use vestibule_acme::DirStore;
use vestibule_config::manifests::ManifestCache;
use vestibule_config::translate::Incremental;
use vestibule_config::{GatewayConfig, Options};

use super::watch::{reload_on_change, Edge};
use super::{ConfigSource, Delta, SourceError, SourceEvent};
use crate::runtime::Totals;

pub struct ManifestsSource {
    dir: PathBuf,
    options: Options,
    /// Parsed files from the last load: a change re-parses only what changed.
    cache: Mutex<ManifestCache>,
    /// The translator and its output so far.
    translator: Arc<Mutex<Incremental>>,
    acme: Option<Acme>,
}

/// The issuer side of a manifests source.
pub struct Acme {
    pub store: Arc<DirStore>,
    pub handle: vestibule_acme::Handle,
    /// The issuer's loop, run next to the file watcher.
    pub run: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    /// Reloads the issuer asks for (a certificate stored, a failure).
    pub nudges: Mutex<Option<UnboundedReceiver<()>>>,
}

impl ManifestsSource {
    /// Reads `dir`, refusing files over `max_file_bytes`, translated with
    /// `options` (our controller name; `--require-tenant`).
    pub fn new(dir: impl Into<PathBuf>, max_file_bytes: u64, options: Options) -> Self {
        ManifestsSource {
            dir: dir.into(),
            translator: Arc::new(Mutex::new(Incremental::without_statuses(options.clone()))),
            options,
            cache: Mutex::new(ManifestCache::with_max_file_bytes(max_file_bytes)),
            acme: None,
        }
    }

    /// Issues ACME certificates for the Tenants that ask for them.
    pub fn with_acme(mut self, acme: Acme) -> Self {
        self.acme = Some(acme);
        self
    }

    /// Loads and translates the directory. A document that does not parse
    /// fails the whole load, so a half-written file never drops its routes
    /// from the live config; translation problems are statuses, not errors.
    /// On the leading edge of a burst, a file rewritten in place (rather
    /// than renamed into place) may be half-written even if it parses, so
    /// the load waits for the burst to end.
    fn load(&self, edge: Edge) -> Result<SourceEvent, SourceError> {
        if !self.dir.is_dir() {
            return Err(SourceError::NotADirectory {
                path: self.dir.clone(),
            });
        }
        let mut loaded = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let loaded = cache.load(std::slice::from_ref(&self.dir));
            if edge == Edge::Leading {
                if let Some(file) = cache.rewritten_in_place().first() {
                    return Err(SourceError::RewrittenInPlace { path: file.clone() });
                }
                // A file created but not written yet: nothing to translate.
                if !cache.changed() {
                    return Err(SourceError::NoChangeYet);
                }
            }
            loaded
        };
        if !loaded.errors.is_empty() {
            return Err(SourceError::Manifests(loaded.errors));
        }
        if let Some(acme) = &self.acme {
            loaded.snapshot.secrets.extend(acme.store.secrets());
            loaded.snapshot.acme_failures = acme.handle.failures();
        }
        // The translator is pure; a panic in it is a bug, but it must not
        // take the watcher (and with it every later change) down. Its
        // state may be half-updated then: start over with a full pass.
        let snapshot = &loaded.snapshot;
        let mut translator = self.translator.lock().unwrap_or_else(|p| p.into_inner());
        let update =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| translator.update(snapshot)))
                .map_err(|_| {
                    *translator = Incremental::without_statuses(self.options.clone());
                    SourceError::TranslatorPanicked
                })?;
        for status in &update.dropped {
            tracing::debug!(?status, "object status");
        }
        let acme_domains = translator.acme().domains.len();
        match &self.acme {
            Some(acme) => acme.handle.set_plan(translator.acme().clone()),
            None if acme_domains > 0 => tracing::warn!(
                domains = acme_domains,
                "Tenants ask for ACME certificates, which --manifests mode issues only with --state-dir"
            ),
            None => {}
        }
        let shared = self.translator.clone();
        Ok(SourceEvent::Delta(Box::new(Delta {
            delta: update.delta,
            totals: Totals::of(translator.config()),
            full: Arc::new(move || {
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .config()
                    .clone()
            }),
        })))
    }
}

#[async_trait]
impl ConfigSource for ManifestsSource {
    fn describe(&self) -> String {
        format!("manifests:{}", self.dir.display())
    }

    fn initial(&self) -> Result<Option<GatewayConfig>, SourceError> {
        self.load(Edge::Trailing)?;
        let translator = self.translator.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Some(translator.config().clone()))
    }

    async fn run(self: Box<Self>, events: UnboundedSender<SourceEvent>) {
        let dir = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let relevant = |p: &Path| vestibule_config::manifests::is_manifest_file(p) || p.is_dir();
        let (issuer, nudges) = match &self.acme {
            Some(acme) => (
                acme.run.lock().unwrap_or_else(|p| p.into_inner()).take(),
                acme.nudges.lock().unwrap_or_else(|p| p.into_inner()).take(),
            ),
            None => (None, None),
        };
        if let Some(issuer) = issuer {
            tokio::spawn(issuer);
        }
        reload_on_change(&dir, true, relevant, |edge| self.load(edge), events, nudges).await;
    }
}
