//! `vestibule-operator migrate`: for each Ingress of a set of manifests,
//! how Vestibule treats each of its ingress-nginx annotations. Pure: the
//! caller loads the files and prints the report.

use serde::Serialize;

use crate::manifests::Snapshot;
use crate::translate::annotations::{classify, strip_prefix, Support};

/// One Ingress's annotations.
#[derive(Debug, Serialize)]
pub struct IngressReport {
    /// `namespace/name`.
    pub ingress: String,
    pub annotations: Vec<AnnotationReport>,
}

#[derive(Debug, Serialize)]
pub struct AnnotationReport {
    pub annotation: String,
    pub support: Support,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub note: &'static str,
}

/// The Ingresses that carry ingress-nginx (or `vestibule.dev/`)
/// annotations, sorted by namespace/name.
pub fn report(snapshot: &Snapshot) -> Vec<IngressReport> {
    let mut out: Vec<IngressReport> = snapshot
        .ingresses
        .iter()
        .filter_map(|ing| {
            let annotations: Vec<AnnotationReport> = ing
                .metadata
                .annotations
                .iter()
                .flatten()
                .filter_map(|(key, _)| {
                    let (support, note) = classify(strip_prefix(key)?);
                    Some(AnnotationReport {
                        annotation: key.clone(),
                        support,
                        note,
                    })
                })
                .collect();
            (!annotations.is_empty()).then(|| IngressReport {
                ingress: format!(
                    "{}/{}",
                    ing.metadata.namespace.as_deref().unwrap_or("default"),
                    ing.metadata.name.as_deref().unwrap_or_default()
                ),
                annotations,
            })
        })
        .collect();
    out.sort_by(|a, b| a.ingress.cmp(&b.ingress));
    out
}

/// Whether every annotation of the report is supported as is.
pub fn all_supported(report: &[IngressReport]) -> bool {
    report
        .iter()
        .flat_map(|r| &r.annotations)
        .all(|a| a.support == Support::Supported)
}

/// The report as a table for people.
pub fn table(report: &[IngressReport]) -> String {
    let mut rows = vec![[
        "INGRESS".to_string(),
        "ANNOTATION".into(),
        "SUPPORT".into(),
        "NOTE".into(),
    ]];
    for r in report {
        for a in &r.annotations {
            let support = serde_json::to_value(a.support)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            rows.push([
                r.ingress.clone(),
                a.annotation.clone(),
                support,
                a.note.to_string(),
            ]);
        }
    }
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
    let widths = [width(0), width(1), width(2)];
    rows.iter()
        .map(|r| {
            format!(
                "{:w0$}  {:w1$}  {:w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
            .trim_end()
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
