//! Loads files and directories of multi-document Kubernetes YAML into a
//! [`Snapshot`] of typed objects. A broken document is reported with its file
//! and index; the other documents still load. Documents are parsed on all
//! cores; [`ManifestCache`] keeps parsed files so a reload re-parses only the
//! files that changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::ByteString;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::tenant::Tenant;

/// The Kubernetes objects a translation reads. Order does not matter: the
/// translator sorts what it needs. Objects are shared (`Arc`), so a snapshot
/// assembled from cached files or from kube reflector stores copies no object.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ingress_classes: Vec<Arc<IngressClass>>,
    pub ingresses: Vec<Arc<Ingress>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
    pub tenants: Vec<Arc<Tenant>>,
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.ingress_classes.is_empty()
            && self.ingresses.is_empty()
            && self.services.is_empty()
            && self.endpoint_slices.is_empty()
            && self.secrets.is_empty()
            && self.tenants.is_empty()
    }

    /// Moves `other`'s objects to the end of `self`.
    pub fn append(&mut self, other: Snapshot) {
        let Snapshot {
            ingress_classes,
            ingresses,
            services,
            endpoint_slices,
            secrets,
            tenants,
        } = other;
        self.ingress_classes.extend(ingress_classes);
        self.ingresses.extend(ingresses);
        self.services.extend(services);
        self.endpoint_slices.extend(endpoint_slices);
        self.secrets.extend(secrets);
        self.tenants.extend(tenants);
    }

    /// Appends `other`'s objects (shared, not copied).
    pub fn extend_from(&mut self, other: &Snapshot) {
        self.append(other.clone());
    }
}

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

// === impl ManifestCache ===

/// Loads like [`load_paths`], but keeps each file's parsed objects and
/// re-reads only files whose metadata changed since the last load: one
/// edited file in a directory of thousands of objects costs one file's parse.
/// Files that are gone are forgotten; files with errors are never kept.
#[derive(Debug)]
pub struct ManifestCache {
    /// Largest file read; see [`DEFAULT_MAX_FILE_BYTES`].
    max_file_bytes: u64,
    files: HashMap<PathBuf, CachedFile>,
    /// Files the last load found changed in place (same file, new content).
    rewritten: Vec<PathBuf>,
    /// Whether the last load found anything different from the one before.
    changed: bool,
}

#[derive(Debug)]
struct CachedFile {
    key: FileKey,
    /// Modified so recently (or during the read) that a later write could
    /// leave the same metadata: check the content before trusting the key.
    racy: bool,
    /// Content hash, kept for racy entries only (hashing costs a pass over the text).
    hash: Option<u64>,
    parsed: Arc<Parsed>,
}

/// A file's objects and skipped documents (never errors: see [`ManifestCache`]).
#[derive(Debug, Default)]
struct Parsed {
    snapshot: Snapshot,
    skipped: Vec<String>,
}

/// What changes when a file's content may have changed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileKey {
    len: u64,
    modified: Option<SystemTime>,
    /// Device and inode: a file renamed into place is a new file.
    #[cfg(unix)]
    id: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

/// File timestamps are coarse (a kernel tick, or seconds on some file
/// systems): two writes this close together may leave the same metadata.
const RACY_WINDOW: Duration = Duration::from_secs(2);

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileKey {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            id: (meta.dev(), meta.ino()),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Is `self` the same file as `other` (not one renamed over it)?
    fn same_file(&self, other: &FileKey) -> bool {
        #[cfg(unix)]
        return self.id == other.id;
        #[cfg(not(unix))]
        {
            let _ = other;
            true
        }
    }

    /// Was the file written or its inode changed within [`RACY_WINDOW`]?
    /// The change time counts too: a writer may set an old mtime back
    /// (`rsync -t --inplace`, `touch -r`), but it can't set the ctime.
    fn is_recent(&self) -> bool {
        let recent = |t: SystemTime| {
            SystemTime::now()
                .duration_since(t)
                .map_or(true, |age| age < RACY_WINDOW)
        };
        #[cfg(unix)]
        {
            let (secs, nanos) = self.changed;
            let ctime = u64::try_from(secs).ok().map(|s| {
                SystemTime::UNIX_EPOCH + Duration::new(s, nanos.clamp(0, 999_999_999) as u32)
            });
            if ctime.is_none_or(recent) {
                return true;
            }
        }
        self.modified.is_none_or(recent)
    }
}

impl Default for ManifestCache {
    fn default() -> Self {
        ManifestCache {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            files: HashMap::new(),
            rewritten: Vec::new(),
            changed: false,
        }
    }
}

impl ManifestCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache that refuses files larger than `max` bytes.
    pub fn with_max_file_bytes(max: u64) -> Self {
        ManifestCache {
            max_file_bytes: max,
            ..Self::default()
        }
    }

    /// Loads `paths`; the result is what [`load_paths`] would return now.
    pub fn load<P: AsRef<Path>>(&mut self, paths: &[P]) -> Loaded {
        load_with(paths, Some(self))
    }

    /// Files that the last load found rewritten in place rather than
    /// replaced (renamed over) or new. Such a file may have been read
    /// half-written: its content is worth trusting only once writes stop.
    pub fn rewritten_in_place(&self) -> &[PathBuf] {
        &self.rewritten
    }

    /// Whether the last load could differ from the one before it: a file
    /// with objects (or skipped documents, or errors) was added, changed or
    /// removed, or something could not be read. A file that appeared empty
    /// (created, not written yet) changes nothing.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Number of files whose objects are kept.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Detects a change of content between two reads of a file (accidental,
/// never adversarial): a word-at-a-time multiplicative hash, several times
/// faster than SipHash on the megabytes of a big Secrets file. Every step is
/// a bijection of the state for a fixed input word, so a change confined to
/// one word always changes the result.
fn content_hash(text: &str) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes = text.as_bytes();
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K)
}

/// One file's fate in a load.
enum FileLoad {
    /// Unchanged; `refresh` is the new key when only the metadata changed.
    Cached {
        parsed: Arc<Parsed>,
        refresh: Option<(FileKey, bool)>,
    },
    /// Read; parsed below. `key` is `None` when the file must not be cached.
    Read {
        text: String,
        key: Option<FileKey>,
        racy: bool,
        /// Changed content in the file the cache knew (not a new one).
        rewritten: bool,
    },
    Failed(ManifestError),
}

fn load_with<P: AsRef<Path>>(paths: &[P], mut cache: Option<&mut ManifestCache>) -> Loaded {
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

/// Reads a file unless the cache can vouch for it.
fn read_file(file: &Path, old: Option<&CachedFile>, caching: bool, max: u64) -> FileLoad {
    let before = if caching {
        std::fs::metadata(file).ok().map(|m| FileKey::of(&m))
    } else {
        None
    };
    if let (Some(old), Some(key)) = (old, &before) {
        if !old.racy && old.key == *key {
            return FileLoad::Cached {
                parsed: old.parsed.clone(),
                refresh: None,
            };
        }
    }
    let text = match read_text(file, max) {
        Ok(text) => text,
        Err(e) => return FileLoad::Failed(e),
    };
    let Some(before) = before else {
        return FileLoad::Read {
            text,
            key: None,
            racy: true,
            rewritten: old.is_some(),
        };
    };
    let after = std::fs::metadata(file).ok().map(|m| FileKey::of(&m));
    let racy = after.as_ref() != Some(&before) || before.is_recent();
    if let Some(old) = old.filter(|o| o.hash.is_some()) {
        if old.hash == Some(content_hash(&text)) {
            return FileLoad::Cached {
                parsed: old.parsed.clone(),
                refresh: Some((before, racy)),
            };
        }
    }
    let rewritten = old.is_some_and(|o| o.key.same_file(&before));
    FileLoad::Read {
        text,
        key: Some(before),
        racy,
        rewritten,
    }
}

/// A regular file's text, at most `max` bytes. Opened without blocking and
/// checked on the open handle, so a FIFO (or a device) put in place of a
/// manifest can't stall the loader, and the size is bounded while reading
/// too (the file may grow after the check).
fn read_text(file: &Path, max: u64) -> Result<String, ManifestError> {
    use std::io::Read;
    let io = |source| ManifestError::Io {
        path: file.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let handle = options.open(file).map_err(io)?;
    let meta = handle.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ManifestError::NotRegular {
            path: file.to_path_buf(),
        });
    }
    let too_large = |size| ManifestError::TooLarge {
        path: file.to_path_buf(),
        size,
        max,
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut text = String::with_capacity(meta.len() as usize);
    handle.take(max + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > max {
        return Err(too_large(text.len() as u64));
    }
    Ok(text)
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

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
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

/// Parses one file's text (one or more YAML documents) into `loaded`.
pub fn load_text(path: &Path, text: &str, loaded: &mut Loaded) {
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        load_document(path, i + 1, doc, loaded);
    }
}

/// Parses document `index` (1-based) of `path` into `loaded`.
fn load_document(path: &Path, index: usize, doc: &str, loaded: &mut Loaded) {
    let err = |message: String| ManifestError::Document {
        path: path.to_path_buf(),
        index,
        message,
    };
    let value: Value = match serde_saphyr::from_str::<Option<Value>>(doc) {
        Ok(Some(v)) => v,
        Ok(None) => return,
        Err(e) => {
            loaded.errors.push(err(format!("not valid YAML: {e}")));
            return;
        }
    };
    if let Err(message) = add_object(value, &mut loaded.snapshot, &mut |kind| {
        loaded
            .skipped
            .push(format!("{}: document {index}: {kind}", path.display()))
    }) {
        loaded.errors.push(err(message));
    }
}

/// Below this much YAML, threads cost more than they save.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;
const MAX_THREADS: usize = 8;
/// Runs per thread: enough for the threads to finish close together.
const RUNS_PER_THREAD: usize = 16;

/// Parses files, one [`Loaded`] per file in the same order, spreading their
/// documents over the available cores in contiguous runs that are merged
/// back in order, so the result is the same as a sequential parse.
fn parse_files(files: &[(&Path, &str)]) -> Vec<Loaded> {
    // (file, 1-based index, text) of every document.
    let mut docs: Vec<(usize, usize, &str)> = Vec::new();
    for (f, (_, text)) in files.iter().enumerate() {
        for (i, doc) in split_documents(text).into_iter().enumerate() {
            docs.push((f, i + 1, doc));
        }
    }
    let total: usize = docs.iter().map(|d| d.2.len()).sum();
    let threads = if total < PARALLEL_MIN_BYTES {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS)
    };

    let parse_run = |run: &[(usize, usize, &str)]| -> Vec<(usize, Loaded)> {
        let mut out: Vec<(usize, Loaded)> = Vec::new();
        for &(f, index, doc) in run {
            if out.last().is_none_or(|(last, _)| *last != f) {
                out.push((f, Loaded::default()));
            }
            if let Some((_, loaded)) = out.last_mut() {
                load_document(files[f].0, index, doc, loaded);
            }
        }
        out
    };

    let runs: Vec<Vec<(usize, Loaded)>> = if threads == 1 {
        vec![parse_run(&docs)]
    } else {
        // Many small runs handed out in turn: documents differ a lot in cost
        // per byte (flow-style Ingresses vs. PEM block scalars), so equal
        // shares up front leave one thread idle early.
        let per_run = docs.len().div_ceil(threads * RUNS_PER_THREAD).max(1);
        let runs: Vec<&[(usize, usize, &str)]> = docs.chunks(per_run).collect();
        let next = AtomicUsize::new(0);
        let work = || {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(run) = runs.get(i) else { break };
                mine.push((i, parse_run(run)));
            }
            mine
        };
        let mut done: Vec<(usize, Vec<(usize, Loaded)>)> = std::thread::scope(|scope| {
            // This thread works too; a thread that cannot be started (a
            // process limit) leaves its share to the others.
            let helpers: Vec<_> = (1..threads)
                .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
                .collect();
            let mut all = work();
            for h in helpers {
                all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            all
        });
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, run)| run).collect()
    };

    let mut out: Vec<Loaded> = files.iter().map(|_| Loaded::default()).collect();
    for (f, part) in runs.into_iter().flatten() {
        out[f].append(part);
    }
    out
}

/// Splits a YAML stream on `---` document markers. Splitting by hand (rather
/// than by the parser) keeps one bad document from hiding the ones after it.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        let is_marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if is_marker {
            docs.push(&text[start..offset]);
            // Content after the marker on the same line belongs to the next document.
            start = offset + 3;
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Adds one parsed document (or a `List` of them) to the snapshot.
fn add_object(
    value: Value,
    snapshot: &mut Snapshot,
    skipped: &mut dyn FnMut(String),
) -> Result<(), String> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or("missing apiVersion")?
        .to_string();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("missing kind")?
        .to_string();
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let what = |e: serde_json::Error| format!("{kind} {name:?}: {e}");
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = match value.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => Vec::new(),
            };
            for item in items {
                add_object(item, snapshot, skipped)?;
            }
        }
        ("networking.k8s.io/v1", "IngressClass") => snapshot
            .ingress_classes
            .push(Arc::new(typed(value).map_err(what)?)),
        ("networking.k8s.io/v1", "Ingress") => snapshot
            .ingresses
            .push(Arc::new(namespaced(value).map_err(what)?)),
        ("v1", "Service") => snapshot
            .services
            .push(Arc::new(namespaced(value).map_err(what)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => snapshot
            .endpoint_slices
            .push(Arc::new(namespaced(value).map_err(what)?)),
        ("v1", "Secret") => {
            let mut secret: Secret = namespaced(value).map_err(what)?;
            // The API server folds stringData into data; do the same for files.
            if let Some(strings) = secret.string_data.take() {
                let data = secret.data.get_or_insert_with(Default::default);
                for (k, v) in strings {
                    data.insert(k, ByteString(v.into_bytes()));
                }
            }
            snapshot.secrets.push(Arc::new(secret))
        }
        ("vestibule.dev/v1alpha1", "Tenant") => {
            snapshot.tenants.push(Arc::new(typed(value).map_err(what)?))
        }
        _ => skipped(format!(
            "{api_version} {kind} {name:?} (not used by Vestibule)"
        )),
    }
    if name.is_empty() && kind != "List" {
        return Err(format!("{kind}: metadata.name is required"));
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(value)
}

/// Namespaced objects without a namespace land in `default`, as with kubectl.
fn namespaced<T: DeserializeOwned>(mut value: Value) -> Result<T, serde_json::Error> {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("namespace")
            .or_insert_with(|| Value::String("default".into()));
    }
    serde_json::from_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let text = "---\na: 1\n---\n# only a comment\n---\nb: 2\n...\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert!(docs[0].contains("a: 1"));
        assert!(docs[1].contains("b: 2"));
    }

    #[test]
    fn bad_document_is_reported_and_others_load() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: [unbalanced
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
---
apiVersion: v1
kind: Service
metadata: {name: d, namespace: prod}
"#;
        let mut loaded = Loaded::default();
        load_text(Path::new("x.yaml"), text, &mut loaded);
        let names: Vec<_> = loaded
            .snapshot
            .services
            .iter()
            .map(|s| {
                (
                    s.metadata.namespace.clone().unwrap(),
                    s.metadata.name.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![("default".into(), "a".into()), ("prod".into(), "d".into())]
        );
        assert_eq!(loaded.errors.len(), 1);
        let msg = loaded.errors[0].to_string();
        assert!(msg.starts_with("x.yaml: document 2:"), "{msg}");
        assert_eq!(loaded.skipped.len(), 1);
        assert!(loaded.skipped[0].contains("ConfigMap"));
    }

    #[test]
    fn wrong_field_type_names_the_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: 80}\n";
        let mut loaded = Loaded::default();
        load_text(Path::new("s.yaml"), text, &mut loaded);
        let msg = loaded.errors[0].to_string();
        assert!(msg.contains("s.yaml: document 1: Service \"web\""), "{msg}");
    }

    #[test]
    fn string_data_is_folded_into_data() {
        let text =
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {tls.crt: abc}\n";
        let mut loaded = Loaded::default();
        load_text(Path::new("s.yaml"), text, &mut loaded);
        let data = loaded.snapshot.secrets[0].data.as_ref().unwrap();
        assert_eq!(data["tls.crt"].0, b"abc");
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("vestibule-manifests-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.0.join(file), text).unwrap();
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn service(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}]}}\n---\n")
    }

    fn names(loaded: &Loaded) -> Vec<String> {
        loaded
            .snapshot
            .services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect()
    }

    fn find<'l>(loaded: &'l Loaded, name: &str) -> &'l Arc<Service> {
        let found = loaded
            .snapshot
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name));
        found.unwrap()
    }

    /// Makes every cached entry old enough to be trusted on its metadata.
    fn settle(cache: &mut ManifestCache) {
        for f in cache.files.values_mut() {
            f.racy = false;
        }
    }

    #[test]
    fn reparses_only_changed_files_and_forgets_deleted_ones() {
        let dir = Scratch::new("cache");
        dir.write("a.yaml", &service("a"));
        dir.write("b.yaml", &(service("b1") + &service("b2")));
        dir.write("c.yaml", &service("c"));
        let mut cache = ManifestCache::new();
        let first = cache.load(&[&dir.0]);
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(names(&first), ["a", "b1", "b2", "c"]);
        assert_eq!(cache.len(), 3);
        settle(&mut cache);

        // Unchanged: the very same objects come back.
        let again = cache.load(&[&dir.0]);
        assert!(Arc::ptr_eq(find(&first, "a"), find(&again, "a")));
        assert!(Arc::ptr_eq(find(&first, "b2"), find(&again, "b2")));

        // One file changed, one deleted, one renamed in.
        dir.write("b.yaml", &service("b3"));
        std::fs::remove_file(dir.0.join("c.yaml")).unwrap();
        dir.write(".d.tmp", &service("d"));
        std::fs::rename(dir.0.join(".d.tmp"), dir.0.join("d.yaml")).unwrap();
        let next = cache.load(&[&dir.0]);
        assert_eq!(names(&next), ["a", "b3", "d"]);
        assert!(Arc::ptr_eq(find(&first, "a"), find(&next, "a")));
        assert_eq!(cache.len(), 3);
        assert!(!cache.files.contains_key(&dir.0.join("c.yaml")));

        // The cached load is what an uncached one says.
        assert_eq!(names(&load_paths(&[&dir.0])), names(&next));
    }

    #[test]
    fn racy_entries_are_checked_by_content() {
        let dir = Scratch::new("racy");
        dir.write("a.yaml", &service("a"));
        let mut cache = ManifestCache::new();
        let first = cache.load(&[&dir.0]);
        // Just written: racy, so rewritten bytes are compared, not trusted.
        assert!(cache.files.values().all(|f| f.racy && f.hash.is_some()));
        dir.write("a.yaml", &service("a"));
        let same = cache.load(&[&dir.0]);
        assert!(Arc::ptr_eq(find(&first, "a"), find(&same, "a")));
        // Same size, same (coarse) timestamp could hide this edit; the hash does not.
        dir.write("a.yaml", &service("z"));
        assert_eq!(names(&cache.load(&[&dir.0])), ["z"]);
    }

    #[test]
    fn tells_files_rewritten_in_place_from_replaced_and_new_ones() {
        let dir = Scratch::new("inplace");
        dir.write("a.yaml", &service("a"));
        dir.write("b.yaml", &service("b"));
        let mut cache = ManifestCache::new();
        cache.load(&[&dir.0]);
        assert!(cache.rewritten_in_place().is_empty());
        dir.write("a.yaml", &service("a2"));
        dir.write(".b.tmp", &service("b2"));
        std::fs::rename(dir.0.join(".b.tmp"), dir.0.join("b.yaml")).unwrap();
        dir.write("c.yaml", &service("c"));
        let loaded = cache.load(&[&dir.0]);
        assert_eq!(names(&loaded), ["a2", "b2", "c"]);
        assert_eq!(cache.rewritten_in_place(), [dir.0.join("a.yaml")]);
        // Unchanged since: nothing rewritten.
        cache.load(&[&dir.0]);
        assert!(cache.rewritten_in_place().is_empty());
    }

    #[test]
    fn tells_whether_a_load_changed_anything() {
        let dir = Scratch::new("changed");
        dir.write("a.yaml", &service("a"));
        let mut cache = ManifestCache::new();
        cache.load(&[&dir.0]);
        assert!(cache.changed());
        cache.load(&[&dir.0]);
        assert!(!cache.changed());
        // Created, not written yet: no change.
        dir.write("b.yaml", "");
        cache.load(&[&dir.0]);
        assert!(!cache.changed());
        dir.write("b.yaml", &service("b"));
        cache.load(&[&dir.0]);
        assert!(cache.changed());
        // Emptied (truncated) and removed files are changes.
        dir.write("b.yaml", "");
        cache.load(&[&dir.0]);
        assert!(cache.changed());
        std::fs::remove_file(dir.0.join("a.yaml")).unwrap();
        cache.load(&[&dir.0]);
        assert!(cache.changed());
        std::fs::remove_file(dir.0.join("b.yaml")).unwrap();
        cache.load(&[&dir.0]);
        assert!(!cache.changed());
    }

    #[test]
    fn files_with_errors_are_reported_every_time_and_never_kept() {
        let dir = Scratch::new("errors");
        dir.write("a.yaml", &service("a"));
        dir.write("bad.yaml", "kind: [unclosed");
        let mut cache = ManifestCache::new();
        for _ in 0..2 {
            let loaded = cache.load(&[&dir.0]);
            assert_eq!(loaded.errors.len(), 1);
            assert!(loaded.errors[0]
                .to_string()
                .contains("bad.yaml: document 1"));
            assert_eq!(names(&loaded), ["a"]);
            assert_eq!(cache.len(), 1);
            settle(&mut cache);
        }
        dir.write("bad.yaml", &service("fixed"));
        let loaded = cache.load(&[&dir.0]);
        assert!(loaded.errors.is_empty());
        assert_eq!(names(&loaded), ["a", "fixed"]);
    }

    #[test]
    fn content_hash_sees_every_one_byte_edit() {
        let text = service("abcdefghijklmnop");
        let base = content_hash(&text);
        for i in 0..text.len() {
            let mut edited = text.clone().into_bytes();
            edited[i] ^= 0x01;
            let edited = String::from_utf8(edited).unwrap();
            assert_ne!(content_hash(&edited), base, "edit at {i}");
        }
        assert_ne!(content_hash(&text[..text.len() - 1]), base);
        assert_ne!(content_hash(&(text.clone() + "\0")), base);
    }

    #[test]
    fn parallel_parse_matches_sequential_order() {
        // Enough bytes for several threads, with errors and skipped
        // documents spread over files and runs.
        let mut texts = Vec::new();
        for f in 0..5 {
            let mut text = String::new();
            for i in 0..800 {
                match i % 97 {
                    13 => {
                        text.push_str("apiVersion: v1\nkind: Service\nmetadata: {name: [bad\n---\n")
                    }
                    42 => text.push_str(&format!(
                        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{f}-{i}}}\n---\n"
                    )),
                    _ => text.push_str(&service(&format!("s-{f}-{i}"))),
                }
            }
            texts.push((PathBuf::from(format!("f{f}.yaml")), text));
        }
        let refs: Vec<(&Path, &str)> = texts
            .iter()
            .map(|(p, t)| (p.as_path(), t.as_str()))
            .collect();
        assert!(refs.iter().map(|r| r.1.len()).sum::<usize>() > PARALLEL_MIN_BYTES);
        let mut parallel = Loaded::default();
        for part in parse_files(&refs) {
            parallel.append(part);
        }
        let mut sequential = Loaded::default();
        for (path, text) in &refs {
            load_text(path, text, &mut sequential);
        }
        assert_eq!(
            format!("{:?}", parallel.snapshot),
            format!("{:?}", sequential.snapshot)
        );
        assert_eq!(parallel.skipped, sequential.skipped);
        let errors = |l: &Loaded| l.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        assert_eq!(errors(&parallel), errors(&sequential));
        assert_eq!(sequential.errors.len(), 5 * 9);
    }
}
