//! External authentication of a route (ingress-nginx's `auth-url`): before
//! a request is proxied the gateway asks an auth service; a 2xx lets it
//! through (with some of the answer's headers), 401 and 403 are the
//! client's answer, anything else is a 500.

use serde::{Deserialize, Serialize};

use super::{HeaderName, Method};

/// The variables an auth or sign-in URL may hold, filled per request.
pub const AUTH_URL_VARIABLES: [&str; 4] =
    ["$escaped_request_uri", "$request_uri", "$scheme", "$host"];

/// A route's external auth check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalAuth {
    /// `http(s)://...`, with [`AUTH_URL_VARIABLES`] filled per request.
    pub url: String,
    pub method: Method,
    /// Headers of a 2xx answer copied onto the upstream request (what the
    /// client sent under these names is dropped either way).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<HeaderName>,
    /// Where a 401 sends the client instead (302), same variables; the
    /// original URL is added as `rd` unless the URL has a query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signin: Option<String>,
}

/// Whether `url` is an absolute http(s) URL whose `$` are only the known
/// variables, with no whitespace or control characters.
pub fn auth_url_ok(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() || url.len() > 2048 {
        return false;
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let mut tail = url;
    while let Some(i) = tail.find('$') {
        tail = &tail[i..];
        match AUTH_URL_VARIABLES.iter().find(|v| tail.starts_with(**v)) {
            Some(v) => tail = &tail[v.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_urls_hold_only_known_variables() {
        assert!(auth_url_ok("http://oauth2-proxy.auth.svc/oauth2/auth"));
        assert!(auth_url_ok(
            "https://$host/oauth2/start?rd=$escaped_request_uri"
        ));
        assert!(!auth_url_ok("https://$host/$remote_addr"));
        assert!(!auth_url_ok("ftp://x/"));
        assert!(!auth_url_ok("http://a b/"));
        assert!(!auth_url_ok("/relative"));
    }
}
