//! Routes of the IR: what a request must match (path, method, headers,
//! query) and what is done with it (filters, then a backend, a redirect or
//! an error). Ingress rules and HTTPRoute rules both compile to these.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{PoolId, RouteName};
use crate::hostname::Hostname;

// === impl Route ===

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// Where the route came from (`ingress/ns/name`, `tenant/name`): the
    /// bounded `route` label of metrics and logs.
    pub name: RouteName,
    pub path: PathMatch,
    /// What the request must also carry (Gateway API matches); all hold.
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// Applied to matched requests and their responses, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// The longest wait, in milliseconds, for the upstream's response
    /// (between reads); then 504. `None`: the gateway's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// The longest wait, in milliseconds, to connect to an endpoint (a
    /// failed connect is retried once on another). `None`: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u32>,
    /// The longest wait, in milliseconds, for the upstream to take each
    /// write of the request. `None`: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_timeout_ms: Option<u32>,
    pub backend: Backend,
}

impl Route {
    /// A route on `path` to a pool, with no conditions and no filters.
    pub fn to_pool(name: RouteName, path: PathMatch, pool: PoolId) -> Self {
        Route {
            name,
            path,
            conditions: Conditions::default(),
            filters: Vec::new(),
            timeout_ms: None,
            connect_timeout_ms: None,
            send_timeout_ms: None,
            backend: Backend::Pool(pool),
        }
    }

    /// Every pool the route sends requests to: its backend's and its
    /// mirrors'.
    pub fn pools(&self) -> impl Iterator<Item = &PoolId> {
        self.backend
            .pool()
            .into_iter()
            .chain(self.filters.iter().filter_map(|f| match f {
                Filter::Mirror(id) => Some(id),
                _ => None,
            }))
    }

    /// Precedence among the routes of a host (the Gateway API's): Exact
    /// path, longest prefix, then a method, most headers, most query
    /// parameters. Sorting by this key (stably, so older routes stay first
    /// on ties) puts the winner first.
    pub fn precedence_key(&self) -> impl Ord + '_ {
        (self.path.precedence_key(), self.conditions.precedence_key())
    }
}

/// How a route matches the request path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with these path elements: `/foo` matches `/foo`,
    /// `/foo/` and `/foo/bar`, never `/foobar`. Stored without a trailing `/`
    /// (except the root `/`).
    Prefix(String),
    /// A regular expression matching the start of the path, letters in any
    /// case (ingress-nginx's `use-regex`: nginx's `location ~* ^PATH`).
    Regex(String),
}

/// Longest path regular expression accepted.
pub const MAX_PATH_REGEX: usize = 1024;

/// Compiles a `PathMatch::Regex` pattern: anchored at the start, case
/// insensitive, and bounded (the `regex` crate runs in linear time; the
/// compiled program is capped at 1 MiB).
pub fn path_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_PATH_REGEX {
        return Err(format!("longer than {MAX_PATH_REGEX} bytes"));
    }
    regex::RegexBuilder::new(&format!("^(?:{pattern})"))
        .case_insensitive(true)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => "too large once compiled".to_string(),
            _ => "not a regular expression".to_string(),
        })
}

impl PathMatch {
    /// A normalized prefix matcher (trailing slashes removed, root kept).
    pub fn prefix(path: &str) -> Self {
        let trimmed = path.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Regex(p) => p,
        }
    }

    /// Does this matcher accept the request path (query already removed)?
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) if p == "/" => true,
            PathMatch::Prefix(p) => match path.strip_prefix(p.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
            PathMatch::Regex(p) => path_regex(p).is_ok_and(|r| r.is_match(path)),
        }
    }

    /// Route precedence: Exact, then regular expressions (as nginx tries
    /// them before the prefixes it found), then Prefix; longer before
    /// shorter, then by text so the order is total. Sorting by this key
    /// puts the winner first.
    pub fn precedence_key(&self) -> (u8, std::cmp::Reverse<usize>, &str) {
        match self {
            PathMatch::Exact(p) => (0, std::cmp::Reverse(p.len()), p),
            PathMatch::Regex(p) => (1, std::cmp::Reverse(p.len()), p),
            PathMatch::Prefix(p) => (2, std::cmp::Reverse(p.len()), p),
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(p) => write!(f, "Exact {p}"),
            PathMatch::Prefix(p) => write!(f, "Prefix {p}"),
            PathMatch::Regex(p) => write!(f, "Regex {p}"),
        }
    }
}

// === impl Conditions ===

/// Request conditions besides the path. Headers are unique by name and
/// sorted, query parameters unique by name and sorted, so equal conditions
/// compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Conditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// Exact header values; names case-insensitive (stored lowercase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
    /// Exact query parameter values; names case-sensitive, compared as sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryParam>,
    /// Exact cookie values (ingress-nginx's `canary-by-cookie`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<CookieMatch>,
}

/// A cookie a request must carry, with this exact value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CookieMatch {
    /// An RFC 6265 cookie name (a token), case-sensitive.
    pub name: String,
    pub value: HeaderText,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.headers.is_empty()
            && self.query.is_empty()
            && self.cookies.is_empty()
    }

    /// More specific first: a method, then more headers (a cookie counts
    /// as one), then more query parameters.
    pub fn precedence_key(&self) -> (bool, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>) {
        (
            self.method.is_none(),
            std::cmp::Reverse(self.headers.len() + self.cookies.len()),
            std::cmp::Reverse(self.query.len()),
        )
    }
}

/// The request methods a route can match (the Gateway API's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }
}

/// A header: a valid lowercase name and a value that is safe on the wire.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Header {
    pub name: HeaderName,
    pub value: HeaderText,
}

/// A query parameter name and value, as sent (not percent-decoded).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryParam {
    pub name: String,
    pub value: String,
}

/// Longest header value a route may match or set.
pub const MAX_HEADER_TEXT: usize = 4096;

/// A header name: an RFC 9110 token, lowercase.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderName(String);

impl HeaderName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HeaderName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if s.is_empty() || s.len() > 256 || !s.bytes().all(token) {
            return Err(format!("{s:?} is not a header name"));
        }
        Ok(HeaderName(s.to_ascii_lowercase()))
    }
}

impl From<HeaderName> for String {
    fn from(h: HeaderName) -> String {
        h.0
    }
}

/// A header value: visible ASCII, spaces and tabs, at most 4 KiB. No CR or
/// LF, so a configured value can never split a header.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderText(String);

impl HeaderText {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HeaderText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = |b: u8| (0x20..0x7f).contains(&b) || b == b'\t';
        if s.len() > MAX_HEADER_TEXT || !s.bytes().all(ok) {
            return Err("a header value must be visible ASCII, at most 4 KiB".to_string());
        }
        Ok(HeaderText(s))
    }
}

impl From<HeaderText> for String {
    fn from(h: HeaderText) -> String {
        h.0
    }
}

// === impl Filter ===

/// What a route does to a matched request or its response, besides
/// choosing a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Filter {
    /// Edits the request's headers before it goes upstream.
    RequestHeaders(HeaderEdits),
    /// Edits the response's headers before it goes to the client.
    ResponseHeaders(HeaderEdits),
    /// Rewrites the upstream request's Host and path.
    Rewrite(Rewrite),
    /// Sends a copy of the request to this pool and ignores the answer.
    Mirror(PoolId),
    /// A request body larger than this many bytes gets 413.
    MaxBody(u64),
    /// Only clients from `allow` (when it lists any), and never from
    /// `deny`, are served; others get 403.
    ClientNetworks(ClientNetworks),
    /// CORS: preflights answered here, responses marked for admitted
    /// origins.
    Cors(Box<super::Cors>),
    /// Asks an auth service before proxying.
    ExternalAuth(Box<super::ExternalAuth>),
    /// Requests each client address may make (ingress-nginx's `limit-rps`
    /// / `limit-rpm`); more get 503.
    ClientRate(ClientRate),
    /// Requests each client address may have in flight at once
    /// (`limit-connections`); more get 503.
    ClientConcurrency(ClientConcurrency),
    /// Session affinity by cookie (ingress-nginx's `affinity: cookie`).
    Affinity(Affinity),
}

/// A cookie that keeps a client on one endpoint of the route's pool while
/// that endpoint is ready; then the client is pinned to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Affinity {
    /// The cookie's name (an RFC 6265 token).
    pub cookie: String,
    /// `Max-Age` of the cookie; `None`: a session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u32>,
    /// `Path` of the cookie.
    pub path: String,
}

/// A per-client-address request rate on a route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientRate {
    /// Requests per `per`.
    pub requests: u32,
    pub per: RatePeriod,
    /// Requests beyond the rate a client may make at once.
    pub burst: u32,
    /// Addresses the limit does not apply to (`limit-whitelist`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exempt: Vec<ipnet::IpNet>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RatePeriod {
    Second,
    Minute,
}

/// A per-client-address cap on requests in flight on a route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientConcurrency {
    pub max: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exempt: Vec<ipnet::IpNet>,
}

/// Client networks a route admits or refuses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientNetworks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<ipnet::IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<ipnet::IpNet>,
}

impl ClientNetworks {
    /// Whether a client at `ip` is served.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
            && !self.deny.iter().any(|n| n.contains(&ip))
    }
}

/// Header edits, applied as set, then add, then remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderEdits {
    /// Replace any value the header had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    /// Append a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<HeaderName>,
}

/// An upstream request rewrite (Gateway API `URLRewrite`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rewrite {
    /// The upstream request's Host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// A new path for a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum PathRewrite {
    /// The whole path becomes this.
    Full(String),
    /// The matched prefix of the route's `Prefix` path becomes this.
    Prefix(String),
    /// The whole path becomes this, with `$1`..`$9` the capture groups of
    /// the route's `Regex` path (ingress-nginx's `rewrite-target`).
    Captures(String),
}

// === impl Backend ===

/// Where matched requests go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Backend {
    /// Proxy to a pool.
    Pool(PoolId),
    /// Some backends could not be resolved: of every `weight + unresolved`
    /// requests, `unresolved` get a 500 and the rest go to the pool (the
    /// Gateway API's rule for invalid backendRefs).
    Split {
        pool: PoolId,
        weight: u32,
        unresolved: u32,
    },
    /// No backend could be resolved: every request gets a 500.
    Unresolved,
    /// Answer with a redirect (boxed: most backends are pools).
    Redirect(Box<Redirect>),
}

impl Backend {
    /// The pool requests may be proxied to.
    pub fn pool(&self) -> Option<&PoolId> {
        match self {
            Backend::Pool(id) | Backend::Split { pool: id, .. } => Some(id),
            Backend::Unresolved | Backend::Redirect(_) => None,
        }
    }
}

/// A redirect answer (Gateway API `RequestRedirect`): unset parts keep the
/// request's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    pub status: RedirectStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The redirect status codes the Gateway API allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct RedirectStatus(u16);

impl RedirectStatus {
    pub const FOUND: RedirectStatus = RedirectStatus(302);

    pub fn code(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for RedirectStatus {
    type Error = String;
    fn try_from(code: u16) -> Result<Self, String> {
        match code {
            301 | 302 | 303 | 307 | 308 => Ok(RedirectStatus(code)),
            _ => Err(format!(
                "redirect status {code} is not 301, 302, 303, 307 or 308"
            )),
        }
    }
}

impl From<RedirectStatus> for u16 {
    fn from(s: RedirectStatus) -> u16 {
        s.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_names_and_values_are_checked_when_read() {
        let h: Header = serde_json::from_str(r#"{"name": "X-Env", "value": "canary"}"#).unwrap();
        assert_eq!(h.name.as_str(), "x-env");
        for bad in [
            r#"{"name": "x env", "value": "v"}"#,
            r#"{"name": "", "value": "v"}"#,
            r#"{"name": "x", "value": "a\r\nInjected: 1"}"#,
        ] {
            assert!(serde_json::from_str::<Header>(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<RedirectStatus>("301").is_ok());
        assert!(serde_json::from_str::<RedirectStatus>("200").is_err());
    }

    #[test]
    fn more_specific_conditions_sort_first() {
        let header = |n: &str| Header {
            name: HeaderName::try_from(n.to_string()).unwrap(),
            value: HeaderText::try_from("v".to_string()).unwrap(),
        };
        let method = Conditions {
            method: Some(Method::Get),
            ..Default::default()
        };
        let two = Conditions {
            headers: vec![header("a"), header("b")],
            ..Default::default()
        };
        let one = Conditions {
            headers: vec![header("a")],
            ..Default::default()
        };
        let mut all = [
            Conditions::default(),
            one.clone(),
            two.clone(),
            method.clone(),
        ];
        all.sort_by_key(Conditions::precedence_key);
        assert_eq!(all, [method, two, one, Conditions::default()]);
    }
}
