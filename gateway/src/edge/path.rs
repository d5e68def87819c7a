//! Request path normalization (RFC 3986 §6.2.2), before routing and for
//! what is forwarded: the route table and the upstream must read the same
//! path, or `/app/../secret` matches an `/app` Prefix rule and an upstream
//! that resolves dot-segments serves `/secret`.
//!
//! Like Envoy's `normalize_path: true` with `merge_slashes: false` and
//! `path_with_escaped_slashes_action: KEEP_UNCHANGED`:
//! - percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`) are
//!   decoded, other escapes get upper-case hex (`%2f` -> `%2F`);
//! - dot-segments are removed (`/a/./b/../c` -> `/a/c`; `..` never climbs
//!   above `/`), including encoded ones (`%2e%2e`);
//! - `%2F` is not a separator: it is matched and forwarded as is;
//! - repeated slashes are kept (`//a` is a different path from `/a`);
//! - an escape of a control character (`%00`-`%1F`, `%7F`) or a malformed
//!   escape (`%zz`, a lone `%`) is refused with 400.
//!
//! The query is never touched. A path already in normal form (the common
//! case) costs one scan and no allocation.

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPath {
    /// `%` not followed by two hex digits.
    MalformedEscape,
    /// An escaped control character (NUL, CR, LF, ...). Pingora also
    /// escapes raw control bytes of a request line this way.
    EscapedControl,
}

/// The normalized form of `path` (which starts with `/`), or `None` when it
/// is already normal.
pub fn normalize(path: &str) -> Result<Option<String>, BadPath> {
    let bytes = path.as_bytes();
    if !needs_work(bytes) {
        return Ok(None);
    }
    let decoded = decode_unreserved(bytes)?;
    let normal = remove_dot_segments(&decoded);
    Ok((normal != path).then_some(normal))
}

/// Whether the path has an escape or a segment that starts with a dot.
#[inline]
fn needs_work(path: &[u8]) -> bool {
    path.iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' || (b == b'.' && i > 0 && path[i - 1] == b'/'))
}

/// Decodes escaped unreserved characters, upper-cases the hex of the rest.
fn decode_unreserved(path: &[u8]) -> Result<String, BadPath> {
    // Bytes, not chars: a path may hold UTF-8, copied through unchanged.
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).and_then(|&h| hex(h)),
            path.get(i + 2).and_then(|&l| hex(l)),
        ) else {
            return Err(BadPath::MalformedEscape);
        };
        let c = hi << 4 | lo;
        if c < 0x20 || c == 0x7f {
            return Err(BadPath::EscapedControl);
        }
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(hi)], HEX[usize::from(lo)]]);
        }
        i += 3;
    }
    // Only ASCII was added to what was UTF-8 already.
    String::from_utf8(out).map_err(|_| BadPath::MalformedEscape)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments dropped, `..` drops
/// the segment before it; a trailing `.` or `..` leaves a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.into_iter().enumerate() {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        if i == last {
            out.push("");
        }
    }
    let mut normal = String::with_capacity(path.len());
    for seg in out {
        normal.push('/');
        normal.push_str(seg);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    normal
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        normalize(p).unwrap().unwrap_or_else(|| p.to_string())
    }

    #[test]
    fn normal_paths_are_left_alone() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d", "/a//b", "/a;x", "/~u/x.y"] {
            assert_eq!(normalize(p), Ok(None), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(norm("/app/../secret"), "/secret");
        assert_eq!(norm("/app/./x"), "/app/x");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/b/."), "/a/b/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/../../x"), "/x");
        assert_eq!(norm("/."), "/");
        assert_eq!(norm("/a/.../b"), "/a/.../b");
        assert_eq!(norm("/a/..b/c"), "/a/..b/c");
        assert_eq!(norm("/a//../b"), "/a/b");
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept() {
        assert_eq!(norm("/app/%2e%2e/secret"), "/secret");
        assert_eq!(norm("/app/%2E%2e/secret"), "/secret");
        assert_eq!(norm("/app/.%2e/secret"), "/secret");
        assert_eq!(norm("/%61pp/x"), "/app/x");
        assert_eq!(norm("/a%7e"), "/a~");
        assert_eq!(norm("/a%2fb"), "/a%2Fb");
        assert_eq!(norm("/a%2F..%2Fb"), "/a%2F..%2Fb");
        assert_eq!(norm("/a%20b"), "/a%20b");
        assert_eq!(norm("/%e2%82%ac"), "/%E2%82%AC");
        assert_eq!(norm("/a%252e%252e/x"), "/a%252e%252e/x");
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert_eq!(normalize("/a%00b"), Err(BadPath::EscapedControl));
        assert_eq!(normalize("/a%0d%0a"), Err(BadPath::EscapedControl));
        assert_eq!(normalize("/a%7F"), Err(BadPath::EscapedControl));
        assert_eq!(normalize("/a%zz"), Err(BadPath::MalformedEscape));
        assert_eq!(normalize("/a%2"), Err(BadPath::MalformedEscape));
        assert_eq!(normalize("/a%"), Err(BadPath::MalformedEscape));
    }
}
