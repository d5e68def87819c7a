//! Session affinity by cookie (`affinity: cookie`): the cookie names an
//! endpoint of the route's pool by its opaque id; a request naming a ready
//! endpoint goes there, any other is balanced and told (a new cookie) where
//! it now belongs.

use http::header::{self, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use vestibule_config::model::Affinity;

use crate::route::cookie;

/// A compiled [`Affinity`].
pub struct StickyCookie {
    name: Box<str>,
    /// `; Path=...; HttpOnly[; Max-Age=N]`.
    attributes: Box<str>,
}

impl StickyCookie {
    pub fn new(a: &Affinity) -> Self {
        let mut attributes = format!("; Path={}; HttpOnly", a.path);
        if let Some(age) = a.max_age_secs {
            attributes.push_str(&format!("; Max-Age={age}"));
        }
        StickyCookie {
            name: a.cookie.as_str().into(),
            attributes: attributes.into(),
        }
    }

    /// The endpoint id the request's cookie names, if any.
    pub fn wanted(&self, req: &RequestHeader) -> Option<Box<str>> {
        cookie(&req.headers, &self.name).map(Into::into)
    }

    /// Pins the client to `endpoint` (on HTTPS the cookie is `Secure`).
    pub fn pin(&self, resp: &mut ResponseHeader, endpoint: &str, tls: bool) {
        let secure = if tls { "; Secure" } else { "" };
        let cookie = format!("{}={endpoint}{}{secure}", self.name, self.attributes);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            let _ = resp.append_header(header::SET_COOKIE, v);
        }
    }
}
