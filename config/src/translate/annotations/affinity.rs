//! `affinity: cookie` with `session-cookie-name`, `session-cookie-max-age`
//! and `session-cookie-path`: sticky sessions.

use std::collections::BTreeMap;

use super::values::is_token;
use crate::model::Affinity;

/// ingress-nginx's default cookie name.
const DEFAULT_COOKIE: &str = "INGRESSCOOKIE";

pub(super) fn read(
    known: &BTreeMap<&str, &str>,
    invalid: &mut dyn FnMut(&str, &str, &str),
) -> Option<Affinity> {
    match known.get("affinity").copied() {
        None => return None,
        Some("cookie") => {}
        Some(v) => {
            invalid("affinity", v, "only \"cookie\"; requests are balanced");
            return None;
        }
    }
    let cookie = match known.get("session-cookie-name") {
        None => DEFAULT_COOKIE.to_string(),
        Some(n) if is_token(n) && n.len() <= 64 => n.to_string(),
        Some(n) => {
            invalid(
                "session-cookie-name",
                n,
                "not a cookie name; INGRESSCOOKIE is used",
            );
            DEFAULT_COOKIE.to_string()
        }
    };
    let max_age_secs = known.get("session-cookie-max-age").and_then(|v| {
        let n = v.trim().parse::<u32>().ok();
        if n.is_none() {
            invalid(
                "session-cookie-max-age",
                v,
                "seconds; a session cookie is set",
            );
        }
        n
    });
    let path = match known.get("session-cookie-path") {
        None => "/".to_string(),
        Some(p)
            if p.starts_with('/')
                && p.len() <= 256
                && p.bytes().all(|b| b.is_ascii_graphic() && b != b';') =>
        {
            p.to_string()
        }
        Some(p) => {
            invalid(
                "session-cookie-path",
                p,
                "an absolute path without ';'; / is used",
            );
            "/".to_string()
        }
    };
    Some(Affinity {
        cookie,
        max_age_secs,
        path,
    })
}
