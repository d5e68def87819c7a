//! External auth (`auth-url`): before a request is proxied, its headers (no
//! body) go to the route's auth service. A 2xx lets it through with the
//! listed headers of the answer; 401 and 403 are the client's answer (a
//! 401 becomes a redirect to the sign-in URL when there is one); anything
//! else, an error or no answer within [`AUTH_TIMEOUT`] is a 500. The auth
//! service never sees a link-local address (cloud metadata endpoints): an
//! Ingress author must not make the gateway fetch those.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pingora_http::RequestHeader;
use vestibule_config::model::ExternalAuth;

use crate::edge::headers::{folded_eq, protected, HOP_BY_HOP};

/// The longest wait for the auth service's answer.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// A route's compiled check.
pub struct AuthCheck {
    url: String,
    method: http::Method,
    copy: Box<[HeaderName]>,
    signin: Option<String>,
}

/// What the auth service said of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Proxy it, with these headers set on the upstream request.
    Pass(Vec<(HeaderName, HeaderValue)>),
    /// Answer 401 or 403 (with the service's `WWW-Authenticate`, if any).
    Deny(u16, Option<HeaderValue>),
    /// Send the client to sign in (302).
    SignIn(HeaderValue),
    /// No usable answer: 500.
    Fail,
}

impl AuthCheck {
    pub fn new(auth: &ExternalAuth) -> Self {
        AuthCheck {
            url: auth.url.clone(),
            method: http::Method::from_bytes(auth.method.as_str().as_bytes())
                .unwrap_or(http::Method::GET),
            copy: auth
                .response_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_str().as_bytes()).ok())
                .collect(),
            signin: auth.signin.clone(),
        }
    }

    /// Headers the client may not send under the names the auth service
    /// sets (they are dropped from the upstream request either way).
    pub fn copied(&self) -> &[HeaderName] {
        &self.copy
    }
}

/// What a request's URL variables are filled with.
pub struct Vars<'a> {
    pub scheme: &'static str,
    pub host: &'a str,
    /// Path and query as the client sent them.
    pub request_uri: &'a str,
}

impl Vars<'_> {
    fn fill(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + self.request_uri.len());
        let mut rest = template;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            let (var, value): (&str, std::borrow::Cow<'_, str>) =
                if rest.starts_with("$escaped_request_uri") {
                    ("$escaped_request_uri", escape(self.request_uri).into())
                } else if rest.starts_with("$request_uri") {
                    ("$request_uri", self.request_uri.into())
                } else if rest.starts_with("$scheme") {
                    ("$scheme", self.scheme.into())
                } else if rest.starts_with("$host") {
                    ("$host", self.host.into())
                } else {
                    // The translator allows no other variable.
                    ("$", "$".into())
                };
            out.push_str(&value);
            rest = &rest[var.len()..];
        }
        out.push_str(rest);
        out
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Request headers never sent to the auth service besides the hop-by-hop
/// ones and those only the gateway may send (`edge::headers::protected`,
/// in every spelling): framing (no body goes), and the ones set below. An
/// auth service (oauth2-proxy) decides by `X-Forwarded-Uri` and
/// `-Method`: a client must never choose them.
const NOT_SENT: &[&str] = &[
    "host",
    "content-length",
    "expect",
    "x-original-method",
    "x-forwarded-method",
    "x-auth-request-redirect",
    "x-sent-from",
];

/// Resolves names for the auth client, leaving out link-local addresses.
#[derive(Clone)]
struct NoLinkLocal(GaiResolver);

impl tower::Service<Name> for NoLinkLocal {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let lookup = self.0.call(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.filter(|a| !link_local(a.ip())).collect();
            Ok(addrs.into_iter())
        })
    }
}

/// Link-local addresses, and the cloud metadata endpoints outside them
/// (AWS's IPv6 `fd00:ec2::254`, Alibaba's `100.100.100.200`).
fn link_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector<NoLinkLocal>>;

/// The pooled client every auth check of the process uses.
pub struct AuthClient {
    client: Client<Https, Empty<Bytes>>,
}

impl AuthClient {
    pub fn new() -> Arc<Self> {
        let mut http = HttpConnector::new_with_resolver(NoLinkLocal(GaiResolver::new()));
        http.enforce_http(false);
        http.set_connect_timeout(Some(AUTH_TIMEOUT));
        // https auth services are verified against the platform's roots;
        // without them only http ones can be reached.
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no platform roots: https auth services will fail");
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()))
                    .map(|b| b.with_no_client_auth())
                    .unwrap_or_else(|_| unreachable!("ring supports the default versions")),
                )
            });
        let connector = tls.https_or_http().enable_http1().wrap_connector(http);
        Arc::new(AuthClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Asks the auth service about `req`, from `client_ip`.
    pub async fn check(
        &self,
        check: &AuthCheck,
        req: &RequestHeader,
        vars: &Vars<'_>,
        client_ip: Option<IpAddr>,
    ) -> AuthVerdict {
        let Ok(uri) = vars.fill(&check.url).parse::<http::Uri>() else {
            return AuthVerdict::Fail;
        };
        let literal_link_local = uri
            .host()
            .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
            .is_some_and(link_local);
        if check.url.is_empty() || literal_link_local {
            return AuthVerdict::Fail;
        }
        let mut out = http::Request::builder()
            .method(check.method.clone())
            .uri(uri);
        for (name, value) in req.headers.iter() {
            let n = name.as_str();
            if !NOT_SENT.iter().any(|s| folded_eq(s, n))
                && !HOP_BY_HOP.contains(&n)
                && !protected(n)
            {
                out = out.header(name, value);
            }
        }
        let original = format!("{}://{}{}", vars.scheme, vars.host, vars.request_uri);
        out = out
            .header("x-original-url", original.as_str())
            .header("x-original-method", req.method.as_str())
            .header("x-auth-request-redirect", vars.request_uri)
            .header("x-forwarded-proto", vars.scheme)
            .header("x-forwarded-host", vars.host)
            .header("x-forwarded-uri", vars.request_uri)
            .header("x-forwarded-method", req.method.as_str())
            .header("x-sent-from", "vestibule");
        if let Some(ip) = client_ip {
            let ip = ip.to_string();
            out = out
                .header("x-forwarded-for", ip.as_str())
                .header("x-real-ip", ip.as_str());
        }
        let Ok(request) = out.body(Empty::new()) else {
            return AuthVerdict::Fail;
        };
        let answer = tokio::time::timeout(AUTH_TIMEOUT, self.client.request(request)).await;
        let Ok(Ok(resp)) = answer else {
            return AuthVerdict::Fail;
        };
        let status = resp.status().as_u16();
        match status {
            200..=299 => AuthVerdict::Pass(
                check
                    .copy
                    .iter()
                    .filter_map(|n| Some((n.clone(), resp.headers().get(n)?.clone())))
                    .collect(),
            ),
            401 if check.signin.is_some() => {
                let mut to = vars.fill(check.signin.as_deref().unwrap_or_default());
                if !to.contains('?') {
                    to.push_str("?rd=");
                    to.push_str(&escape(&original));
                }
                HeaderValue::from_str(&to).map_or(AuthVerdict::Fail, AuthVerdict::SignIn)
            }
            401 | 403 => AuthVerdict::Deny(
                status,
                resp.headers().get(header::WWW_AUTHENTICATE).cloned(),
            ),
            _ => AuthVerdict::Fail,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_filled_and_escaped() {
        let vars = Vars {
            scheme: "https",
            host: "shop.test",
            request_uri: "/cart?item=1&x=a b",
        };
        assert_eq!(
            vars.fill("https://$host/oauth2/start?rd=$escaped_request_uri"),
            "https://shop.test/oauth2/start?rd=%2Fcart%3Fitem%3D1%26x%3Da%20b"
        );
        assert_eq!(
            vars.fill("$scheme://auth$request_uri"),
            "https://auth/cart?item=1&x=a b"
        );
        assert!(link_local("169.254.169.254".parse().unwrap()));
        assert!(link_local("fe80::1".parse().unwrap()));
        assert!(link_local("fd00:ec2::254".parse().unwrap()));
        assert!(link_local("100.100.100.200".parse().unwrap()));
        assert!(!link_local("10.0.0.1".parse().unwrap()));
    }
}
