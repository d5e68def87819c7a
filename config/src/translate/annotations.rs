//! The ingress-nginx annotations an Ingress carries (`nginx.ingress.kubernetes.io/*`,
//! and the same names under `vestibule.dev/*`): the ones Vestibule reads,
//! checked; every other one named in a condition (never ignored in
//! silence); snippets refused, always: raw config injection is how
//! IngressNightmare (CVE-2025-1974) happened.

use std::collections::BTreeMap;

use super::{Condition, ConditionType, Reason};

const PREFIXES: [&str; 2] = ["nginx.ingress.kubernetes.io/", "vestibule.dev/"];

/// How Vestibule treats an ingress-nginx annotation (`vestibule-operator
/// migrate` reports it per Ingress).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Support {
    /// Behaves as ingress-nginx documents it.
    Supported,
    /// Served, with a difference the note says.
    Approximated,
    /// No effect (a condition and an Event say so).
    Unsupported,
    /// Never accepted: raw configuration (snippets).
    Refused,
}

/// The annotation's name without its prefix, if it is one of ours.
pub fn strip_prefix(key: &str) -> Option<&str> {
    PREFIXES.iter().find_map(|p| key.strip_prefix(p))
}

/// How `name` (without prefix) is treated, and a note for people.
pub fn classify(name: &str) -> (Support, &'static str) {
    if name.ends_with("snippet") || name.ends_with("snippets") {
        return (
            Support::Refused,
            "raw proxy configuration is never accepted (CVE-2025-1974)",
        );
    }
    match name {
        "canary" | "canary-weight" | "canary-weight-total" | "canary-by-header" => {
            (Support::Supported, "")
        }
        "canary-by-header-value" => (
            Support::Approximated,
            "an exact header value; canary-by-header-pattern is not supported",
        ),
        _ => (Support::Unsupported, "no effect yet"),
    }
}

/// What the annotations ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Annotations {
    /// `canary: "true"`: this Ingress is a share of another's routes.
    pub canary: Option<Canary>,
}

/// A canary's share of its primary's traffic.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Canary {
    /// Of every `total` requests, `weight` go to the canary.
    pub weight: u32,
    pub total: u32,
    /// `canary-by-header`: a request with this header set to `always` (or
    /// to `header_value`) goes to the canary, with `never` to the primary.
    pub header: Option<String>,
    pub header_value: Option<String>,
}

/// Reads the annotations of an Ingress; problems become conditions.
pub(crate) fn read(
    annotations: Option<&BTreeMap<String, String>>,
    conditions: &mut Vec<Condition>,
) -> Annotations {
    let mut known: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, value) in annotations.into_iter().flatten() {
        let Some(name) = strip_prefix(key) else {
            continue;
        };
        match classify(name).0 {
            Support::Refused => conditions.push(Condition::new(
                ConditionType::Accepted,
                false,
                Reason::SnippetRefused,
                format!("annotation {key}: snippets (raw proxy configuration) are refused, always; the rest of the Ingress is served"),
            )),
            Support::Supported | Support::Approximated => {
                known.insert(name, value.as_str());
            }
            Support::Unsupported => conditions.push(Condition::new(
                ConditionType::Accepted,
                false,
                Reason::UnsupportedAnnotation,
                format!("annotation {key} is not supported: it has no effect"),
            )),
        }
    }
    let mut invalid = |name: &str, value: &str, why: &str| {
        conditions.push(Condition::new(
            ConditionType::Accepted,
            false,
            Reason::InvalidAnnotation,
            format!("annotation {name}={value:?}: {why}"),
        ));
    };
    let canary = match known.get("canary").copied() {
        None | Some("false") => None,
        Some("true") => {
            let number =
                |name: &str, default: u32, invalid: &mut dyn FnMut(&str, &str, &str)| match known
                    .get(name)
                {
                    None => Some(default),
                    Some(v) => match v.trim().parse::<u32>() {
                        Ok(n) => Some(n),
                        Err(_) => {
                            invalid(name, v, "not a whole number");
                            None
                        }
                    },
                };
            let total = number("canary-weight-total", 100, &mut invalid).filter(|t| *t > 0);
            let weight = number("canary-weight", 0, &mut invalid);
            let header = known
                .get("canary-by-header")
                .filter(|h| is_token(h))
                .map(|h| h.to_ascii_lowercase());
            if let Some(h) = known.get("canary-by-header").filter(|h| !is_token(h)) {
                invalid("canary-by-header", h, "not a header name");
            }
            match (weight, total) {
                (Some(weight), Some(total)) => Some(Canary {
                    weight: weight.min(total),
                    total,
                    header,
                    header_value: known
                        .get("canary-by-header-value")
                        .map(|v| v.to_string())
                        .filter(|v| !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b))),
                }),
                // An unreadable weight: the canary takes no traffic (the
                // safe default), and says why.
                _ => Some(Canary {
                    weight: 0,
                    total: 100,
                    header,
                    header_value: None,
                }),
            }
        }
        Some(other) => {
            invalid("canary", other, "must be \"true\" or \"false\"");
            None
        }
    };
    Annotations { canary }
}

fn is_token(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 256
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> (Annotations, Vec<Condition>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut conditions = Vec::new();
        (read(Some(&map), &mut conditions), conditions)
    }

    #[test]
    fn canaries_are_read_snippets_refused_and_the_rest_named() {
        let (a, c) = annotations(&[
            ("nginx.ingress.kubernetes.io/canary", "true"),
            ("nginx.ingress.kubernetes.io/canary-weight", "20"),
            ("nginx.ingress.kubernetes.io/canary-by-header", "X-Canary"),
            (
                "nginx.ingress.kubernetes.io/configuration-snippet",
                "more_set_headers x;",
            ),
            ("nginx.ingress.kubernetes.io/proxy-body-size", "8m"),
            ("example.com/other", "ignored: not ours"),
        ]);
        assert_eq!(
            a.canary,
            Some(Canary {
                weight: 20,
                total: 100,
                header: Some("x-canary".into()),
                header_value: None
            })
        );
        let reasons: Vec<Reason> = c.iter().map(|c| c.reason).collect();
        assert_eq!(
            reasons,
            [Reason::SnippetRefused, Reason::UnsupportedAnnotation]
        );
        assert!(c[1].message.contains("proxy-body-size"));
        // A bad weight: a canary with no traffic, and a condition.
        let (a, c) = annotations(&[
            ("vestibule.dev/canary", "true"),
            ("vestibule.dev/canary-weight", "lots"),
        ]);
        assert_eq!(a.canary.map(|c| c.weight), Some(0));
        assert_eq!(c[0].reason, Reason::InvalidAnnotation);
        // Not a canary.
        let (a, c) = annotations(&[("nginx.ingress.kubernetes.io/canary", "false")]);
        assert!(a.canary.is_none() && c.is_empty());
    }
}
