//! `enable-cors` and its `cors-*` settings, with ingress-nginx's defaults.

use std::collections::BTreeMap;

use super::values::flag;
use crate::model::{Cors, CorsOrigins, HeaderText};

const DEFAULT_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
const DEFAULT_HEADERS: &str = "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
const DEFAULT_MAX_AGE: u32 = 1_728_000;

/// The policy `enable-cors: "true"` asks for, if it does.
pub(super) fn read(
    known: &BTreeMap<&str, &str>,
    invalid: &mut dyn FnMut(&str, &str, &str),
) -> Option<Box<Cors>> {
    if flag(known, "enable-cors", invalid) != Some(true) {
        return None;
    }
    // The value, or the default (always a valid header value).
    let mut text = |name: &str, default: &str| -> Option<HeaderText> {
        let fallback = || HeaderText::try_from(default.to_string()).ok();
        known
            .get(name)
            .and_then(|v| {
                let parsed = HeaderText::try_from(v.trim().to_string()).ok();
                if parsed.is_none() {
                    invalid(name, v, "not a header value; the default stays");
                }
                parsed
            })
            .or_else(fallback)
    };
    let allow_methods = text("cors-allow-methods", DEFAULT_METHODS)?;
    let allow_headers = text("cors-allow-headers", DEFAULT_HEADERS)?;
    let expose_headers = text("cors-expose-headers", "").filter(|t| !t.as_str().is_empty());
    let allow_origins = match known.get("cors-allow-origin").map(|v| v.trim()) {
        None | Some("*") | Some("") => CorsOrigins::Any,
        Some(v) => {
            let list: Vec<String> = v
                .split(',')
                .map(|o| o.trim().to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect();
            let well_formed = |o: &String| {
                o.len() <= 256
                    && o.split_once("://").is_some_and(|(s, h)| {
                        matches!(s, "http" | "https")
                            && !h.is_empty()
                            && h.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-.:*".contains(&b))
                    })
            };
            if list.iter().all(well_formed) {
                CorsOrigins::List(list)
            } else {
                // An unreadable list admits no one rather than everyone.
                invalid(
                    "cors-allow-origin",
                    v,
                    "a comma-separated list of http(s)://host[:port] origins (or *); no origin is admitted",
                );
                CorsOrigins::List(Vec::new())
            }
        }
    };
    let allow_credentials = flag(known, "cors-allow-credentials", invalid).unwrap_or(true);
    let max_age = match known.get("cors-max-age") {
        None => DEFAULT_MAX_AGE,
        Some(v) => v.trim().parse().unwrap_or_else(|_| {
            invalid("cors-max-age", v, "seconds; the default stays");
            DEFAULT_MAX_AGE
        }),
    };
    Some(Box::new(Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials,
        max_age,
    }))
}
