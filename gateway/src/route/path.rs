//! The path matcher of one virtual host: Exact beats Prefix, longest Prefix
//! by path element wins (`/foo` matches `/foo`, `/foo/`, `/foo/bar`, never
//! `/foobar`).

use std::collections::HashMap;

use vestibule_config::model::PathMatch;

/// Up to this many entries a linear scan beats hashing the request path; most
/// vhosts have one or two routes.
const LINEAR_MAX: usize = 8;

#[derive(Debug)]
enum Entries<R> {
    /// Sorted so the first hit is the winner (longest prefix first).
    Linear(Vec<(Box<str>, R)>),
    Hashed(HashMap<Box<str>, R, ahash::RandomState>),
}

impl<R> Entries<R> {
    fn new(mut items: Vec<(Box<str>, R)>) -> Self {
        if items.len() <= LINEAR_MAX {
            items.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            Entries::Linear(items)
        } else {
            let mut map = HashMap::with_capacity_and_hasher(items.len(), Default::default());
            for (p, r) in items {
                map.entry(p).or_insert(r);
            }
            Entries::Hashed(map)
        }
    }

    fn len(&self) -> usize {
        match self {
            Entries::Linear(v) => v.len(),
            Entries::Hashed(m) => m.len(),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &R> + '_> {
        match self {
            Entries::Linear(v) => Box::new(v.iter().map(|(_, r)| r)),
            Entries::Hashed(m) => Box::new(m.values()),
        }
    }
}

/// Exact and prefix routes of one vhost.
#[derive(Debug)]
pub struct PathTable<R> {
    exact: Entries<R>,
    prefix: Entries<R>,
}

impl<R> PathTable<R> {
    /// Builds the table; on duplicate paths of the same kind the first wins
    /// (the translator resolves conflicts before this, by age).
    pub fn build<'a>(routes: impl IntoIterator<Item = (&'a PathMatch, R)>) -> Self {
        let mut exact: Vec<(Box<str>, R)> = Vec::new();
        let mut prefix: Vec<(Box<str>, R)> = Vec::new();
        for (path, r) in routes {
            match path {
                PathMatch::Exact(p) => {
                    if !exact.iter().any(|(e, _)| **e == **p) {
                        exact.push((p.as_str().into(), r));
                    }
                }
                PathMatch::Prefix(p) => {
                    // Normalize here too: a hand-written config may say `/foo/`.
                    let p = normalize_prefix(p);
                    if !prefix.iter().any(|(e, _)| **e == *p) {
                        prefix.push((p.into(), r));
                    }
                }
            }
        }
        PathTable {
            exact: Entries::new(exact),
            prefix: Entries::new(prefix),
        }
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn routes(&self) -> impl Iterator<Item = &R> {
        self.exact.iter().chain(self.prefix.iter())
    }

    /// The winning route for a request path (query removed).
    #[inline]
    pub fn lookup(&self, path: &str) -> Option<&R> {
        let exact = match &self.exact {
            Entries::Linear(v) => v.iter().find(|(p, _)| **p == *path).map(|(_, r)| r),
            Entries::Hashed(m) => m.get(path),
        };
        if exact.is_some() {
            return exact;
        }
        match &self.prefix {
            Entries::Linear(v) => v
                .iter()
                .find(|(p, _)| prefix_matches(p, path))
                .map(|(_, r)| r),
            Entries::Hashed(m) => {
                // Probe each element boundary from longest to shortest: the
                // cost is the path depth, not the number of routes.
                let mut candidate = path.trim_end_matches('/');
                loop {
                    if candidate.is_empty() {
                        return m.get("/");
                    }
                    if let Some(r) = m.get(candidate) {
                        return Some(r);
                    }
                    match candidate.rfind('/') {
                        Some(i) => candidate = candidate[..i].trim_end_matches('/'),
                        None => return m.get("/"),
                    }
                }
            }
        }
    }
}

fn normalize_prefix(p: &str) -> &str {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        "/"
    } else {
        trimmed
    }
}

#[inline]
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table(routes: &[PathMatch]) -> PathTable<usize> {
        PathTable::build(routes.iter().enumerate().map(|(i, p)| (p, i)))
    }

    fn exact(p: &str) -> PathMatch {
        PathMatch::Exact(p.into())
    }

    /// Runs the same expectations against the linear and the hashed forms.
    fn both(routes: Vec<PathMatch>, cases: &[(&str, Option<&str>)]) {
        let mut padded = routes.clone();
        for i in 0..20 {
            padded.push(PathMatch::prefix(&format!("/zz-padding-{i}")));
            padded.push(exact(&format!("/zz-exact-{i}")));
        }
        for (label, t) in [("linear", table(&routes)), ("hashed", table(&padded))] {
            for (path, want) in cases {
                let got = t.lookup(path).map(|&i| padded[i].to_string());
                assert_eq!(
                    got.as_deref(),
                    *want,
                    "{label}: path {path:?} with routes {routes:?}"
                );
            }
        }
    }

    #[test]
    fn prefix_matches_by_path_element() {
        both(
            vec![PathMatch::prefix("/foo")],
            &[
                ("/foo", Some("Prefix /foo")),
                ("/foo/", Some("Prefix /foo")),
                ("/foo/bar", Some("Prefix /foo")),
                ("/foo//bar", Some("Prefix /foo")),
                ("/foobar", None),
                ("/fo", None),
                ("/", None),
            ],
        );
    }

    #[test]
    fn root_prefix_matches_everything() {
        both(
            vec![PathMatch::prefix("/")],
            &[
                ("/", Some("Prefix /")),
                ("/anything/at/all", Some("Prefix /")),
            ],
        );
    }

    #[test]
    fn longest_prefix_wins() {
        both(
            vec![
                PathMatch::prefix("/"),
                PathMatch::prefix("/a"),
                PathMatch::prefix("/a/b"),
            ],
            &[
                ("/a/b/c", Some("Prefix /a/b")),
                ("/a/b", Some("Prefix /a/b")),
                ("/a/bc", Some("Prefix /a")),
                ("/a", Some("Prefix /a")),
                ("/ab", Some("Prefix /")),
                ("/", Some("Prefix /")),
            ],
        );
    }

    #[test]
    fn exact_beats_prefix_of_the_same_path() {
        both(
            vec![PathMatch::prefix("/foo"), exact("/foo")],
            &[
                ("/foo", Some("Exact /foo")),
                ("/foo/", Some("Prefix /foo")),
                ("/foo/x", Some("Prefix /foo")),
            ],
        );
    }

    #[test]
    fn exact_matches_only_the_whole_path() {
        both(
            vec![exact("/foo")],
            &[
                ("/foo", Some("Exact /foo")),
                ("/foo/", None),
                ("/foo/x", None),
            ],
        );
    }

    #[test]
    fn trailing_slash_prefix_is_normalized() {
        let t = table(&[PathMatch::Prefix("/foo/".into())]);
        assert_eq!(t.lookup("/foo"), Some(&0));
        assert_eq!(t.lookup("/foo/bar"), Some(&0));
        assert_eq!(t.lookup("/foobar"), None);
    }

    #[test]
    fn duplicates_keep_the_first() {
        let t = table(&[
            exact("/a"),
            exact("/a"),
            PathMatch::prefix("/b"),
            PathMatch::prefix("/b/"),
        ]);
        assert_eq!(t.lookup("/a"), Some(&0));
        assert_eq!(t.lookup("/b"), Some(&2));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn agrees_with_the_model_matcher() {
        // The model's PathMatch::matches is the reference semantics.
        let routes = vec![
            PathMatch::prefix("/a"),
            PathMatch::prefix("/a/b"),
            exact("/a/b/c"),
            PathMatch::prefix("/x/y"),
        ];
        let t = table(&routes);
        for path in [
            "/", "/a", "/a/", "/ab", "/a/b", "/a/b/", "/a/b/c", "/a/b/c/", "/x", "/x/y/z",
        ] {
            let want = routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.matches(path))
                .min_by_key(|(_, r)| r.precedence_key())
                .map(|(i, _)| i);
            assert_eq!(t.lookup(path).copied(), want, "path {path}");
        }
    }
}
