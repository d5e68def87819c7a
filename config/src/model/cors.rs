//! Cross-origin resource sharing on a route (ingress-nginx's
//! `enable-cors`): which origins may read responses, and what a preflight
//! is told.

use serde::{Deserialize, Serialize};

use super::HeaderText;

/// A route's CORS policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cors {
    pub allow_origins: CorsOrigins,
    /// `Access-Control-Allow-Methods` of a preflight answer.
    pub allow_methods: HeaderText,
    /// `Access-Control-Allow-Headers` of a preflight answer.
    pub allow_headers: HeaderText,
    /// `Access-Control-Expose-Headers` of responses, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_headers: Option<HeaderText>,
    pub allow_credentials: bool,
    /// Seconds a preflight answer may be cached.
    pub max_age: u32,
}

/// The origins a CORS policy admits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum CorsOrigins {
    /// Any origin (`Access-Control-Allow-Origin: *`).
    Any,
    /// These origins (`https://app.example.com`, or `https://*.example.com`
    /// for its subdomains), lowercase; the request's is echoed back.
    List(Vec<String>),
}

impl CorsOrigins {
    /// Whether `origin` (as the request's `Origin` header says it) is
    /// admitted.
    pub fn admits(&self, origin: &str) -> bool {
        match self {
            CorsOrigins::Any => true,
            CorsOrigins::List(list) => list.iter().any(|o| origin_matches(o, origin)),
        }
    }
}

fn origin_matches(pattern: &str, origin: &str) -> bool {
    match pattern.split_once("://*.") {
        // `https://*.example.com` admits `https://a.example.com` (and
        // deeper), never `https://example.com` or another scheme.
        Some((scheme, domain)) => origin
            .split_once("://")
            .filter(|(s, _)| s.eq_ignore_ascii_case(scheme))
            .and_then(|(_, host)| {
                let cut = host.len().checked_sub(domain.len() + 1)?;
                let (sub, rest) = host.split_at(cut);
                (!sub.is_empty() && rest[1..].eq_ignore_ascii_case(domain) && rest.starts_with('.'))
                    .then_some(())
            })
            .is_some(),
        None => pattern.eq_ignore_ascii_case(origin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let list = CorsOrigins::List(vec![
            "https://app.example.com".into(),
            "https://*.tools.example.com".into(),
        ]);
        assert!(list.admits("https://app.example.com"));
        assert!(list.admits("https://APP.example.com"));
        assert!(list.admits("https://a.tools.example.com"));
        assert!(list.admits("https://a.b.tools.example.com"));
        assert!(!list.admits("https://tools.example.com"));
        assert!(!list.admits("http://a.tools.example.com"));
        assert!(!list.admits("https://evil-tools.example.com"));
        assert!(!list.admits("https://app.example.com.evil.test"));
        assert!(!list.admits("null"));
        assert!(CorsOrigins::Any.admits("null"));
    }
}
