//! A route's CORS policy at request time: whether the request's `Origin`
//! is admitted, the 204 answer to a preflight, and the headers an admitted
//! origin's responses carry. Header values are built once per policy.

use http::header::{self, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use vestibule_config::model::{Cors, CorsOrigins};

/// A compiled [`Cors`].
pub struct CorsPolicy {
    origins: CorsOrigins,
    methods: HeaderValue,
    headers: HeaderValue,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// What a request gets from a CORS route.
pub enum CorsDecision {
    /// Not a cross-origin request the policy admits: nothing is added.
    None,
    /// An admitted `OPTIONS` request: answer 204 with these headers.
    Preflight(Vec<(HeaderName, HeaderValue)>),
    /// An admitted request: its response gets `Access-Control-Allow-Origin`
    /// with this value (and the rest, see [`CorsPolicy::mark`]).
    Mark(HeaderValue),
}

impl CorsPolicy {
    pub fn new(cors: &Cors) -> Option<Self> {
        let value = |s: &str| HeaderValue::from_str(s).ok();
        Some(CorsPolicy {
            origins: cors.allow_origins.clone(),
            methods: value(cors.allow_methods.as_str())?,
            headers: value(cors.allow_headers.as_str())?,
            expose: cors.expose_headers.as_ref().and_then(|e| value(e.as_str())),
            credentials: cors.allow_credentials,
            max_age: HeaderValue::from(cors.max_age),
        })
    }

    /// What `req` gets: with any origin admitted, every request is marked
    /// `*` (as ingress-nginx does); with a list, only requests whose
    /// `Origin` is on it, and the origin is echoed.
    pub fn decide(&self, req: &RequestHeader) -> CorsDecision {
        let origin = req.headers.get(header::ORIGIN);
        let allow = match (&self.origins, origin) {
            (CorsOrigins::Any, _) => HeaderValue::from_static("*"),
            (CorsOrigins::List(_), Some(o)) if o.to_str().is_ok_and(|o| self.origins.admits(o)) => {
                o.clone()
            }
            (CorsOrigins::List(_), _) => return CorsDecision::None,
        };
        if req.method != http::Method::OPTIONS {
            return CorsDecision::Mark(allow);
        }
        let mut headers = self.common(allow);
        headers.push((header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone()));
        headers.push((header::ACCESS_CONTROL_ALLOW_HEADERS, self.headers.clone()));
        headers.push((header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        CorsDecision::Preflight(headers)
    }

    /// Adds the response headers of an admitted request.
    pub fn mark(&self, resp: &mut ResponseHeader, allow: HeaderValue) {
        for (name, value) in self.common(allow) {
            let _ = resp.insert_header(name, value);
        }
        if let Some(expose) = &self.expose {
            let _ = resp.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    /// Allow-Origin, Allow-Credentials, and Vary when an origin is echoed
    /// (so a cache never serves one origin's answer to another).
    fn common(&self, allow: HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let echoed = allow != "*";
        let mut out = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow)];
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if echoed {
            out.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        out
    }
}
