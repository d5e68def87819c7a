//! Label selectors of Gateway listeners' `allowedRoutes.namespaces`
//! (`from: Selector`), evaluated against a namespace's labels as the API
//! server does: every `matchLabels` pair and every expression must hold.

use std::collections::BTreeMap;

use crate::gateway_api::gateways::GatewayListenersAllowedRoutesNamespacesSelector as Raw;

/// The label every namespace carries with its own name.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A checked selector.
#[derive(Clone, Debug)]
pub struct Selector {
    labels: BTreeMap<String, String>,
    expressions: Vec<Expression>,
}

#[derive(Clone, Debug)]
enum Expression {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// `Err` names what is not a valid selector (an unknown operator, or
    /// values where the operator takes none).
    pub fn new(raw: &Raw) -> Result<Self, String> {
        let mut expressions = Vec::new();
        for e in raw.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            expressions.push(match (e.operator.as_str(), values.is_empty()) {
                ("In", false) => Expression::In(key, values),
                ("NotIn", false) => Expression::NotIn(key, values),
                ("Exists", true) => Expression::Exists(key),
                ("DoesNotExist", true) => Expression::DoesNotExist(key),
                (op, _) => {
                    return Err(format!(
                        "matchExpressions: {op:?} with values {values:?} on {key:?}"
                    ))
                }
            });
        }
        Ok(Selector {
            labels: raw.match_labels.clone().unwrap_or_default(),
            expressions,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Expression::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn selector(json: &str) -> Result<Selector, String> {
        Selector::new(&serde_json::from_str(json).unwrap())
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        let s = selector(
            r#"{"matchLabels": {"env": "prod"}, "matchExpressions": [
                {"key": "team", "operator": "In", "values": ["a", "b"]},
                {"key": "legacy", "operator": "DoesNotExist"}]}"#,
        )
        .unwrap();
        assert!(s.matches(&labels(&[("env", "prod"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("team", "c")])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("team", "a"), ("legacy", "")])));
        let s = selector(r#"{"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["1"]}, {"key": "y", "operator": "Exists"}]}"#).unwrap();
        assert!(s.matches(&labels(&[("y", "")])));
        assert!(!s.matches(&labels(&[("x", "1"), ("y", "")])));
        // An empty selector selects every namespace.
        assert!(selector("{}").unwrap().matches(&labels(&[])));
        assert!(selector(r#"{"matchExpressions": [{"key": "x", "operator": "Near"}]}"#).is_err());
        assert!(selector(r#"{"matchExpressions": [{"key": "x", "operator": "In"}]}"#).is_err());
    }
}
