//! Loads files and directories of multi-document Kubernetes YAML into a
//! [`Snapshot`] of typed objects. A broken document is reported with its file
//! and index; the other documents still load.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::ByteString;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::tenant::Tenant;

/// The Kubernetes objects a translation reads. Order does not matter: the
/// translator sorts what it needs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ingress_classes: Vec<IngressClass>,
    pub ingresses: Vec<Ingress>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub secrets: Vec<Secret>,
    pub tenants: Vec<Tenant>,
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

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&file, &text, &mut loaded),
            Err(source) => loaded.errors.push(ManifestError::Io { path: file, source }),
        }
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
            out.push(path);
        }
    }
    Ok(())
}

/// Parses one file's text (one or more YAML documents) into `loaded`.
pub fn load_text(path: &Path, text: &str, loaded: &mut Loaded) {
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        let index = i + 1;
        let err = |message: String| ManifestError::Document {
            path: path.to_path_buf(),
            index,
            message,
        };
        let value: Value = match serde_saphyr::from_str::<Option<Value>>(doc) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                loaded.errors.push(err(format!("not valid YAML: {e}")));
                continue;
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
        ("networking.k8s.io/v1", "IngressClass") => {
            snapshot.ingress_classes.push(typed(value).map_err(what)?)
        }
        ("networking.k8s.io/v1", "Ingress") => {
            snapshot.ingresses.push(namespaced(value).map_err(what)?)
        }
        ("v1", "Service") => snapshot.services.push(namespaced(value).map_err(what)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => snapshot
            .endpoint_slices
            .push(namespaced(value).map_err(what)?),
        ("v1", "Secret") => {
            let mut secret: Secret = namespaced(value).map_err(what)?;
            // The API server folds stringData into data; do the same for files.
            if let Some(strings) = secret.string_data.take() {
                let data = secret.data.get_or_insert_with(Default::default);
                for (k, v) in strings {
                    data.insert(k, ByteString(v.into_bytes()));
                }
            }
            snapshot.secrets.push(secret)
        }
        ("vestibule.dev/v1alpha1", "Tenant") => snapshot.tenants.push(typed(value).map_err(what)?),
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
