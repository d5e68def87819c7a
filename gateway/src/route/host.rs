//! Request host validation and normalization without allocation: the Host
//! header or URI authority checked against RFC 3986 (reg-name or IP literal,
//! optional port), port stripped, lower-cased, one trailing dot removed,
//! written into a caller-owned stack buffer.

use std::net::Ipv6Addr;

/// Longest DNS name (253) plus slack; longer hosts can't match any vhost.
const MAX_HOST: usize = 256;
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// Stack storage for a normalized host.
pub struct HostBuf([u8; MAX_HOST]);

impl HostBuf {
    pub fn new() -> Self {
        HostBuf([0; MAX_HOST])
    }
}

impl Default for HostBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a host can't be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadHost {
    /// No host at all (an HTTP/1.0 request without Host): only the `*`
    /// vhost or the default backend can serve it.
    Empty,
    /// Not a reg-name or IP literal with an optional port: 400. Anything
    /// else would reach the default backend with the tenant-looking name
    /// still in Host (`acme.example.com..`, `h:80:80`, `h%2e`, `a, b`).
    Invalid,
}

/// Validates and normalizes a Host header (or URI authority, or SNI) into
/// `buf`.
///
/// Accepted: DNS-style names (labels of letters, digits, `-` and `_`, each
/// 1-63 bytes, at most one trailing dot, which is dropped) and bracketed
/// IPv6 literals, each with an optional numeric port. Percent-encoding,
/// sub-delimiters, quotes, spaces and empty labels are refused: no
/// configured host can contain them, and an upstream might read them
/// differently than the route table did.
#[inline]
pub fn normalize_host<'b>(raw: &[u8], buf: &'b mut HostBuf) -> Result<&'b str, BadHost> {
    if raw.is_empty() {
        return Err(BadHost::Empty);
    }
    let (host, port) = if raw[0] == b'[' {
        // `[v6]` or `[v6]:port`: the port starts after the bracket.
        let end = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or(BadHost::Invalid)?;
        let literal = std::str::from_utf8(&raw[1..end]).map_err(|_| BadHost::Invalid)?;
        literal.parse::<Ipv6Addr>().map_err(|_| BadHost::Invalid)?;
        let rest = &raw[end + 1..];
        let port = match rest.split_first() {
            None => &[][..],
            Some((b':', port)) => port,
            Some(_) => return Err(BadHost::Invalid),
        };
        (&raw[..=end], port)
    } else {
        match raw.iter().position(|&b| b == b':') {
            Some(colon) => (&raw[..colon], &raw[colon + 1..]),
            None => (raw, &[][..]),
        }
    };
    if !valid_port(port) {
        return Err(BadHost::Invalid);
    }
    let host = if raw[0] == b'[' {
        host
    } else {
        let name = host.strip_suffix(b".").unwrap_or(host);
        if !valid_name(name) {
            return Err(BadHost::Invalid);
        }
        name
    };
    if host.len() > MAX_HOST {
        return Err(BadHost::Invalid);
    }
    let out = &mut buf.0[..host.len()];
    for (o, &b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).map_err(|_| BadHost::Invalid)
}

/// `*DIGIT` up to 65535 (RFC 3986 allows an empty port).
fn valid_port(port: &[u8]) -> bool {
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
}

/// Dot-separated labels of letters, digits, `-` and `_`, none empty.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether `label` (already lower-cased) is a DNS label a wildcard host may
/// stand for: letters, digits and inner hyphens, 1-63 bytes. `*.x` matches
/// `a.x`, never `-.x`, `_a.x` or `*.x`.
#[inline]
pub fn wildcard_label(label: &str) -> bool {
    let b = label.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            b.len() <= MAX_LABEL
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, BadHost> {
        let mut buf = HostBuf::new();
        normalize_host(raw.as_bytes(), &mut buf).map(str::to_string)
    }

    #[test]
    fn lowercases_and_strips_port_and_dot() {
        assert_eq!(norm("Foo.Example.COM").unwrap(), "foo.example.com");
        assert_eq!(norm("foo.example.com:8080").unwrap(), "foo.example.com");
        assert_eq!(norm("foo.example.com.:443").unwrap(), "foo.example.com");
        assert_eq!(norm("foo.example.com:").unwrap(), "foo.example.com");
        assert_eq!(norm("[::1]:8080").unwrap(), "[::1]");
        assert_eq!(norm("[::1]").unwrap(), "[::1]");
        assert_eq!(norm("[2001:DB8::1]").unwrap(), "[2001:db8::1]");
        assert_eq!(norm("127.0.0.1:80").unwrap(), "127.0.0.1");
        assert_eq!(norm("_srv.a-b.test").unwrap(), "_srv.a-b.test");
    }

    #[test]
    fn refuses_what_is_not_a_host() {
        assert_eq!(norm(""), Err(BadHost::Empty));
        for bad in [
            ":80",
            "hooli.example.com..",
            ".hooli.example.com",
            "a..b",
            "h:80:80",
            "h:x",
            "h:65536",
            "h:123456",
            "h/x",
            "h?x",
            "h#x",
            "\"h\"",
            "[h]",
            "[::1",
            "[::1]x",
            "[::1]:8x",
            "h%2e",
            "h%2e%2e",
            "h%00",
            "a, b",
            "a b",
            "a\tb",
            "exämple.com",
            "*.a.test",
            "a@b",
            ".",
        ] {
            assert_eq!(norm(bad), Err(BadHost::Invalid), "{bad:?}");
        }
        assert_eq!(norm(&"a".repeat(64)), Err(BadHost::Invalid));
        let long = vec!["a".repeat(60); 5].join(".");
        assert_eq!(norm(&long), Err(BadHost::Invalid));
    }

    #[test]
    fn wildcards_stand_for_one_dns_label() {
        for ok in ["a", "a-b", "0", "x9"] {
            assert!(wildcard_label(ok), "{ok}");
        }
        for bad in ["", "-", "-a", "a-", "_a", "*", "a b", "a.b"] {
            assert!(!wildcard_label(bad), "{bad}");
        }
    }
}
