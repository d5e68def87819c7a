//! `--config FILE`: a compiled GatewayConfig (YAML or JSON), watched.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;
use vestibule_config::GatewayConfig;

use super::watch::{parent_dir, reload_on_change, Edge};
use super::{ConfigSource, SourceError, SourceEvent};

pub struct FileSource {
    path: PathBuf,
    /// Identity (device, inode) of the file last loaded.
    loaded_id: Mutex<Option<(u64, u64)>>,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSource {
            path: path.into(),
            loaded_id: Mutex::new(None),
        }
    }

    /// On the leading edge of a burst, only a file renamed into place is
    /// known to be complete; one rewritten in place waits for the burst to end.
    fn load(&self, edge: Edge) -> Result<GatewayConfig, SourceError> {
        let id = file_id(&self.path);
        let mut loaded_id = self.loaded_id.lock().unwrap_or_else(|p| p.into_inner());
        if edge == Edge::Leading && (id.is_none() || id == *loaded_id) {
            return Err(SourceError::RewrittenInPlace {
                path: self.path.clone(),
            });
        }
        let config = load_file(&self.path)?;
        *loaded_id = id;
        Ok(config)
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &Path) -> Option<(u64, u64)> {
    None
}

pub fn load_file(path: &Path) -> Result<GatewayConfig, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // Parsed, a blank file would be an empty config and drop every route.
    // An intentionally empty config is `{}`.
    if text.trim().is_empty() {
        return Err(SourceError::Empty {
            path: path.to_path_buf(),
        });
    }
    GatewayConfig::from_text(&text).map_err(|source| SourceError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

#[async_trait]
impl ConfigSource for FileSource {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn initial(&self) -> Result<Option<GatewayConfig>, SourceError> {
        self.load(Edge::Trailing).map(Some)
    }

    async fn run(self: Box<Self>, events: UnboundedSender<SourceEvent>) {
        let dir = parent_dir(&self.path);
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let Some(name) = self.path.file_name().map(|n| n.to_os_string()) else {
            let _ = events.send(SourceEvent::Error(SourceError::NotAFile {
                path: self.path.clone(),
            }));
            return;
        };
        let relevant = move |p: &Path| p.file_name() == Some(name.as_os_str());
        let load = |edge| {
            self.load(edge)
                .map(|c| SourceEvent::Config(std::sync::Arc::new(c)))
        };
        reload_on_change(&dir, false, relevant, load, events, None).await;
    }
}
