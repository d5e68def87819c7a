//! Readers of annotation values: nginx sizes, URLs, header names.

use crate::hostname::Hostname;
use crate::model::Scheme;

/// `http(s)://host[:port][/path]`, no query or fragment.
pub(super) fn parse_url(url: &str) -> Option<(Scheme, Hostname, Option<u16>, String)> {
    let (scheme, rest) = match url.split_once("://")? {
        ("http", rest) => (Scheme::Http, rest),
        ("https", rest) => (Scheme::Https, rest),
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|p| *p > 0)?)),
        None => (authority, None),
    };
    let clean = path.len() <= 2048
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    clean.then_some(())?;
    Some((scheme, Hostname::parse(host).ok()?, port, path.to_string()))
}

/// An nginx size: bytes, or with k, m or g (either case).
pub(super) fn body_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, unit) = match v.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_lowercase()),
        _ => (v, 'b'),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

pub(super) fn is_token(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 256
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `"true"` or `"false"`; anything else is reported and read as absent.
pub(super) fn flag(
    known: &std::collections::BTreeMap<&str, &str>,
    name: &str,
    invalid: &mut dyn FnMut(&str, &str, &str),
) -> Option<bool> {
    match known.get(name).copied()? {
        "true" => Some(true),
        "false" => Some(false),
        v => {
            invalid(name, v, "must be \"true\" or \"false\"");
            None
        }
    }
}

/// A comma-separated list of CIDRs or addresses.
pub(super) fn cidrs(v: &str) -> Option<Vec<ipnet::IpNet>> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .ok()
        })
        .collect()
}
