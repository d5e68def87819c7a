//! The parse cache: each file's parsed objects, kept while its metadata (or,
//! for recently written files, its content) says it did not change, and the
//! bounded, non-blocking read of a manifest file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{load_with, Loaded, ManifestError, DEFAULT_MAX_FILE_BYTES};
use crate::snapshot::Snapshot;

// === impl ManifestCache ===

/// Loads like [`super::load_paths`], but keeps each file's parsed objects and
/// re-reads only files whose metadata changed since the last load: one
/// edited file in a directory of thousands of objects costs one file's parse.
/// Files that are gone are forgotten; files with errors are never kept.
#[derive(Debug)]
pub struct ManifestCache {
    /// Largest file read; see [`DEFAULT_MAX_FILE_BYTES`].
    pub(super) max_file_bytes: u64,
    pub(super) files: HashMap<PathBuf, CachedFile>,
    /// Files the last load found changed in place (same file, new content).
    pub(super) rewritten: Vec<PathBuf>,
    /// Whether the last load found anything different from the one before.
    pub(super) changed: bool,
}

#[derive(Debug)]
pub(super) struct CachedFile {
    pub(super) key: FileKey,
    /// Modified so recently (or during the read) that a later write could
    /// leave the same metadata: check the content before trusting the key.
    pub(super) racy: bool,
    /// Content hash, kept for racy entries only (hashing costs a pass over the text).
    pub(super) hash: Option<u64>,
    pub(super) parsed: Arc<Parsed>,
}

/// A file's objects and skipped documents (never errors: see [`ManifestCache`]).
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub(super) snapshot: Snapshot,
    pub(super) skipped: Vec<String>,
}

/// What changes when a file's content may have changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FileKey {
    pub(super) len: u64,
    pub(super) modified: Option<SystemTime>,
    /// Device and inode: a file renamed into place is a new file.
    #[cfg(unix)]
    pub(super) id: (u64, u64),
    #[cfg(unix)]
    pub(super) changed: (i64, i64),
}

/// File timestamps are coarse (a kernel tick, or seconds on some file
/// systems): two writes this close together may leave the same metadata.
pub(super) const RACY_WINDOW: Duration = Duration::from_secs(2);

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

    /// Loads `paths`; the result is what [`super::load_paths`] would return now.
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
pub(super) fn content_hash(text: &str) -> u64 {
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
pub(super) enum FileLoad {
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

/// Reads a file unless the cache can vouch for it.
pub(super) fn read_file(
    file: &Path,
    old: Option<&CachedFile>,
    caching: bool,
    max: u64,
) -> FileLoad {
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
pub(super) fn read_text(file: &Path, max: u64) -> Result<String, ManifestError> {
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

#[cfg(test)]
mod cache_tests {
    use super::super::parallel::{parse_files, PARALLEL_MIN_BYTES};
    use super::super::{load_paths, load_text};
    use super::*;
    use k8s_openapi::api::core::v1::Service;

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
