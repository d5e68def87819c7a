//! Host precedence, in one place: a map from host patterns to values where
//! a request host finds its exact entry, else the `*.parent` entry when its
//! first label is one DNS label, else the `*` entry. The route table and the
//! certificate store both decide with it, so a host never gets one vhost's
//! routes and another's certificate.

use std::collections::HashMap;

use vestibule_config::HostPattern;

use super::host::wildcard_label;

type Map<V> = HashMap<Box<str>, V, ahash::RandomState>;

/// Values by host pattern; lookups never allocate.
#[derive(Debug)]
pub struct HostMap<T> {
    exact: Map<T>,
    /// Keyed by the suffix after the wildcard label (`*.a.com` -> `a.com`).
    wildcard: Map<T>,
    any: Option<T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap {
            exact: Map::default(),
            wildcard: Map::default(),
            any: None,
        }
    }
}

impl<T> HostMap<T> {
    pub fn with_capacity(exact: usize) -> Self {
        HostMap {
            exact: Map::with_capacity_and_hasher(exact, Default::default()),
            ..Default::default()
        }
    }

    /// Adds `value` for `pattern` unless the pattern has one: the first
    /// wins. False when it was already there.
    pub fn insert(&mut self, pattern: &HostPattern, value: T) -> bool {
        let map = match pattern {
            HostPattern::Exact(h) => (&mut self.exact, h.as_str()),
            HostPattern::Wildcard(s) => (&mut self.wildcard, s.as_str()),
            HostPattern::Any => {
                if self.any.is_some() {
                    return false;
                }
                self.any = Some(value);
                return true;
            }
        };
        let (map, key) = map;
        if map.contains_key(key) {
            return false;
        }
        map.insert(key.into(), value);
        true
    }

    /// The value of the most specific pattern matching a normalized host
    /// (see [`super::normalize_host`]).
    #[inline]
    pub fn get(&self, host: &str) -> Option<&T> {
        self.exact
            .get(host)
            .or_else(|| {
                // One extra label only, and a DNS label: `a.b.c` looks up
                // `b.c`, so `*.b.c` never matches `x.a.b.c` or `-.b.c`.
                let (label, parent) = host.split_once('.')?;
                wildcard_label(label)
                    .then(|| self.wildcard.get(parent))
                    .flatten()
            })
            .or(self.any.as_ref())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(patterns: &[&str]) -> HostMap<String> {
        let mut m = HostMap::default();
        for p in patterns {
            m.insert(&HostPattern::parse(p).unwrap(), p.to_string());
        }
        m
    }

    #[test]
    fn exact_then_one_label_wildcard_then_any() {
        let m = map(&["a.x.test", "*.x.test", "*"]);
        assert_eq!(m.get("a.x.test").unwrap(), "a.x.test");
        assert_eq!(m.get("b.x.test").unwrap(), "*.x.test");
        assert_eq!(m.get("b.a.x.test").unwrap(), "*");
        assert_eq!(m.get("x.test").unwrap(), "*");
        for not_a_label in ["-.x.test", "_b.x.test", "b-.x.test"] {
            assert_eq!(m.get(not_a_label).unwrap(), "*", "{not_a_label}");
        }
        assert!(map(&["a.x.test"]).get("b.x.test").is_none());
    }

    #[test]
    fn first_of_a_pattern_wins() {
        let mut m = HostMap::default();
        assert!(m.insert(&HostPattern::parse("a.test").unwrap(), 1));
        assert!(!m.insert(&HostPattern::parse("a.test").unwrap(), 2));
        assert!(m.insert(&HostPattern::Any, 3));
        assert!(!m.insert(&HostPattern::Any, 4));
        assert_eq!(m.get("a.test"), Some(&1));
        assert_eq!(m.get("b.test"), Some(&3));
    }
}
