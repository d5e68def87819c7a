//! `--config FILE`: a compiled GatewayConfig (YAML or JSON), watched.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;
use vestibule_config::GatewayConfig;

use super::watch::{parent_dir, reload_on_change};
use super::{ConfigSource, SourceError, SourceEvent};

pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSource { path: path.into() }
    }

    fn load(&self) -> Result<GatewayConfig, SourceError> {
        load_file(&self.path)
    }
}

pub fn load_file(path: &Path) -> Result<GatewayConfig, SourceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SourceError(format!("{}: cannot read: {e}", path.display())))?;
    // A blank file is a write caught halfway (or a truncation), not a wish
    // to serve nothing: parsed, it would be an empty config and drop every
    // route. An intentionally empty config is `{}`.
    if text.trim().is_empty() {
        return Err(SourceError(format!(
            "{}: empty file (write `{{}}` for an empty config)",
            path.display()
        )));
    }
    GatewayConfig::from_text(&text).map_err(|e| SourceError(format!("{}: {e}", path.display())))
}

#[async_trait]
impl ConfigSource for FileSource {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn initial(&self) -> Result<Option<GatewayConfig>, SourceError> {
        self.load().map(Some)
    }

    async fn run(self: Box<Self>, events: UnboundedSender<SourceEvent>) {
        let dir = parent_dir(&self.path);
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let Some(name) = self.path.file_name().map(|n| n.to_os_string()) else {
            let _ = events.send(SourceEvent::Error(format!(
                "{}: not a file path; not watching",
                self.path.display()
            )));
            return;
        };
        let relevant = move |p: &Path| p.file_name() == Some(name.as_os_str());
        reload_on_change(&dir, false, relevant, || self.load(), events).await;
    }
}
