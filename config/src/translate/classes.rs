//! Which Ingresses are ours: IngressClasses whose `spec.controller` is ours
//! (narrowed to one class name when the options say so), then each Ingress
//! by `spec.ingressClassName`, the legacy annotation, or the default class.

use super::*;

const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The names of our IngressClasses, and whether one of them is the
/// cluster's default class.
pub(super) fn ours<'a>(snapshot: &'a Snapshot, options: &Options) -> (BTreeSet<&'a str>, bool) {
    let classes: Vec<&IngressClass> = by_age(&snapshot.ingress_classes, |c| &c.metadata)
        .into_iter()
        .filter(|c| {
            c.spec.as_ref().and_then(|s| s.controller.as_deref())
                == Some(options.controller.as_str())
        })
        .filter(|c| {
            options
                .ingress_class
                .as_deref()
                .is_none_or(|only| c.metadata.name.as_deref() == Some(only))
        })
        .collect();
    let default_is_ours = classes.iter().any(|c| {
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .is_some_and(|v| v == "true")
    });
    let names = classes
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    (names, default_is_ours)
}

impl<'a> Translator<'a> {
    /// `spec.ingressClassName` first, then the legacy annotation, then the
    /// default class.
    pub(super) fn is_ours(&self, ingress: &Ingress) -> bool {
        let class = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        let legacy = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .map(String::as_str);
        match class.or(legacy) {
            Some(name) => self.our_classes.contains(name),
            None => self.default_class_is_ours,
        }
    }
}
