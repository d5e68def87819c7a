//! Host precedence, in one place: a map from host patterns to values where
//! a request host finds its exact entry, else the `*.parent` entry when its
//! first label is one DNS label, else the `*` entry. The route table and the
//! certificate store both decide with it, so a host never gets one vhost's
//! routes and another's certificate.

use std::collections::HashMap;
use std::sync::Arc;

use vestibule_config::model::WildcardDepth;
use vestibule_config::HostPattern;

use super::host::wildcard_label;

/// Keys are shared, so a copy of a map to patch costs refcounts, not
/// allocations.
type Map<V> = HashMap<Arc<str>, V, ahash::RandomState>;

/// Values by host pattern; lookups never allocate.
#[derive(Clone, Debug)]
pub struct HostMap<T> {
    exact: Map<T>,
    /// Keyed by the suffix after the wildcard label (`*.a.com` -> `a.com`).
    wildcard: Map<T>,
    /// `*.suffix` patterns that match any number of labels (Gateway API),
    /// keyed the same way.
    deep: Map<T>,
    any: Option<T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap {
            exact: Map::default(),
            wildcard: Map::default(),
            deep: Map::default(),
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
    pub fn insert(&mut self, pattern: &HostPattern, depth: WildcardDepth, value: T) -> bool {
        let map = match pattern {
            HostPattern::Exact(h) => (&mut self.exact, h.as_str()),
            HostPattern::Wildcard(s) if self.wildcard.contains_key(s.as_str()) => return false,
            HostPattern::Wildcard(s) => match depth {
                WildcardDepth::OneLabel => (&mut self.wildcard, s.as_str()),
                WildcardDepth::AnyDepth => (&mut self.deep, s.as_str()),
            },
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

    /// The value stored for `pattern` itself (not a lookup).
    pub fn get_pattern(&self, pattern: &HostPattern) -> Option<&T> {
        match pattern {
            HostPattern::Exact(h) => self.exact.get(h.as_str()),
            HostPattern::Wildcard(s) => self
                .wildcard
                .get(s.as_str())
                .or_else(|| self.deep.get(s.as_str())),
            HostPattern::Any => self.any.as_ref(),
        }
    }

    /// Sets the value of `pattern`, replacing the one it had (whatever its
    /// depth).
    pub fn set(&mut self, pattern: &HostPattern, depth: WildcardDepth, value: T) {
        self.remove(pattern);
        self.insert(pattern, depth, value);
    }

    /// Removes `pattern`'s value, if any.
    pub fn remove(&mut self, pattern: &HostPattern) -> Option<T> {
        match pattern {
            HostPattern::Exact(h) => self.exact.remove(h.as_str()),
            HostPattern::Wildcard(s) => self
                .wildcard
                .remove(s.as_str())
                .or_else(|| self.deep.remove(s.as_str())),
            HostPattern::Any => self.any.take(),
        }
    }

    /// Every value, in no order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.deep.values())
            .chain(self.any.iter())
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len() + self.deep.len() + usize::from(self.any.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
                // Any-depth patterns (Gateway API) are probed after, nearest
                // suffix first.
                let (label, parent) = host.split_once('.')?;
                if !wildcard_label(label) {
                    return None;
                }
                self.wildcard.get(parent).or_else(|| self.deep_get(parent))
            })
            .or(self.any.as_ref())
    }

    /// The nearest any-depth wildcard over `parent` (the host minus its
    /// first label): one probe per label, only when such patterns exist.
    fn deep_get(&self, mut parent: &str) -> Option<&T> {
        if self.deep.is_empty() {
            return None;
        }
        loop {
            if let Some(v) = self.deep.get(parent) {
                return Some(v);
            }
            let (label, rest) = parent.split_once('.')?;
            if !wildcard_label(label) {
                return None;
            }
            parent = rest;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(patterns: &[&str]) -> HostMap<String> {
        let mut m = HostMap::default();
        for p in patterns {
            m.insert(
                &HostPattern::parse(p).unwrap(),
                WildcardDepth::OneLabel,
                p.to_string(),
            );
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
        let one = WildcardDepth::OneLabel;
        assert!(m.insert(&HostPattern::parse("a.test").unwrap(), one, 1));
        assert!(!m.insert(&HostPattern::parse("a.test").unwrap(), one, 2));
        assert!(m.insert(&HostPattern::Any, one, 3));
        assert!(!m.insert(&HostPattern::Any, one, 4));
        assert_eq!(m.get("a.test"), Some(&1));
        assert_eq!(m.get("b.test"), Some(&3));
    }

    #[test]
    fn set_replaces_and_remove_forgets_whatever_the_depth() {
        let mut m = HostMap::default();
        let p = |s: &str| HostPattern::parse(s).unwrap();
        m.insert(&p("*.a.test"), WildcardDepth::OneLabel, 1);
        m.set(&p("*.a.test"), WildcardDepth::AnyDepth, 2);
        assert_eq!(m.get("x.y.a.test"), Some(&2));
        assert_eq!(m.len(), 1);
        m.set(&p("b.test"), WildcardDepth::OneLabel, 3);
        m.set(&p("b.test"), WildcardDepth::OneLabel, 4);
        assert_eq!(m.get("b.test"), Some(&4));
        assert_eq!(m.remove(&p("*.a.test")), Some(2));
        assert_eq!(m.get("x.a.test"), None);
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn any_depth_wildcards_match_deeper_names_and_nearer_patterns_win() {
        let mut m = HostMap::default();
        let p = |s: &str| HostPattern::parse(s).unwrap();
        m.insert(&p("*.bar.com"), WildcardDepth::AnyDepth, "deep bar");
        m.insert(&p("*.x.bar.com"), WildcardDepth::OneLabel, "one x");
        m.insert(&p("foo.bar.com"), WildcardDepth::OneLabel, "foo");
        assert_eq!(m.get("baz.bar.com"), Some(&"deep bar"));
        assert_eq!(m.get("multiple.prefixes.bar.com"), Some(&"deep bar"));
        assert_eq!(m.get("a.x.bar.com"), Some(&"one x"));
        // The one-label pattern is nearer; deeper names fall to the deep one.
        assert_eq!(m.get("b.a.x.bar.com"), Some(&"deep bar"));
        assert_eq!(m.get("foo.bar.com"), Some(&"foo"));
        assert_eq!(m.get("bar.com"), None);
        assert_eq!(m.get("a.b.baz.com"), None);
        // A one-label and a deep pattern of the same suffix: the first wins.
        assert!(!m.insert(&p("*.x.bar.com"), WildcardDepth::AnyDepth, "dup"));
    }
}
