//! An HTTPRoute rule's matches and filters, converted to route keys and
//! IR filters. Pure: what needs the cluster (backends, mirror pools) is
//! left to the caller as references.

use crate::gateway_api::httproutes::{
    HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestMirrorBackendRef,
    HttpRouteRulesFiltersType as FilterType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType as HeaderType, HttpRouteRulesMatchesMethod as M,
    HttpRouteRulesMatchesPathType as PathType, HttpRouteRulesMatchesQueryParamsType as QueryType,
};
use crate::hostname::Hostname;
use crate::model::{
    Conditions, Filter, Header, HeaderEdits, HeaderName, HeaderText, Method, PathMatch,
    PathRewrite, QueryParam, Redirect, RedirectStatus, Rewrite, Scheme,
};

use super::super::{path_match, RouteKey};

/// A rule as converted: its route keys, its filters, and what answers it.
pub(super) struct Rule<'r> {
    pub keys: Vec<RouteKey>,
    pub filters: Vec<Filter>,
    /// Mirror filters, whose backends the caller resolves.
    pub mirrors: Vec<&'r HttpRouteRulesFiltersRequestMirrorBackendRef>,
    pub action: Action,
    /// The rule's `timeouts`: the shorter of `request` and
    /// `backendRequest`, enforced as the wait for the upstream's response.
    pub timeout_ms: Option<u32>,
}

/// What answers a rule's requests.
pub(super) enum Action {
    /// Its backendRefs.
    Forward,
    Redirect(Redirect),
}

/// The header edits of a header modifier filter field (either kind).
macro_rules! modifier {
    ($field:expr, $name:literal) => {{
        let m = $field
            .as_ref()
            .ok_or(concat!($name, " without its field"))?;
        edits(
            m.set.iter().flatten().map(|h| (&h.name, &h.value)),
            m.add.iter().flatten().map(|h| (&h.name, &h.value)),
            m.remove.iter().flatten(),
        )?
    }};
}

/// The path modifier of a URLRewrite or RequestRedirect field, checked.
macro_rules! path_modifier {
    ($field:expr) => {
        $field
            .as_ref()
            .map(|p| {
                path_rewrite(
                    p.replace_full_path.as_deref(),
                    p.replace_prefix_match.as_deref(),
                )
            })
            .transpose()?
    };
}

/// Converts `rule`; `Err` says what in it is not served (the rule is then
/// dropped and its parent's `Accepted` says why).
pub(super) fn convert(rule: &HttpRouteRules) -> Result<Rule<'_>, String> {
    let matches = rule.matches.as_deref().unwrap_or_default();
    let mut keys = Vec::new();
    if matches.is_empty() {
        keys.push(RouteKey::path(PathMatch::prefix("/")));
    }
    for m in matches {
        let key = route_key(m)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if rule
        .backend_refs
        .iter()
        .flatten()
        .any(|b| b.filters.as_ref().is_some_and(|f| !f.is_empty()))
    {
        return Err("backendRef filters are not supported".into());
    }
    let mut filters = Vec::new();
    let mut mirrors = Vec::new();
    let mut action = Action::Forward;
    for f in rule.filters.iter().flatten() {
        match f.r#type {
            // The two modifiers are distinct generated types of one shape.
            FilterType::RequestHeaderModifier => filters.push(Filter::RequestHeaders(modifier!(
                f.request_header_modifier,
                "RequestHeaderModifier"
            ))),
            FilterType::ResponseHeaderModifier => filters.push(Filter::ResponseHeaders(modifier!(
                f.response_header_modifier,
                "ResponseHeaderModifier"
            ))),
            FilterType::RequestRedirect => {
                action = Action::Redirect(redirect(f)?);
            }
            FilterType::UrlRewrite => {
                let r = f
                    .url_rewrite
                    .as_ref()
                    .ok_or("URLRewrite without its field")?;
                let path = path_modifier!(r.path);
                filters.push(Filter::Rewrite(Rewrite {
                    hostname: r.hostname.as_deref().map(hostname).transpose()?,
                    path,
                }));
            }
            FilterType::RequestMirror => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or("RequestMirror without its field")?;
                if m.percent.is_some() || m.fraction.is_some() {
                    return Err("RequestMirror percent and fraction are not supported".into());
                }
                mirrors.push(&m.backend_ref);
            }
            FilterType::ExtensionRef => return Err("ExtensionRef filters are not supported".into()),
            FilterType::Cors => return Err("CORS filters are not supported".into()),
        }
    }
    if matches!(action, Action::Redirect(_))
        && filters.iter().any(|f| matches!(f, Filter::Rewrite(_)))
    {
        return Err("RequestRedirect and URLRewrite cannot be used together".into());
    }
    // ReplacePrefixMatch replaces the matched prefix: only a PathPrefix
    // match has one.
    let replaces_prefix = filters.iter().any(|f| {
        matches!(
            f,
            Filter::Rewrite(Rewrite {
                path: Some(PathRewrite::Prefix(_)),
                ..
            })
        )
    }) || matches!(
        &action,
        Action::Redirect(Redirect {
            path: Some(PathRewrite::Prefix(_)),
            ..
        })
    );
    if replaces_prefix && keys.iter().any(|k| matches!(k.path, PathMatch::Exact(_))) {
        return Err("ReplacePrefixMatch needs PathPrefix matches".into());
    }
    let timeouts = rule.timeouts.as_ref();
    let request = timeouts
        .and_then(|t| t.request.as_deref())
        .map(duration_ms)
        .transpose()?;
    let backend = timeouts
        .and_then(|t| t.backend_request.as_deref())
        .map(duration_ms)
        .transpose()?;
    // Zero disables a timeout (the spec's rule).
    let timeout_ms = [request, backend]
        .into_iter()
        .flatten()
        .filter(|ms| *ms > 0)
        .min();
    Ok(Rule {
        keys,
        filters,
        mirrors,
        action,
        timeout_ms,
    })
}

/// A Gateway API Duration (GEP-2257: one to four `<number><unit>` parts,
/// units h, m, s, ms, numbers of at most five digits) in milliseconds.
fn duration_ms(text: &str) -> Result<u32, String> {
    let bad = || format!("timeout {text:?} is not a Gateway API duration");
    let (mut total, mut parts, mut rest) = (0u64, 0, text);
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    u32::try_from(total).map_err(|_| bad())
}

fn route_key(m: &HttpRouteRulesMatches) -> Result<RouteKey, String> {
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.as_deref())
        .unwrap_or("/");
    let kind = m
        .path
        .as_ref()
        .and_then(|p| p.r#type.clone())
        .unwrap_or(PathType::PathPrefix);
    let path = match kind {
        PathType::Exact => path_match("Exact", Some(value))?,
        PathType::PathPrefix => path_match("Prefix", Some(value))?,
        PathType::RegularExpression => {
            return Err("RegularExpression path matches are not supported".into())
        }
    };
    let mut conditions = Conditions {
        method: m.method.as_ref().map(method),
        ..Default::default()
    };
    for h in m.headers.iter().flatten() {
        if h.r#type.as_ref().is_some_and(|t| *t != HeaderType::Exact) {
            return Err("RegularExpression header matches are not supported".into());
        }
        let header = header(&h.name, &h.value)?;
        // Only the first of equivalent names counts (the spec's rule).
        if !conditions.headers.iter().any(|c| c.name == header.name) {
            conditions.headers.push(header);
        }
    }
    conditions.headers.sort();
    for q in m.query_params.iter().flatten() {
        if q.r#type.as_ref().is_some_and(|t| *t != QueryType::Exact) {
            return Err("RegularExpression query matches are not supported".into());
        }
        if !conditions.query.iter().any(|c| c.name == q.name) {
            conditions.query.push(QueryParam {
                name: q.name.clone(),
                value: q.value.clone(),
            });
        }
    }
    conditions.query.sort();
    Ok(RouteKey { path, conditions })
}

fn method(m: &M) -> Method {
    match m {
        M::Get => Method::Get,
        M::Head => Method::Head,
        M::Post => Method::Post,
        M::Put => Method::Put,
        M::Delete => Method::Delete,
        M::Connect => Method::Connect,
        M::Options => Method::Options,
        M::Trace => Method::Trace,
        M::Patch => Method::Patch,
    }
}

fn header(name: &str, value: &str) -> Result<Header, String> {
    Ok(Header {
        name: HeaderName::try_from(name.to_string())?,
        value: HeaderText::try_from(value.to_string())?,
    })
}

fn edits<'a>(
    set: impl Iterator<Item = (&'a String, &'a String)>,
    add: impl Iterator<Item = (&'a String, &'a String)>,
    remove: impl Iterator<Item = &'a String>,
) -> Result<HeaderEdits, String> {
    Ok(HeaderEdits {
        set: set.map(|(n, v)| header(n, v)).collect::<Result<_, _>>()?,
        add: add.map(|(n, v)| header(n, v)).collect::<Result<_, _>>()?,
        remove: remove
            .map(|n| HeaderName::try_from(n.clone()))
            .collect::<Result<_, _>>()?,
    })
}

fn hostname(h: &str) -> Result<Hostname, String> {
    Hostname::parse(h).map_err(|e| format!("hostname {h:?}: {e}"))
}

fn path_rewrite(full: Option<&str>, prefix: Option<&str>) -> Result<PathRewrite, String> {
    let checked = |p: &str| path_match("Exact", Some(p)).map(|_| p.to_string());
    match (full, prefix) {
        (Some(p), None) => Ok(PathRewrite::Full(checked(p)?)),
        (None, Some(p)) => Ok(PathRewrite::Prefix(checked(p)?)),
        _ => Err(
            "a path modifier needs exactly one of replaceFullPath and replacePrefixMatch".into(),
        ),
    }
}

fn redirect(f: &HttpRouteRulesFilters) -> Result<Redirect, String> {
    use crate::gateway_api::httproutes::HttpRouteRulesFiltersRequestRedirectScheme as S;
    let r = f
        .request_redirect
        .as_ref()
        .ok_or("RequestRedirect without its field")?;
    let status = match r.status_code {
        None => RedirectStatus::FOUND,
        Some(code) => u16::try_from(code)
            .map_err(|_| format!("redirect status {code}"))
            .and_then(RedirectStatus::try_from)?,
    };
    let port = r
        .port
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or(format!("redirect port {p}"))
        })
        .transpose()?;
    let path = path_modifier!(r.path);
    Ok(Redirect {
        scheme: r.scheme.as_ref().map(|s| match s {
            S::Http => Scheme::Http,
            S::Https => Scheme::Https,
        }),
        hostname: r.hostname.as_deref().map(hostname).transpose()?,
        port,
        path,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_api_durations() {
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("1s"), Ok(1_000));
        assert_eq!(duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(duration_ms("1m2s3ms"), Ok(62_003));
        assert_eq!(duration_ms("0s"), Ok(0));
        for bad in [
            "",
            "1",
            "1d",
            "s",
            "123456ms",
            "1h1m1s1ms1ms",
            "-1s",
            "1.5s",
        ] {
            assert!(duration_ms(bad).is_err(), "{bad}");
        }
    }
}
