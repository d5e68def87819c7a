//! Text to typed objects: documents split, YAML parsed, each object checked
//! into its Kubernetes type (unknown fields of ours refused), problems
//! reported with file, document index, object and field.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Loaded, ManifestError};
use crate::snapshot::Snapshot;

/// Parses one file's text (one or more YAML documents) into `loaded`.
pub fn load_text(path: &Path, text: &str, loaded: &mut Loaded) {
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        load_document(path, i + 1, doc, loaded);
    }
}

/// Parses document `index` (1-based) of `path` into `loaded`.
pub(super) fn load_document(path: &Path, index: usize, doc: &str, loaded: &mut Loaded) {
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

/// Splits a YAML stream on `---` document markers. Splitting by hand (rather
/// than by the parser) keeps one bad document from hiding the ones after it.
pub(super) fn split_documents(text: &str) -> Vec<&str> {
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
pub(super) fn add_object(
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
    // Checked before the object is kept: a malformed document is skipped
    // whole, never half-loaded.
    if name.is_empty() && kind != "List" {
        return Err(format!("{kind}: metadata.name is required"));
    }
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
        ("v1", "ConfigMap") => snapshot
            .config_maps
            .push(Arc::new(namespaced(value).map_err(what)?)),
        ("v1", "Namespace") => snapshot
            .namespaces
            .push(Arc::new(typed(value).map_err(what)?)),
        ("vestibule.dev/v1alpha1", "Tenant") => {
            snapshot.tenants.push(Arc::new(typed(value).map_err(what)?))
        }
        ("gateway.networking.k8s.io/v1", "GatewayClass") => snapshot
            .gateway_classes
            .push(Arc::new(typed(value).map_err(what)?)),
        ("gateway.networking.k8s.io/v1", "Gateway") => snapshot
            .gateways
            .push(Arc::new(namespaced(value).map_err(what)?)),
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => snapshot
            .http_routes
            .push(Arc::new(namespaced(value).map_err(what)?)),
        // v1beta1 is the version most clusters serve; the schema is the same.
        (
            "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1",
            "ReferenceGrant",
        ) => snapshot
            .reference_grants
            .push(Arc::new(namespaced(value).map_err(what)?)),
        ("vestibule.dev/v1alpha1", "AcmeIssuer") => snapshot
            .acme_issuers
            .push(Arc::new(typed(value).map_err(what)?)),
        _ => skipped(format!(
            "{api_version} {kind} {name:?} (not used by Vestibule)"
        )),
    }
    Ok(())
}

pub(super) fn typed<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(value)
}

/// Namespaced objects without a namespace land in `default`, as with kubectl.
pub(super) fn namespaced<T: DeserializeOwned>(mut value: Value) -> Result<T, serde_json::Error> {
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
apiVersion: apps/v1
kind: Deployment
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
        assert!(loaded.skipped[0].contains("Deployment"));
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
    fn tenant_typos_name_the_object_and_the_field_and_others_load() {
        let text = "apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
                    spec:\n  domains: [acme.example.com]\n  rateLimt: {requestsPerSecond: 5, burst: 10}\n\
                    ---\n\
                    apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {name: globex}\n\
                    spec: {domains: [globex.example.com]}\n";
        let mut loaded = Loaded::default();
        load_text(Path::new("tenants.yaml"), text, &mut loaded);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        let msg = loaded.errors[0].to_string();
        assert!(
            msg.starts_with("tenants.yaml: document 1: Tenant \"acme\": unknown field `rateLimt`"),
            "{msg}"
        );
        // The bad Tenant is skipped, not loaded without its rate limit.
        let names: Vec<_> = loaded
            .snapshot
            .tenants
            .iter()
            .map(|t| t.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["globex"]);
    }

    #[test]
    fn nameless_objects_are_errors_and_not_loaded() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {namespace: prod}\nspec: {ports: [{port: 80}]}\n";
        let mut loaded = Loaded::default();
        load_text(Path::new("s.yaml"), text, &mut loaded);
        let msg = loaded.errors[0].to_string();
        assert!(
            msg.contains("s.yaml: document 1: Service: metadata.name is required"),
            "{msg}"
        );
        assert!(loaded.snapshot.services.is_empty());
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
