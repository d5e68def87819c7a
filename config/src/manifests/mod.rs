//! Loads files and directories of multi-document Kubernetes YAML into a
//! [`Snapshot`] of typed objects. A broken document is reported with its file
//! and index; the other documents still load. Here: what a load returns and
//! the walk over files; `parse` turns text into objects, `parallel` spreads
//! parsing over the cores, `cache` keeps parsed files so a reload re-parses
//! only the files that changed.

mod cache;
mod parallel;
mod parse;

pub use cache::ManifestCache;
pub use parse::load_text;

pub use crate::snapshot::Snapshot;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cache::{content_hash, read_file, CachedFile, FileLoad, Parsed};
use parallel::parse_files;

/// What loading produced: the objects, the documents it skipped, the
/// documents it could not read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Snapshot,
    /// Documents of kinds Vestibule does not use (`file: document N: kind`).
    pub skipped: Vec<String>,
    pub errors: Vec<ManifestError>,
}

impl Loaded {
    fn append(&mut self, other: Loaded) {
        let Loaded {
            snapshot,
            skipped,
            errors,
        } = other;
        self.snapshot.append(snapshot);
        self.skipped.extend(skipped);
        self.errors.extend(errors);
    }
}

/// Largest manifest file read by default; a larger one is an error (a
/// 1 GiB file would otherwise be read whole).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes, over the {max}-byte limit for one manifest file")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}: not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path}: document {index}: {message}")]
    Document {
        path: PathBuf,
        /// 1-based position of the document in its file.
        index: usize,
        message: String,
    },
}

/// Loads every `*.yaml`/`*.yml`/`*.json` file under each path (directories
/// are walked in sorted order; hidden entries are ignored).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    load_with(paths, None)
}

pub(super) fn load_with<P: AsRef<Path>>(
    paths: &[P],
    mut cache: Option<&mut ManifestCache>,
) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            if let Err(source) = collect_files(path, &mut files) {
                loaded.errors.push(ManifestError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        } else {
            files.push(path.to_path_buf());
        }
    }

    let max = cache
        .as_deref()
        .map_or(DEFAULT_MAX_FILE_BYTES, |c| c.max_file_bytes);
    let mut fates = Vec::with_capacity(files.len());
    for file in &files {
        let old = cache.as_deref().and_then(|c| c.files.get(file));
        fates.push(read_file(file, old, cache.is_some(), max));
    }

    // Parse what was read, in parallel; results come back in file order.
    let texts: Vec<(&Path, &str)> = files
        .iter()
        .zip(&fates)
        .filter_map(|(f, fate)| match fate {
            FileLoad::Read { text, .. } => Some((f.as_path(), text.as_str())),
            _ => None,
        })
        .collect();
    let mut parsed = parse_files(&texts).into_iter();

    let mut kept = HashMap::new();
    let mut rewritten = Vec::new();
    let mut changed = !loaded.errors.is_empty();
    for (file, fate) in files.into_iter().zip(fates) {
        match fate {
            FileLoad::Cached { parsed: p, refresh } => {
                loaded.snapshot.extend_from(&p.snapshot);
                loaded.skipped.extend(p.skipped.iter().cloned());
                if let Some(mut old) = cache.as_deref_mut().and_then(|c| c.files.remove(&file)) {
                    if let Some((key, racy)) = refresh {
                        old.key = key;
                        old.racy = racy;
                    }
                    kept.insert(file, old);
                }
            }
            FileLoad::Read {
                text,
                key,
                racy,
                rewritten: in_place,
            } => {
                let Some(result) = parsed.next() else {
                    continue;
                };
                if in_place {
                    rewritten.push(file.clone());
                }
                let was_known = cache
                    .as_deref()
                    .is_some_and(|c| c.files.contains_key(&file));
                changed |= was_known
                    || !result.errors.is_empty()
                    || !result.skipped.is_empty()
                    || !result.snapshot.is_empty();
                match key {
                    Some(key) if cache.is_some() && result.errors.is_empty() => {
                        let p = Arc::new(Parsed {
                            snapshot: result.snapshot,
                            skipped: result.skipped,
                        });
                        loaded.snapshot.extend_from(&p.snapshot);
                        loaded.skipped.extend(p.skipped.iter().cloned());
                        let hash = racy.then(|| content_hash(&text));
                        kept.insert(
                            file,
                            CachedFile {
                                key,
                                racy,
                                hash,
                                parsed: p,
                            },
                        );
                    }
                    _ => loaded.append(result),
                }
            }
            FileLoad::Failed(e) => {
                changed = true;
                loaded.errors.push(e);
            }
        }
    }
    if let Some(cache) = cache {
        // What is left was not seen this time: gone.
        changed |= cache
            .files
            .values()
            .any(|f| !f.parsed.snapshot.is_empty() || !f.parsed.skipped.is_empty());
        cache.files = kept;
        cache.rewritten = rewritten;
        cache.changed = changed;
    }
    loaded
}

/// Is this a file the loader reads?
pub fn is_manifest_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("yaml" | "yml" | "json"))
}

pub(super) fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if path.is_dir() && !hidden {
            collect_files(&path, out)?;
        } else if is_manifest_file(&path) {
            // Only regular files (or links to them): a FIFO named `x.yaml`
            // would block a read forever.
            match std::fs::metadata(&path) {
                Ok(meta) if !meta.is_file() => {
                    tracing::warn!(path = %path.display(), "not a regular file; not read");
                }
                _ => out.push(path),
            }
        }
    }
    Ok(())
}
