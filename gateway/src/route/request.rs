//! What route matching reads from a request, and the compiled request
//! conditions (method, exact headers, exact query parameters) of a route.
//! Matching reads the request in place: nothing is allocated or decoded.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use vestibule_config::model::Conditions;

/// The parts of a request that routes match on.
pub trait RequestView {
    /// The path, without the query.
    fn path(&self) -> &str;
    fn method(&self) -> &Method;
    fn headers(&self) -> Option<&HeaderMap>;
    /// The query, without `?`.
    fn query(&self) -> Option<&str>;
}

impl RequestView for http::request::Parts {
    fn path(&self) -> &str {
        self.uri.path()
    }
    fn method(&self) -> &Method {
        &self.method
    }
    fn headers(&self) -> Option<&HeaderMap> {
        Some(&self.headers)
    }
    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
}

/// A bare path: a GET with no headers and no query (tests, benches).
impl RequestView for str {
    fn path(&self) -> &str {
        self
    }
    fn method(&self) -> &Method {
        &Method::GET
    }
    fn headers(&self) -> Option<&HeaderMap> {
        None
    }
    fn query(&self) -> Option<&str> {
        None
    }
}

/// A route's conditions besides the path, ready to test requests.
#[derive(Debug, Default)]
pub struct Compiled {
    method: Option<Method>,
    headers: Box<[(HeaderName, HeaderValue)]>,
    query: Box<[(Box<str>, Box<str>)]>,
    cookies: Box<[(Box<str>, Box<str>)]>,
}

impl Compiled {
    /// Compiles `c`; the model has validated names and values, so a
    /// condition that still does not convert can never match and makes the
    /// route unmatchable (`None`).
    pub fn new(c: &Conditions) -> Option<Self> {
        let headers = c
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::from_bytes(h.name.as_str().as_bytes()).ok()?;
                let value = HeaderValue::from_str(h.value.as_str()).ok()?;
                Some((name, value))
            })
            .collect::<Option<_>>()?;
        let method = c
            .method
            .map(|m| Method::from_bytes(m.as_str().as_bytes()).ok())
            .map_or(Some(None), |m| m.map(Some))?;
        Some(Compiled {
            method,
            headers,
            query: c
                .query
                .iter()
                .map(|q| (q.name.as_str().into(), q.value.as_str().into()))
                .collect(),
            cookies: c
                .cookies
                .iter()
                .map(|k| (k.name.as_str().into(), k.value.as_str().into()))
                .collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.headers.is_empty()
            && self.query.is_empty()
            && self.cookies.is_empty()
    }

    /// Does the request satisfy every condition? A header matches when one
    /// of its values equals the wanted one; a query parameter by its first
    /// occurrence, compared as sent.
    #[inline]
    pub fn matches<Q: RequestView + ?Sized>(&self, req: &Q) -> bool {
        if self.method.as_ref().is_some_and(|m| m != req.method()) {
            return false;
        }
        if !self.headers.is_empty() {
            let Some(map) = req.headers() else {
                return false;
            };
            let all = self
                .headers
                .iter()
                .all(|(name, want)| map.get_all(name).iter().any(|v| v == want));
            if !all {
                return false;
            }
        }
        if !self.cookies.is_empty() {
            let Some(map) = req.headers() else {
                return false;
            };
            let all = self
                .cookies
                .iter()
                .all(|(name, want)| cookie(map, name) == Some(want));
            if !all {
                return false;
            }
        }
        self.query
            .iter()
            .all(|(name, want)| first_param(req.query(), name) == Some(want))
    }
}

/// The value of the first cookie called `name` in the `Cookie` headers
/// (quotes around it dropped).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then_some(v.trim_matches('"'))
        })
}

/// The value of the first `name=` parameter of `query`.
fn first_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vestibule_config::model::QueryParam;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn conditions(json: &str) -> Compiled {
        let c: Conditions = serde_json::from_str(json).unwrap();
        Compiled::new(&c).unwrap()
    }

    #[test]
    fn headers_match_by_name_any_case_and_exact_value() {
        let c = conditions(r#"{"headers": [{"name": "Version", "value": "two"}]}"#);
        assert!(c.matches(&parts("GET", "/", &[("version", "two")])));
        assert!(c.matches(&parts("GET", "/", &[("VERSION", "two")])));
        assert!(!c.matches(&parts("GET", "/", &[("version", "Two")])));
        assert!(!c.matches(&parts("GET", "/", &[])));
        // A repeated header matches by any of its values.
        assert!(c.matches(&parts(
            "GET",
            "/",
            &[("version", "one"), ("version", "two")]
        )));
        assert!(!c.matches("/"));
    }

    #[test]
    fn cookies_match_by_exact_name_and_value() {
        let c = conditions(r#"{"cookies": [{"name": "Canary", "value": "always"}]}"#);
        assert!(c.matches(&parts("GET", "/", &[("cookie", "a=1; Canary=always")])));
        assert!(c.matches(&parts(
            "GET",
            "/",
            &[("cookie", "a=1"), ("cookie", "Canary=\"always\"")]
        )));
        assert!(!c.matches(&parts("GET", "/", &[("cookie", "canary=always")])));
        assert!(!c.matches(&parts("GET", "/", &[("cookie", "Canary=never")])));
        assert!(!c.matches(&parts("GET", "/", &[])));
    }

    #[test]
    fn query_parameters_match_their_first_occurrence_as_sent() {
        let c = Compiled::new(&Conditions {
            query: vec![QueryParam {
                name: "animal".into(),
                value: "whale".into(),
            }],
            ..Default::default()
        })
        .unwrap();
        assert!(c.matches(&parts("GET", "/?animal=whale", &[])));
        assert!(c.matches(&parts("GET", "/?x=1&animal=whale&y", &[])));
        assert!(!c.matches(&parts("GET", "/?animal=dolphin&animal=whale", &[])));
        assert!(!c.matches(&parts("GET", "/?Animal=whale", &[])));
        assert!(!c.matches(&parts("GET", "/", &[])));
    }

    #[test]
    fn method_and_everything_else_must_all_hold() {
        let c = conditions(
            r#"{"method": "POST", "headers": [{"name": "x", "value": "1"}], "query": [{"name": "q", "value": ""}]}"#,
        );
        assert!(c.matches(&parts("POST", "/?q", &[("x", "1")])));
        assert!(c.matches(&parts("POST", "/?q=", &[("x", "1")])));
        assert!(!c.matches(&parts("GET", "/?q", &[("x", "1")])));
        assert!(!c.matches(&parts("POST", "/", &[("x", "1")])));
        assert!(Compiled::new(&Conditions::default()).unwrap().is_empty());
    }
}
