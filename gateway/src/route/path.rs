//! The path matcher of one virtual host: Exact beats Prefix, longest Prefix
//! by path element wins (`/foo` matches `/foo`, `/foo/`, `/foo/bar`, never
//! `/foobar`); among the routes of one path, the first whose conditions
//! (method, headers, query) hold. When none holds, shorter prefixes are
//! tried, so a route's conditions never hide a less specific route.

use std::collections::HashMap;

use vestibule_config::model::{path_regex, Conditions, PathMatch};

use super::request::{Compiled, RequestView};

/// The routes of one path.
#[derive(Debug)]
enum Candidates<R> {
    /// One route with no condition (every Ingress and tenant route).
    One(R),
    /// Most specific first; the first whose conditions hold wins.
    Many(Vec<(Compiled, R)>),
}

impl<R> Candidates<R> {
    #[inline]
    fn pick<Q: RequestView + ?Sized>(&self, req: &Q) -> Option<&R> {
        match self {
            Candidates::One(r) => Some(r),
            Candidates::Many(v) => v.iter().find(|(c, _)| c.matches(req)).map(|(_, r)| r),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &R> {
        let (one, many) = match self {
            Candidates::One(r) => (Some(r), &[][..]),
            Candidates::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().map(|(_, r)| r))
    }

    fn len(&self) -> usize {
        match self {
            Candidates::One(_) => 1,
            Candidates::Many(v) => v.len(),
        }
    }
}

/// Routes of one path as collected: (conditions, their specificity, payload).
type Collected<'a, R> = Vec<(&'a Conditions, Compiled, R)>;

fn candidates<R>(mut routes: Collected<'_, R>) -> Candidates<R> {
    // Stable: routes of equal specificity keep the config's order.
    routes.sort_by_key(|(c, _, _)| c.precedence_key());
    if routes.len() == 1 && routes[0].1.is_empty() {
        if let Some((_, _, r)) = routes.pop() {
            return Candidates::One(r);
        }
    }
    Candidates::Many(routes.into_iter().map(|(_, c, r)| (c, r)).collect())
}

/// Up to this many entries a linear scan beats hashing the request path; most
/// vhosts have one or two routes.
const LINEAR_MAX: usize = 8;

#[derive(Debug)]
enum Entries<R> {
    /// Sorted so the first hit is the winner (longest prefix first).
    Linear(Vec<(Box<str>, Candidates<R>)>),
    Hashed(HashMap<Box<str>, Candidates<R>, ahash::RandomState>),
}

impl<R> Entries<R> {
    fn new(mut items: Vec<(Box<str>, Candidates<R>)>) -> Self {
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
            Entries::Linear(v) => v.iter().map(|(_, c)| c.len()).sum(),
            Entries::Hashed(m) => m.values().map(Candidates::len).sum(),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &R> + '_> {
        match self {
            Entries::Linear(v) => Box::new(v.iter().flat_map(|(_, c)| c.iter())),
            Entries::Hashed(m) => Box::new(m.values().flat_map(Candidates::iter)),
        }
    }
}

/// Exact, regular expression and prefix routes of one vhost.
#[derive(Debug)]
pub struct PathTable<R> {
    exact: Entries<R>,
    /// `use-regex` paths, longest pattern first: tried after Exact and
    /// before any Prefix, as nginx tries its regex locations.
    regex: Vec<(regex::Regex, Candidates<R>)>,
    prefix: Entries<R>,
}

impl<R> PathTable<R> {
    /// Builds the table. Routes of one path are tried most specific
    /// first, in the given order on ties; of two routes with the same path
    /// and conditions the first wins (the translator resolves conflicts
    /// before this, by age). A route whose conditions cannot be compiled
    /// is left out.
    pub fn build<'a>(routes: impl IntoIterator<Item = (&'a PathMatch, &'a Conditions, R)>) -> Self {
        let mut exact: Vec<(&str, Collected<'a, R>)> = Vec::new();
        let mut regex: Vec<(&str, Collected<'a, R>)> = Vec::new();
        let mut prefix: Vec<(&str, Collected<'a, R>)> = Vec::new();
        for (path, conditions, r) in routes {
            let Some(compiled) = Compiled::new(conditions) else {
                continue;
            };
            let (list, p) = match path {
                PathMatch::Exact(p) => (&mut exact, p.as_str()),
                PathMatch::Regex(p) => (&mut regex, p.as_str()),
                // Normalize here too: a hand-written config may say `/foo/`.
                PathMatch::Prefix(p) => (&mut prefix, normalize_prefix(p)),
            };
            let i = match list.iter().position(|(e, _)| *e == p) {
                Some(i) => i,
                None => {
                    list.push((p, Vec::new()));
                    list.len() - 1
                }
            };
            let routes = &mut list[i].1;
            if !routes.iter().any(|(c, _, _)| *c == conditions) {
                routes.push((conditions, compiled, r));
            }
        }
        let finish = |v: Vec<(&str, Collected<'a, R>)>| {
            v.into_iter()
                .map(|(p, routes)| (Box::from(p), candidates(routes)))
                .collect()
        };
        // A pattern that does not compile (only a hand-written config can
        // hold one: the translator checks them) is left out.
        let mut regex: Vec<(regex::Regex, Candidates<R>)> = regex
            .into_iter()
            .filter_map(|(p, routes)| Some((path_regex(p).ok()?, candidates(routes))))
            .collect();
        // Stable: equal lengths keep the config's (precedence) order.
        regex.sort_by_key(|(r, _)| std::cmp::Reverse(r.as_str().len()));
        PathTable {
            exact: Entries::new(finish(exact)),
            regex,
            prefix: Entries::new(finish(prefix)),
        }
    }

    pub fn len(&self) -> usize {
        self.exact.len()
            + self.regex.iter().map(|(_, c)| c.len()).sum::<usize>()
            + self.prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn routes(&self) -> impl Iterator<Item = &R> {
        self.exact
            .iter()
            .chain(self.regex.iter().flat_map(|(_, c)| c.iter()))
            .chain(self.prefix.iter())
    }

    /// The winning route for a request.
    #[inline]
    pub fn lookup<Q: RequestView + ?Sized>(&self, req: &Q) -> Option<&R> {
        let path = req.path();
        let exact = match &self.exact {
            Entries::Linear(v) => v.iter().find(|(p, _)| **p == *path).map(|(_, c)| c),
            Entries::Hashed(m) => m.get(path),
        };
        if let Some(r) = exact.and_then(|c| c.pick(req)) {
            return Some(r);
        }
        if let Some(r) = self
            .regex
            .iter()
            .filter(|(re, _)| re.is_match(path))
            .find_map(|(_, c)| c.pick(req))
        {
            return Some(r);
        }
        match &self.prefix {
            Entries::Linear(v) => v
                .iter()
                .filter(|(p, _)| prefix_matches(p, path))
                .find_map(|(_, c)| c.pick(req)),
            Entries::Hashed(m) => {
                // Probe each element boundary from longest to shortest: the
                // cost is the path depth, not the number of routes.
                let mut candidate = path.trim_end_matches('/');
                loop {
                    if candidate.is_empty() {
                        return m.get("/").and_then(|c| c.pick(req));
                    }
                    if let Some(r) = m.get(candidate).and_then(|c| c.pick(req)) {
                        return Some(r);
                    }
                    match candidate.rfind('/') {
                        Some(i) => candidate = candidate[..i].trim_end_matches('/'),
                        None => return m.get("/").and_then(|c| c.pick(req)),
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

    static NONE: Conditions = Conditions {
        method: None,
        headers: Vec::new(),
        query: Vec::new(),
        cookies: Vec::new(),
    };

    fn table(routes: &[PathMatch]) -> PathTable<usize> {
        PathTable::build(routes.iter().enumerate().map(|(i, p)| (p, &NONE, i)))
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
                let got = t.lookup(*path).map(|&i| padded[i].to_string());
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

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn conditions_pick_among_routes_of_a_path_and_fall_through_to_shorter_ones() {
        let when = |json: &str| -> Conditions { serde_json::from_str(json).unwrap() };
        let header = when(r#"{"headers": [{"name": "version", "value": "two"}]}"#);
        let two = when(
            r#"{"headers": [{"name": "version", "value": "two"}, {"name": "color", "value": "orange"}]}"#,
        );
        let post = when(r#"{"method": "POST"}"#);
        let api = PathMatch::prefix("/api");
        let root = PathMatch::prefix("/");
        // Given least specific first: the table orders them.
        let routes = [
            (&api, &header, "api-version"),
            (&api, &two, "api-version-color"),
            (&api, &post, "api-post"),
            (&root, &NONE, "root"),
        ];
        let t = PathTable::build(routes.iter().map(|(p, c, r)| (*p, *c, *r)));
        let hit = |req: &http::request::Parts| t.lookup(req).copied();
        assert_eq!(
            hit(&parts("GET", "/api/x", &[("version", "two")])),
            Some("api-version")
        );
        assert_eq!(
            hit(&parts(
                "GET",
                "/api",
                &[("version", "two"), ("color", "orange")]
            )),
            Some("api-version-color")
        );
        // A method beats any number of headers.
        assert_eq!(
            hit(&parts(
                "POST",
                "/api",
                &[("version", "two"), ("color", "orange")]
            )),
            Some("api-post")
        );
        // No condition of /api holds: the shorter prefix serves.
        assert_eq!(hit(&parts("GET", "/api/x", &[])), Some("root"));
        // Same with many routes (the hashed form).
        let mut padded: Vec<PathMatch> = (0..20)
            .map(|i| PathMatch::prefix(&format!("/pad{i}")))
            .collect();
        padded.push(api.clone());
        let mut all: Vec<(&PathMatch, &Conditions, &str)> =
            padded.iter().map(|p| (p, &NONE, "pad")).collect();
        all.truncate(20);
        all.extend(routes.iter().map(|(p, c, r)| (*p, *c, *r)));
        let t = PathTable::build(all);
        assert_eq!(
            t.lookup(&parts("GET", "/api/x", &[])).copied(),
            Some("root")
        );
        assert_eq!(
            t.lookup(&parts("GET", "/api/x", &[("version", "two")]))
                .copied(),
            Some("api-version")
        );
    }
}
