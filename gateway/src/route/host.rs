//! Request host normalization without allocation: port stripped, lower-cased,
//! one trailing dot removed, written into a caller-owned stack buffer.

/// Longest DNS name (253) plus slack; longer hosts can't match any vhost.
const MAX_HOST: usize = 256;

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

/// Normalizes a Host header (or URI authority) into `buf`.
///
/// Returns `None` when the host is empty, too long or not ASCII: such a host
/// can't name a configured vhost (only `*` or the default backend apply).
/// IPv6 literals (`[::1]:80`) keep their brackets and lose the port.
#[inline]
pub fn normalize_host<'b>(raw: &[u8], buf: &'b mut HostBuf) -> Option<&'b str> {
    let host = if raw.first() == Some(&b'[') {
        // `[v6]` or `[v6]:port`: the port starts after the bracket.
        let end = raw.iter().position(|&b| b == b']')?;
        &raw[..=end]
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf.0[..host.len()];
    for (o, &b) in out.iter_mut().zip(host) {
        if !b.is_ascii() {
            return None;
        }
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Option<String> {
        let mut buf = HostBuf::new();
        normalize_host(raw.as_bytes(), &mut buf).map(str::to_string)
    }

    #[test]
    fn lowercases_and_strips_port_and_dot() {
        assert_eq!(norm("Foo.Example.COM").unwrap(), "foo.example.com");
        assert_eq!(norm("foo.example.com:8080").unwrap(), "foo.example.com");
        assert_eq!(norm("foo.example.com.:443").unwrap(), "foo.example.com");
        assert_eq!(norm("[::1]:8080").unwrap(), "[::1]");
        assert_eq!(norm("[::1]").unwrap(), "[::1]");
    }

    #[test]
    fn rejects_empty_long_and_non_ascii() {
        assert!(norm("").is_none());
        assert!(norm(":80").is_none());
        assert!(norm(&"a".repeat(300)).is_none());
        assert!(norm("exämple.com").is_none());
        assert!(norm("[::1").is_none());
    }
}
