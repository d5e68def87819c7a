//! A route's action and filters compiled for the request path: proxy to a
//! pool (with the 500 share of unresolvable backends), redirect, header
//! edits on the request and the response, URL rewrites, mirrors.
//!
//! Compiled once per config; applying them only inserts precomputed
//! header values. The tenant and forwarding headers are set after the
//! request edits, so a route can never forge them.

use crate::auth::AuthCheck;
use crate::cors::CorsPolicy;
use crate::edge::headers::{folded_eq, remove_where};
use crate::ratelimit::per_client::{
    ClientConcurrencyLimiter, ClientRateLimiter, ClientSlot, PerClientLimiters,
};
use crate::sticky::StickyCookie;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use vestibule_config::model::{
    self, Backend, Filter, HeaderEdits, PathMatch, PathRewrite, Redirect, Route,
};

use crate::upstream::UpstreamPool;

// === impl Action ===

/// What answers a route's requests.
pub enum Action {
    Proxy(Arc<UpstreamPool>),
    /// Of every `total` requests, `total - weight` answer 500 (the share of
    /// unresolvable backends), spread evenly by a turn counter.
    Split {
        pool: Arc<UpstreamPool>,
        weight: u32,
        total: u32,
        turn: AtomicU32,
    },
    /// Every request answers 500.
    Unresolved,
    Redirect(RedirectTo),
}

/// The outcome of an [`Action`] for one request.
pub enum Choice<'a> {
    Proxy(&'a Arc<UpstreamPool>),
    Fail,
    Redirect(&'a RedirectTo),
}

impl Action {
    /// The pool it proxies to, if any.
    pub fn pool(&self) -> Option<&Arc<UpstreamPool>> {
        match self {
            Action::Proxy(p) | Action::Split { pool: p, .. } => Some(p),
            Action::Unresolved | Action::Redirect(_) => None,
        }
    }

    /// `pool` resolves a pool id of the config.
    pub fn new(
        route: &Route,
        backend: &Backend,
        pool: impl Fn(&model::PoolId) -> Arc<UpstreamPool>,
    ) -> Self {
        match backend {
            Backend::Pool(id) => Action::Proxy(pool(id)),
            Backend::Split {
                pool: id,
                weight,
                unresolved,
            } => Action::Split {
                pool: pool(id),
                weight: *weight,
                total: weight.saturating_add(*unresolved).max(1),
                turn: AtomicU32::new(0),
            },
            Backend::Unresolved => Action::Unresolved,
            Backend::Redirect(r) => Action::Redirect(RedirectTo::new(r, &route.path)),
        }
    }

    #[inline]
    pub fn choose(&self) -> Choice<'_> {
        match self {
            Action::Proxy(pool) => Choice::Proxy(pool),
            Action::Split {
                pool,
                weight,
                total,
                turn,
            } => {
                let n = turn.fetch_add(1, Ordering::Relaxed) % total;
                if n < *weight {
                    Choice::Proxy(pool)
                } else {
                    Choice::Fail
                }
            }
            Action::Unresolved => Choice::Fail,
            Action::Redirect(r) => Choice::Redirect(r),
        }
    }
}

// === impl RedirectTo ===

/// A redirect, ready to build its `Location`.
pub struct RedirectTo {
    pub status: u16,
    scheme: Option<model::Scheme>,
    hostname: Option<Box<str>>,
    port: Option<u16>,
    path: Option<NewPath>,
}

impl RedirectTo {
    fn new(r: &Redirect, matched: &PathMatch) -> Self {
        RedirectTo {
            status: r.status.code(),
            scheme: r.scheme,
            hostname: r.hostname.as_ref().map(|h| h.as_str().into()),
            port: r.port,
            path: r.path.as_ref().map(|p| NewPath::new(p, matched)),
        }
    }

    /// The `Location` for a request to `host` (normalized, no port) whose
    /// authority named `port`, received over TLS or not. Unset parts keep
    /// the request's; the port is left out when it is the scheme's own.
    pub fn location(
        &self,
        req: &RequestHeader,
        host: &str,
        port: Option<u16>,
        tls: bool,
    ) -> Option<HeaderValue> {
        let scheme = self.scheme.unwrap_or(if tls {
            model::Scheme::Https
        } else {
            model::Scheme::Http
        });
        // A new scheme without a port goes to that scheme's port; otherwise
        // the port the client used.
        let port = match (self.port, self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => port,
        }
        .filter(|p| *p != scheme.default_port());
        let host = self.hostname.as_deref().unwrap_or(host);
        let path = req.uri.path();
        let mut out = String::with_capacity(64 + path.len());
        out.push_str(scheme.as_str());
        out.push_str("://");
        out.push_str(host);
        if let Some(p) = port {
            out.push(':');
            out.push_str(&p.to_string());
        }
        match &self.path {
            Some(p) => p.apply(path, &mut out),
            None => out.push_str(path),
        }
        if let Some(q) = req.uri.query() {
            out.push('?');
            out.push_str(q);
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// A path replacement, with the route's matched prefix or expression.
enum NewPath {
    Full(Box<str>),
    Prefix {
        matched: Box<str>,
        with: Box<str>,
    },
    /// `rewrite-target`: `with` expanded from the captures of `regex`
    /// (`$1` written as `${1}`, so a letter after it is not read as part of
    /// a group name, as nginx reads it).
    Captures {
        regex: regex::Regex,
        with: Box<str>,
    },
}

impl NewPath {
    fn new(p: &PathRewrite, matched: &PathMatch) -> Self {
        match p {
            PathRewrite::Full(f) => NewPath::Full(f.as_str().into()),
            PathRewrite::Prefix(with) => NewPath::Prefix {
                matched: matched.as_str().into(),
                with: with.as_str().into(),
            },
            PathRewrite::Captures(with) => match matched {
                PathMatch::Regex(p) => match model::path_regex(p) {
                    Ok(regex) => NewPath::Captures {
                        regex,
                        with: nginx_groups(with).into(),
                    },
                    Err(_) => NewPath::Full(with.as_str().into()),
                },
                PathMatch::Exact(_) | PathMatch::Prefix(_) => NewPath::Full(with.as_str().into()),
            },
        }
    }

    /// Appends the new path for `path` to `out`. `/foo` replaced by `/xyz`:
    /// `/foo/bar` -> `/xyz/bar`, `/foo` -> `/xyz`; by `/`: `/foo/bar` ->
    /// `/bar`, `/foo` -> `/`.
    fn apply(&self, path: &str, out: &mut String) {
        match self {
            NewPath::Full(f) => out.push_str(f),
            NewPath::Prefix { matched, with } => {
                let matched = matched.trim_end_matches('/');
                let rest = path.get(matched.len()..).unwrap_or("");
                let base = with.trim_end_matches('/');
                let start = out.len();
                out.push_str(base);
                out.push_str(rest);
                if out.len() == start {
                    out.push('/');
                }
            }
            NewPath::Captures { regex, with } => match regex.captures(path) {
                Some(caps) => {
                    let start = out.len();
                    caps.expand(with, out);
                    if out.len() == start {
                        out.push('/');
                    }
                }
                None => out.push_str(path),
            },
        }
    }
}

/// nginx's `$1`..`$9` as the regex crate's `${1}`..`${9}`; other `$` as
/// a literal `$$`.
fn nginx_groups(with: &str) -> String {
    let mut out = String::with_capacity(with.len() + 8);
    let mut chars = with.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('$', Some(d)) if d.is_ascii_digit() => {
                out.push_str("${");
                out.push(*d);
                out.push('}');
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            (c, _) => out.push(c),
        }
    }
    out
}

// === impl Filters ===

/// A route's filters in the order the config gives them.
#[derive(Default)]
pub struct Filters(Box<[Compiled]>);

enum Compiled {
    Request(Edits),
    Response(Edits),
    Rewrite {
        host: Option<HeaderValue>,
        path: Option<NewPath>,
    },
    Mirror(Arc<UpstreamPool>),
    MaxBody(u64),
    Networks(model::ClientNetworks),
    Cors(Box<CorsPolicy>),
    Auth(Box<AuthCheck>),
    ClientRate(Arc<ClientRateLimiter>),
    ClientConcurrency(Arc<ClientConcurrencyLimiter>),
    Sticky(Box<StickyCookie>),
}

/// Header edits with names and values parsed once.
struct Edits {
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
    remove: Box<[HeaderName]>,
}

impl Edits {
    fn new(e: &HeaderEdits) -> Self {
        let pairs = |v: &[model::Header]| {
            v.iter()
                .filter_map(|h| {
                    Some((
                        HeaderName::from_bytes(h.name.as_str().as_bytes()).ok()?,
                        HeaderValue::from_str(h.value.as_str()).ok()?,
                    ))
                })
                .collect()
        };
        Edits {
            set: pairs(&e.set),
            add: pairs(&e.add),
            remove: e
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_str().as_bytes()).ok())
                .collect(),
        }
    }
}

/// Header edits on a request or a response head, whichever it is.
trait Head {
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    fn add(&mut self, name: HeaderName, value: HeaderValue);
    fn remove(&mut self, name: &HeaderName);
}

/// Pingora's request and response heads have the same header methods.
macro_rules! impl_head {
    ($($t:ty),*) => {$(
        impl Head for $t {
            fn set(&mut self, name: HeaderName, value: HeaderValue) {
                let _ = self.insert_header(name, value);
            }
            fn add(&mut self, name: HeaderName, value: HeaderValue) {
                let _ = self.append_header(name, value);
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    )*};
}

impl_head!(RequestHeader, ResponseHeader);

impl Edits {
    fn apply(&self, head: &mut impl Head) {
        for (n, v) in self.set.iter() {
            head.set(n.clone(), v.clone());
        }
        for (n, v) in self.add.iter() {
            head.add(n.clone(), v.clone());
        }
        for n in self.remove.iter() {
            head.remove(n);
        }
    }
}

impl Filters {
    pub fn new(
        route: &Route,
        pool: impl Fn(&model::PoolId) -> Arc<UpstreamPool>,
        limiters: &PerClientLimiters,
    ) -> Self {
        Filters(
            route
                .filters
                .iter()
                .map(|f| match f {
                    Filter::RequestHeaders(e) => Compiled::Request(Edits::new(e)),
                    Filter::ResponseHeaders(e) => Compiled::Response(Edits::new(e)),
                    Filter::Rewrite(r) => Compiled::Rewrite {
                        host: r
                            .hostname
                            .as_ref()
                            .and_then(|h| HeaderValue::from_str(h.as_str()).ok()),
                        path: r.path.as_ref().map(|p| NewPath::new(p, &route.path)),
                    },
                    Filter::Mirror(id) => Compiled::Mirror(pool(id)),
                    Filter::MaxBody(n) => Compiled::MaxBody(*n),
                    Filter::ClientNetworks(n) => Compiled::Networks(n.clone()),
                    // A policy whose values can't be headers (the IR's
                    // checks make that unlikely) marks no response.
                    Filter::Cors(c) => match CorsPolicy::new(c) {
                        Some(policy) => Compiled::Cors(Box::new(policy)),
                        None => Compiled::Networks(model::ClientNetworks::default()),
                    },
                    Filter::ExternalAuth(a) => Compiled::Auth(Box::new(AuthCheck::new(a))),
                    Filter::ClientRate(r) => Compiled::ClientRate(limiters.rate(&route.name, r)),
                    Filter::ClientConcurrency(c) => {
                        Compiled::ClientConcurrency(limiters.concurrency(&route.name, c))
                    }
                    Filter::Affinity(a) => Compiled::Sticky(Box::new(StickyCookie::new(a))),
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Request header edits and rewrites, on the upstream request.
    pub fn on_request(&self, req: &mut RequestHeader) {
        for f in self.0.iter() {
            match f {
                Compiled::Request(e) => e.apply(req),
                Compiled::Rewrite { host, path } => {
                    if let Some(h) = host {
                        let _ = req.insert_header(http::header::HOST, h.clone());
                    }
                    if let Some(p) = path {
                        let mut new = String::with_capacity(req.uri.path().len() + 16);
                        p.apply(req.uri.path(), &mut new);
                        if let Some(q) = req.uri.query() {
                            new.push('?');
                            new.push_str(q);
                        }
                        if let Ok(uri) = http::Uri::try_from(new) {
                            req.set_uri(uri);
                        }
                    }
                }
                // What the client sent under the names the auth service
                // answers with is never passed on (the service's values
                // are set after the filters).
                Compiled::Auth(a) if !a.copied().is_empty() => {
                    // In every spelling a backend could fold into them.
                    remove_where(req, |n| a.copied().iter().any(|c| folded_eq(c.as_str(), n)));
                }
                Compiled::Response(_)
                | Compiled::Mirror(_)
                | Compiled::MaxBody(_)
                | Compiled::Networks(_)
                | Compiled::Cors(_)
                | Compiled::Auth(_)
                | Compiled::ClientRate(_)
                | Compiled::ClientConcurrency(_)
                | Compiled::Sticky(_) => {}
            }
        }
    }

    /// Response header edits.
    pub fn on_response(&self, resp: &mut ResponseHeader) {
        for f in self.0.iter() {
            if let Compiled::Response(e) = f {
                e.apply(resp);
            }
        }
    }

    /// Whether a client at `client` may use the route (an unknown address
    /// never passes a network rule).
    pub fn admits(&self, client: Option<std::net::IpAddr>) -> bool {
        self.0.iter().all(|f| match f {
            Compiled::Networks(n) => client.is_some_and(|ip| n.admits(ip)),
            _ => true,
        })
    }

    /// The largest request body the route takes.
    pub fn max_body(&self) -> Option<u64> {
        self.0.iter().find_map(|f| match f {
            Compiled::MaxBody(n) => Some(*n),
            _ => None,
        })
    }

    /// Applies the route's per-client limits to a request from `ip`: the
    /// slot it holds while in flight, or how long until it may come back.
    pub fn per_client(&self, ip: std::net::IpAddr) -> Result<Option<ClientSlot>, Duration> {
        let mut slot = None;
        for f in self.0.iter() {
            match f {
                Compiled::ClientRate(l) => l.check(ip)?,
                Compiled::ClientConcurrency(l) => {
                    slot = Some(l.acquire(ip).ok_or(Duration::from_secs(1))?);
                }
                _ => {}
            }
        }
        Ok(slot)
    }

    /// The route's affinity cookie, if it has one.
    pub fn sticky(&self) -> Option<&StickyCookie> {
        self.0.iter().find_map(|f| match f {
            Compiled::Sticky(s) => Some(&**s),
            _ => None,
        })
    }

    /// The route's external auth check, if it has one.
    pub fn auth(&self) -> Option<&AuthCheck> {
        self.0.iter().find_map(|f| match f {
            Compiled::Auth(a) => Some(&**a),
            _ => None,
        })
    }

    /// The route's CORS policy, if it has one.
    pub fn cors(&self) -> Option<&CorsPolicy> {
        self.0.iter().find_map(|f| match f {
            Compiled::Cors(c) => Some(&**c),
            _ => None,
        })
    }

    /// The pools that get a copy of each request.
    pub fn mirrors(&self) -> impl Iterator<Item = &Arc<UpstreamPool>> {
        self.0.iter().filter_map(|f| match f {
            Compiled::Mirror(p) => Some(p),
            _ => None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rewritten(matched: &str, with: &str, path: &str) -> String {
        let p = NewPath::new(
            &PathRewrite::Prefix(with.into()),
            &PathMatch::prefix(matched),
        );
        let mut out = String::new();
        p.apply(path, &mut out);
        out
    }

    #[test]
    fn replace_prefix_match_keeps_the_rest_of_the_path() {
        assert_eq!(
            rewritten("/prefix/one", "/one", "/prefix/one/two"),
            "/one/two"
        );
        assert_eq!(rewritten("/prefix/one", "/one", "/prefix/one"), "/one");
        assert_eq!(
            rewritten("/strip-prefix", "/", "/strip-prefix/three"),
            "/three"
        );
        assert_eq!(rewritten("/strip-prefix", "/", "/strip-prefix"), "/");
        assert_eq!(rewritten("/foo", "/xyz/", "/foo/"), "/xyz/");
        assert_eq!(rewritten("/", "/new", "/a/b"), "/new/a/b");
    }

    fn redirect(json: &str, uri: &str, port: Option<u16>, tls: bool) -> String {
        let r: Redirect = serde_json::from_str(json).unwrap();
        let to = RedirectTo::new(&r, &PathMatch::prefix("/old"));
        let req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        let v = to.location(&req, "example.org", port, tls).unwrap();
        v.to_str().unwrap().to_string()
    }

    #[test]
    fn redirect_locations_follow_the_spec() {
        let r = |json, port, tls| redirect(json, "/old/x?q=1", port, tls);
        assert_eq!(
            r(r#"{"status": 302}"#, None, false),
            "http://example.org/old/x?q=1"
        );
        assert_eq!(
            r(r#"{"status": 302, "scheme": "https"}"#, Some(8080), false),
            "https://example.org/old/x?q=1"
        );
        assert_eq!(
            r(r#"{"status": 302, "port": 8083}"#, None, false),
            "http://example.org:8083/old/x?q=1"
        );
        assert_eq!(
            r(
                r#"{"status": 302, "scheme": "https", "port": 443}"#,
                None,
                false
            ),
            "https://example.org/old/x?q=1"
        );
        assert_eq!(
            r(
                r#"{"status": 302, "scheme": "http", "port": 8443}"#,
                None,
                true
            ),
            "http://example.org:8443/old/x?q=1"
        );
        assert_eq!(
            r(
                r#"{"status": 301, "hostname": "new.example.org"}"#,
                Some(8080),
                false
            ),
            "http://new.example.org:8080/old/x?q=1"
        );
        assert_eq!(
            r(r#"{"status": 302, "path": {"full": "/one"}}"#, None, false),
            "http://example.org/one?q=1"
        );
        assert_eq!(
            r(
                r#"{"status": 302, "path": {"prefix": "/new"}}"#,
                None,
                false
            ),
            "http://example.org/new/x?q=1"
        );
    }
}
