//! `--manifests DIR`: Kubernetes YAML translated in process, watched; with
//! `--state-dir`, the ACME issuer of this process gets the translator's
//! plan and its certificates and failures go into the next translation.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use vestibule_acme::DirStore;
use vestibule_config::manifests::ManifestCache;
use vestibule_config::{translate_with, CertificateMemo, GatewayConfig, Options};

use super::watch::{reload_on_change, Edge};
use super::{ConfigSource, SourceError, SourceEvent};

pub struct ManifestsSource {
    dir: PathBuf,
    options: Options,
    /// Parsed files from the last load: a change re-parses only what changed.
    cache: Mutex<ManifestCache>,
    /// TLS Secret checks from the last translation, for the Secrets the
    /// cache hands back unchanged.
    certificates: Mutex<CertificateMemo>,
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
            options,
            cache: Mutex::new(ManifestCache::with_max_file_bytes(max_file_bytes)),
            certificates: Mutex::new(CertificateMemo::default()),
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
    fn load(&self, edge: Edge) -> Result<GatewayConfig, SourceError> {
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
        // take the watcher (and with it every later change) down.
        let options = &self.options;
        let snapshot = &loaded.snapshot;
        let mut memo = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        let translation = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            translate_with(snapshot, options, &mut memo)
        }))
        .map_err(|_| SourceError::TranslatorPanicked)?;
        for status in &translation.statuses {
            tracing::debug!(?status, "object status");
        }
        match &self.acme {
            Some(acme) => acme.handle.set_plan(translation.acme),
            None if !translation.acme.domains.is_empty() => tracing::warn!(
                domains = translation.acme.domains.len(),
                "Tenants ask for ACME certificates, which --manifests mode issues only with --state-dir"
            ),
            None => {}
        }
        Ok(translation.config)
    }
}

#[async_trait]
impl ConfigSource for ManifestsSource {
    fn describe(&self) -> String {
        format!("manifests:{}", self.dir.display())
    }

    fn initial(&self) -> Result<Option<GatewayConfig>, SourceError> {
        self.load(Edge::Trailing).map(Some)
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
