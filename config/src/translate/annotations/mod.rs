//! The ingress-nginx annotations an Ingress carries (`nginx.ingress.kubernetes.io/*`,
//! and the same names under `vestibule.dev/*`): the ones Vestibule reads,
//! checked; every other one named in a condition (never ignored in
//! silence); snippets refused, always: raw config injection is how
//! IngressNightmare (CVE-2025-1974) happened.

use std::collections::BTreeMap;

use super::{Condition, ConditionType, Reason};
use crate::hostname::Hostname;
use crate::model::{ClientNetworks, PathRewrite, PlainHttp, Redirect, RedirectStatus};
use ipnet::IpNet;
use values::{body_size, cidrs, flag, is_token, parse_url};

pub(crate) use upstream::{UpstreamAsk, Wire};

mod affinity;
mod auth;
mod cors;
mod limits;
mod support;
mod upstream;
mod values;

pub use support::{classify, markdown_table, Support};

const PREFIXES: [&str; 2] = ["nginx.ingress.kubernetes.io/", "vestibule.dev/"];

/// The annotation's name without its prefix, if it is one of ours.
pub fn strip_prefix(key: &str) -> Option<&str> {
    PREFIXES.iter().find_map(|p| key.strip_prefix(p))
}

/// What the annotations ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Annotations {
    /// `canary: "true"`: this Ingress is a share of another's routes.
    pub canary: Option<Canary>,
    /// `permanent-redirect` / `temporal-redirect`: every route answers
    /// with this redirect instead of proxying.
    pub redirect: Option<Redirect>,
    /// `app-root`: `/` itself redirects (302) to this path.
    pub app_root: Option<String>,
    /// `upstream-vhost`: the Host upstream requests carry.
    pub upstream_vhost: Option<Hostname>,
    /// `proxy-read-timeout` (seconds): the wait for the upstream's response.
    pub read_timeout_ms: Option<u32>,
    /// `proxy-connect-timeout` (seconds).
    pub connect_timeout_ms: Option<u32>,
    /// `proxy-send-timeout` (seconds).
    pub send_timeout_ms: Option<u32>,
    /// `proxy-body-size`: the largest request body.
    pub max_body: Option<u64>,
    /// `whitelist-source-range` / `denylist-source-range`.
    pub networks: Option<ClientNetworks>,
    /// `ssl-redirect: "false"` (serve plain HTTP) or `force-ssl-redirect:
    /// "true"` (always redirect).
    pub plain_http: Option<PlainHttp>,
    /// `backend-protocol` and `proxy-ssl-*`.
    pub upstream: Option<UpstreamAsk>,
    /// `use-regex: "true"` (or a `rewrite-target`): paths are regular
    /// expressions.
    pub use_regex: bool,
    /// `rewrite-target`: the upstream path, `$1`.. from the path's groups.
    pub rewrite_target: Option<String>,
    /// `enable-cors` with its `cors-*` settings.
    pub cors: Option<Box<crate::model::Cors>>,
    /// `auth-url` with its `auth-*` settings.
    pub auth: Option<Box<crate::model::ExternalAuth>>,
    /// `limit-rps` / `limit-rpm` (with `limit-burst-multiplier`).
    pub client_rate: Option<crate::model::ClientRate>,
    /// `limit-connections`.
    pub client_concurrency: Option<crate::model::ClientConcurrency>,
    /// `affinity: cookie` and its `session-cookie-*` settings.
    pub affinity: Option<crate::model::Affinity>,
}

/// A canary's share of its primary's traffic.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Canary {
    /// Of every `total` requests, `weight` go to the canary.
    pub weight: u32,
    pub total: u32,
    /// `canary-by-header`: a request with this header set to `always` (or
    /// to `header_value`) goes to the canary, with `never` to the primary.
    pub header: Option<String>,
    pub header_value: Option<String>,
    /// `canary-by-cookie`: a request with this cookie set to `always` goes
    /// to the canary, with `never` to the primary.
    pub cookie: Option<String>,
}

/// Reads the annotations of an Ingress; problems become conditions.
pub(crate) fn read(
    annotations: Option<&BTreeMap<String, String>>,
    conditions: &mut Vec<Condition>,
) -> Annotations {
    let mut known: BTreeMap<&str, &str> = BTreeMap::new();
    // An authentication Vestibule can't do (basic or digest auth, client
    // certificates): the routes fail closed rather than serve unprotected.
    let mut unsupported_auth = None;
    for (key, value) in annotations.into_iter().flatten() {
        let Some(name) = strip_prefix(key) else {
            continue;
        };
        if matches!(name, "auth-type" | "auth-secret" | "auth-tls-secret") {
            unsupported_auth = Some(key.as_str());
        }
        match classify(name).0 {
            Support::Refused => conditions.push(Condition::new(
                ConditionType::Accepted,
                false,
                Reason::SnippetRefused,
                format!("annotation {key}: snippets (raw proxy configuration) are refused, always; the rest of the Ingress is served"),
            )),
            Support::Supported | Support::Approximated => {
                known.insert(name, value.as_str());
            }
            Support::Unsupported => conditions.push(Condition::new(
                ConditionType::Accepted,
                false,
                Reason::UnsupportedAnnotation,
                format!("annotation {key} is not supported: it has no effect"),
            )),
        }
    }
    let mut invalid = |name: &str, value: &str, why: &str| {
        conditions.push(Condition::new(
            ConditionType::Accepted,
            false,
            Reason::InvalidAnnotation,
            format!("annotation {name}={value:?}: {why}"),
        ));
    };
    let canary = match flag(&known, "canary", &mut invalid) {
        None | Some(false) => None,
        Some(true) => {
            let number =
                |name: &str, default: u32, invalid: &mut dyn FnMut(&str, &str, &str)| match known
                    .get(name)
                {
                    None => Some(default),
                    Some(v) => match v.trim().parse::<u32>() {
                        Ok(n) => Some(n),
                        Err(_) => {
                            invalid(name, v, "not a whole number");
                            None
                        }
                    },
                };
            let total = number("canary-weight-total", 100, &mut invalid).filter(|t| *t > 0);
            let weight = number("canary-weight", 0, &mut invalid);
            let mut token = |name: &str, what: &str| {
                let v = known.get(name)?;
                if !is_token(v) {
                    invalid(name, v, what);
                }
                is_token(v).then(|| v.to_string())
            };
            let header =
                token("canary-by-header", "not a header name").map(|h| h.to_ascii_lowercase());
            let cookie = token("canary-by-cookie", "not a cookie name");
            match (weight, total) {
                (Some(weight), Some(total)) => Some(Canary {
                    weight: weight.min(total),
                    total,
                    header,
                    header_value: known
                        .get("canary-by-header-value")
                        .map(|v| v.to_string())
                        .filter(|v| !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b))),
                    cookie,
                }),
                // An unreadable weight: the canary takes no traffic (the
                // safe default), and says why.
                _ => Some(Canary {
                    weight: 0,
                    total: 100,
                    header,
                    header_value: None,
                    cookie,
                }),
            }
        }
    };
    let redirect = redirect(&known, &mut invalid);
    let app_root = known.get("app-root").and_then(|p| {
        let ok = p.starts_with('/')
            && p.len() <= 1024
            && p.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
        if !ok {
            invalid("app-root", p, "must be an absolute path");
        }
        ok.then(|| p.to_string())
    });
    let upstream_vhost = known.get("upstream-vhost").and_then(|h| {
        let parsed = Hostname::parse(h).ok();
        if parsed.is_none() {
            invalid("upstream-vhost", h, "not a hostname");
        }
        parsed
    });
    let mut seconds = |name: &str| {
        known.get(name).and_then(|v| {
            let secs = v
                .trim()
                .strip_suffix('s')
                .unwrap_or(v.trim())
                .parse::<u32>()
                .ok()
                .filter(|s| (1..=3600).contains(s));
            if secs.is_none() {
                invalid(name, v, "seconds from 1 to 3600; the default stays");
            }
            secs.map(|s| s * 1000)
        })
    };
    let read_timeout_ms = seconds("proxy-read-timeout");
    let connect_timeout_ms = seconds("proxy-connect-timeout");
    let send_timeout_ms = seconds("proxy-send-timeout");
    let max_body = known.get("proxy-body-size").and_then(|v| {
        let size = body_size(v);
        if size.is_none() {
            invalid("proxy-body-size", v, "a size like 8m, 512k or 1g");
        }
        // 0: no limit, as in nginx.
        size.filter(|s| *s > 0)
    });
    let mut ranges = |name: &str| -> Vec<IpNet> {
        let Some(v) = known.get(name) else {
            return Vec::new();
        };
        match cidrs(v) {
            Some(nets) => nets,
            None => {
                invalid(name, v, "a comma-separated list of CIDRs");
                // The safe default of an allowlist that can't be read: no one.
                if name == "whitelist-source-range" {
                    vec![IpNet::from(std::net::IpAddr::from([0, 0, 0, 0])).trunc()]
                } else {
                    Vec::new()
                }
            }
        }
    };
    let networks = ClientNetworks {
        allow: ranges("whitelist-source-range"),
        deny: ranges("denylist-source-range"),
    };
    let networks = (networks != ClientNetworks::default()).then_some(networks);
    let plain_http = match (
        flag(&known, "force-ssl-redirect", &mut invalid),
        flag(&known, "ssl-redirect", &mut invalid),
    ) {
        (Some(true), _) => Some(PlainHttp::Redirect),
        (_, Some(false)) => Some(PlainHttp::Serve),
        _ => None,
    };
    let upstream = upstream::read(&known, &mut invalid);
    let cors = cors::read(&known, &mut invalid);
    let auth = auth::read(&known, &mut invalid).or_else(|| {
        let key = unsupported_auth?;
        invalid(
            key,
            "",
            "this authentication is not supported: every request of these routes is refused (500) rather than served unprotected",
        );
        Some(auth::fail_closed())
    });
    let (client_rate, client_concurrency) = limits::read(&known, &mut invalid);
    let affinity = affinity::read(&known, &mut invalid);
    let rewrite_target = known.get("rewrite-target").and_then(|t| {
        let ok = t.starts_with('/')
            && t.len() <= 1024
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
        if !ok {
            invalid(
                "rewrite-target",
                t,
                "must be an absolute path (with $1.. for capture groups), no query",
            );
        }
        ok.then(|| t.to_string())
    });
    let use_regex =
        flag(&known, "use-regex", &mut invalid).unwrap_or(false) || rewrite_target.is_some();
    Annotations {
        affinity,
        client_rate,
        client_concurrency,
        auth,
        cors,
        use_regex,
        rewrite_target,
        upstream,
        canary,
        plain_http,
        redirect,
        app_root,
        upstream_vhost,
        read_timeout_ms,
        connect_timeout_ms,
        send_timeout_ms,
        max_body,
        networks,
    }
}

/// `permanent-redirect` (with `permanent-redirect-code`, default 301) or
/// `temporal-redirect` (302): an absolute http(s) URL.
fn redirect(
    known: &BTreeMap<&str, &str>,
    invalid: &mut dyn FnMut(&str, &str, &str),
) -> Option<Redirect> {
    let (name, url, status) = match (
        known.get("permanent-redirect"),
        known.get("temporal-redirect"),
    ) {
        (Some(url), _) => {
            let code = known
                .get("permanent-redirect-code")
                .copied()
                .unwrap_or("301");
            let status = code
                .trim()
                .parse::<u16>()
                .ok()
                .and_then(|c| RedirectStatus::try_from(c).ok());
            if status.is_none() {
                invalid("permanent-redirect-code", code, "301, 302, 303, 307 or 308");
            }
            (
                "permanent-redirect",
                *url,
                status.unwrap_or(RedirectStatus::try_from(301).ok()?),
            )
        }
        (None, Some(url)) => ("temporal-redirect", *url, RedirectStatus::FOUND),
        (None, None) => return None,
    };
    let parsed = parse_url(url);
    if parsed.is_none() {
        invalid(name, url, "not an absolute http(s) URL");
    }
    let (scheme, host, port, path) = parsed?;
    Some(Redirect {
        scheme: Some(scheme),
        hostname: Some(host),
        port: Some(port.unwrap_or(scheme.default_port())),
        path: Some(PathRewrite::Full(path)),
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> (Annotations, Vec<Condition>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut conditions = Vec::new();
        (read(Some(&map), &mut conditions), conditions)
    }

    #[test]
    fn canaries_are_read_snippets_refused_and_the_rest_named() {
        let (a, c) = annotations(&[
            ("nginx.ingress.kubernetes.io/canary", "true"),
            ("nginx.ingress.kubernetes.io/canary-weight", "20"),
            ("nginx.ingress.kubernetes.io/canary-by-header", "X-Canary"),
            (
                "nginx.ingress.kubernetes.io/configuration-snippet",
                "more_set_headers x;",
            ),
            ("nginx.ingress.kubernetes.io/server-alias", "www.a.test"),
            ("example.com/other", "ignored: not ours"),
        ]);
        assert_eq!(
            a.canary,
            Some(Canary {
                weight: 20,
                total: 100,
                header: Some("x-canary".into()),
                header_value: None,
                cookie: None,
            })
        );
        let reasons: Vec<Reason> = c.iter().map(|c| c.reason).collect();
        assert_eq!(
            reasons,
            [Reason::SnippetRefused, Reason::UnsupportedAnnotation]
        );
        assert!(c[1].message.contains("server-alias"));
        // A bad weight: a canary with no traffic, and a condition.
        let (a, c) = annotations(&[
            ("vestibule.dev/canary", "true"),
            ("vestibule.dev/canary-weight", "lots"),
        ]);
        assert_eq!(a.canary.map(|c| c.weight), Some(0));
        assert_eq!(c[0].reason, Reason::InvalidAnnotation);
        // Not a canary.
        let (a, c) = annotations(&[("nginx.ingress.kubernetes.io/canary", "false")]);
        assert!(a.canary.is_none() && c.is_empty());
    }
}
