//! `auth-url` with `auth-method`, `auth-response-headers` and
//! `auth-signin`: an external auth check before proxying.

use std::collections::BTreeMap;

use crate::model::{auth_url_ok, ExternalAuth, HeaderName, Method};

/// The auth check the annotations ask for, if any. An unusable `auth-url`
/// is not ignored (that would open the route): the check stays, failing
/// every request with 500, and a condition says why.
pub(super) fn read(
    known: &BTreeMap<&str, &str>,
    invalid: &mut dyn FnMut(&str, &str, &str),
) -> Option<Box<ExternalAuth>> {
    let url = known.get("auth-url")?.trim();
    let url = if auth_url_ok(url) {
        url.to_string()
    } else {
        invalid(
            "auth-url",
            url,
            "an http(s) URL with no variables but $host, $scheme, $request_uri and $escaped_request_uri; every request is refused (500) until it is fixed",
        );
        String::new()
    };
    let method = match known
        .get("auth-method")
        .map(|m| m.trim().to_ascii_uppercase())
    {
        None => Method::Get,
        Some(m) => {
            serde_json::from_value(serde_json::Value::String(m.clone())).unwrap_or_else(|_| {
                invalid("auth-method", &m, "an HTTP method; GET is used");
                Method::Get
            })
        }
    };
    let mut response_headers = Vec::new();
    if let Some(list) = known.get("auth-response-headers") {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match HeaderName::try_from(name.to_string()) {
                Ok(h) => response_headers.push(h),
                Err(_) => invalid("auth-response-headers", name, "not a header name; left out"),
            }
        }
    }
    let signin = known.get("auth-signin").and_then(|s| {
        let ok = auth_url_ok(s.trim());
        if !ok {
            invalid(
                "auth-signin",
                s,
                "an http(s) URL with the same variables as auth-url; a 401 is answered as is",
            );
        }
        ok.then(|| s.trim().to_string())
    });
    Some(Box::new(ExternalAuth {
        url,
        method,
        response_headers,
        signin,
    }))
}

/// A check that refuses every request (an empty URL fails closed).
pub(super) fn fail_closed() -> Box<ExternalAuth> {
    Box::new(ExternalAuth {
        url: String::new(),
        method: Method::Get,
        response_headers: Vec::new(),
        signin: None,
    })
}
