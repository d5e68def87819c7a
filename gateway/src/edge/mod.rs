//! Request hygiene at the edge: framing and shape checks that Pingora's
//! parser lets through but that an upstream might read differently
//! (request smuggling), the size limits with their proper status codes, and
//! the one canonical form of the request target that routing, logging and
//! the upstream all read. Pure: a parsed request head in, a verdict out.

pub mod client_ip;
pub mod headers;
pub mod path;

use http::uri::{PathAndQuery, Uri};
use http::{header, HeaderValue, Method, Version};
use pingora_http::RequestHeader;

/// Longest request target (path + query) accepted; longer gets 414.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Most header fields accepted; more gets 431 (Pingora's own cap is 256,
/// answered with a bare 400).
pub const MAX_HEADER_COUNT: usize = 100;
/// Longest method accepted (WebDAV's longest is 16 bytes); Pingora takes
/// any token of any length.
pub const MAX_METHOD_BYTES: usize = 32;

/// Why a request is refused before routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// 400, with a short reason for the body.
    BadRequest(&'static str),
    /// 414.
    UriTooLong,
    /// 431.
    HeadersTooLarge,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::UriTooLong => 414,
            Reject::HeadersTooLarge => 431,
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            Reject::BadRequest(why) => why,
            Reject::UriTooLong => "request target too long\n",
            Reject::HeadersTooLarge => "request header fields too large\n",
        }
    }
}

/// Checks a request head; `max_header_bytes` bounds the whole head.
pub fn check(req: &RequestHeader, max_header_bytes: usize) -> Result<(), Reject> {
    let target_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_TARGET_BYTES {
        return Err(Reject::UriTooLong);
    }
    let headers = &req.headers;
    if headers.len() > MAX_HEADER_COUNT || head_bytes(req) > max_header_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    // HTTP/1.1 requires Host (RFC 9112 §3.2): a request without one is
    // refused rather than routed by guesswork. HTTP/2 carries :authority.
    if req.version == Version::HTTP_11 && !headers.contains_key(header::HOST) {
        return Err(Reject::BadRequest("missing Host header\n"));
    }

    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    let has_te = match (te.next(), te.next()) {
        (None, _) => false,
        // Only the single coding `chunked` is accepted: lists, unknown or
        // repeated codings are where front and back ends disagree.
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => true,
        _ => return Err(Reject::BadRequest("unsupported Transfer-Encoding\n")),
    };
    let mut cl = headers.get_all(header::CONTENT_LENGTH).iter();
    match (cl.next(), cl.next()) {
        (None, _) => {}
        (Some(v), None) => {
            let digits = v.as_bytes().trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 18 {
                return Err(Reject::BadRequest("invalid Content-Length\n"));
            }
            if has_te {
                return Err(Reject::BadRequest(
                    "both Content-Length and Transfer-Encoding\n",
                ));
            }
        }
        _ => return Err(Reject::BadRequest("repeated Content-Length\n")),
    }
    Ok(())
}

/// Rewrites the request target into the form every later phase reads, or
/// refuses it:
/// - an absolute-form target (`GET http://host/x HTTP/1.0`, RFC 9112
///   §3.2.2) becomes origin-form with its authority as Host, so routing,
///   redirects, the 421 check and tenant rules see the authority exactly as
///   they see a Host header (Pingora keeps such a target verbatim and shows
///   only its path in the URI);
/// - the path is normalized ([`path::normalize`]) before it is matched and
///   forwarded;
/// - a target that is none of origin-form, absolute-form (`http`/`https`)
///   or `*` (OPTIONS), is not UTF-8, or follows an overlong method is 400.
///   Pingora percent-encodes raw spaces and control bytes in a request line
///   it could not parse, so two spaces before the target show up here as a
///   target starting with `%20`, and a raw NUL as `%00`.
pub fn canonicalize(req: &mut RequestHeader) -> Result<(), Reject> {
    if req.method.as_str().len() > MAX_METHOD_BYTES {
        return Err(Reject::BadRequest("method too long\n"));
    }
    if !req.raw_path_is_utf8() {
        return Err(Reject::BadRequest("request target is not UTF-8\n"));
    }
    let raw = req.raw_path();
    if raw.first() != Some(&b'/') {
        if raw == b"*" && req.method == Method::OPTIONS {
            return Ok(());
        }
        let Some((authority, pq)) = split_absolute(raw) else {
            return Err(Reject::BadRequest("invalid request target\n"));
        };
        let authority =
            HeaderValue::from_bytes(authority).map_err(|_| Reject::BadRequest(BAD_AUTHORITY))?;
        let pq = if pq.first() == Some(&b'/') {
            PathAndQuery::try_from(pq)
        } else {
            // `http://host` or `http://host?q`: the path is `/`.
            PathAndQuery::try_from([b"/", pq].concat())
        }
        .map_err(|_| Reject::BadRequest("invalid request target\n"))?;
        // Pingora already refused a Host that differs from the authority.
        if !req.headers.contains_key(header::HOST) {
            req.insert_header(header::HOST, authority)
                .map_err(|_| Reject::BadRequest(BAD_AUTHORITY))?;
        }
        req.set_uri(Uri::from(pq));
    }
    match path::normalize(req.uri.path()) {
        Ok(None) => Ok(()),
        Ok(Some(normal)) => {
            let pq = match req.uri.query() {
                Some(q) => format!("{normal}?{q}"),
                None => normal,
            };
            let mut parts = req.uri.clone().into_parts();
            parts.path_and_query = Some(
                PathAndQuery::try_from(pq)
                    .map_err(|_| Reject::BadRequest("invalid request target\n"))?,
            );
            let uri = Uri::from_parts(parts)
                .map_err(|_| Reject::BadRequest("invalid request target\n"))?;
            req.set_uri(uri);
            Ok(())
        }
        Err(path::BadPath::MalformedEscape) => {
            Err(Reject::BadRequest("malformed percent-encoding in path\n"))
        }
        Err(path::BadPath::EscapedControl) => {
            Err(Reject::BadRequest("control character in path\n"))
        }
    }
}

const BAD_AUTHORITY: &str = "invalid authority in request target\n";

/// `http://authority/path?q` -> (`authority`, `/path?q`); other schemes,
/// userinfo and empty authorities are not split.
fn split_absolute(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = &target[..colon];
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return None;
    }
    let rest = target[colon..].strip_prefix(b"://")?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (authority, pq) = rest.split_at(end);
    if authority.is_empty() || authority.contains(&b'@') {
        return None;
    }
    // A fragment never reaches the wire (Pingora strips it too).
    let pq = pq.split(|&b| b == b'#').next().unwrap_or_default();
    Some((authority, pq))
}

/// Approximate size of the request head on the wire.
pub fn head_bytes(req: &RequestHeader) -> usize {
    let line =
        req.method.as_str().len() + req.uri.path_and_query().map_or(1, |pq| pq.as_str().len()) + 12;
    req.headers
        .iter()
        .fold(line, |acc, (k, v)| acc + k.as_str().len() + v.len() + 4)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn verdict(headers: &[(&str, &str)]) -> Result<(), Reject> {
        check(&req(Version::HTTP_11, headers), 32 * 1024)
    }

    #[test]
    fn framing_rules() {
        let host = ("host", "a.test");
        assert_eq!(verdict(&[host]), Ok(()));
        assert_eq!(verdict(&[host, ("content-length", "12")]), Ok(()));
        assert_eq!(verdict(&[host, ("transfer-encoding", " Chunked ")]), Ok(()));
        for bad in [
            vec![
                host,
                ("content-length", "3"),
                ("transfer-encoding", "chunked"),
            ],
            vec![host, ("content-length", "3"), ("content-length", "3")],
            vec![host, ("content-length", "3, 3")],
            vec![host, ("content-length", "+3")],
            vec![host, ("content-length", "")],
            vec![host, ("content-length", "99999999999999999999")],
            vec![host, ("transfer-encoding", "identity, chunked")],
            vec![host, ("transfer-encoding", "gzip")],
            vec![
                host,
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            vec![],
        ] {
            assert!(
                matches!(verdict(&bad), Err(Reject::BadRequest(_))),
                "{bad:?} should be refused"
            );
        }
    }

    fn canonical(method: &str, target: &str) -> Result<(String, Option<String>), Reject> {
        let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        r.set_version(Version::HTTP_10);
        canonicalize(&mut r)?;
        let host = r
            .headers
            .get(header::HOST)
            .map(|h| h.to_str().unwrap().to_string());
        Ok((String::from_utf8(r.raw_path().to_vec()).unwrap(), host))
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_host() {
        assert_eq!(
            canonical("GET", "http://Globex.example.com/api/x?y=1"),
            Ok(("/api/x?y=1".into(), Some("Globex.example.com".into())))
        );
        assert_eq!(
            canonical("GET", "HTTPS://a.test:8443"),
            Ok(("/".into(), Some("a.test:8443".into())))
        );
        assert_eq!(
            canonical("GET", "http://a.test?q"),
            Ok(("/?q".into(), Some("a.test".into())))
        );
        assert_eq!(
            canonical("GET", "http://a.test/app/../secret"),
            Ok(("/secret".into(), Some("a.test".into())))
        );
        for bad in ["ftp://a.test/x", "http:/a.test/x", "http:///x", "a.test:80"] {
            assert!(canonical("GET", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_and_methods_are_checked() {
        assert_eq!(canonical("OPTIONS", "*").map(|r| r.0), Ok("*".into()));
        assert!(canonical("GET", "*").is_err());
        assert!(canonical("GET", "%20/x").is_err());
        assert!(canonical("GET", "/a%00b").is_err());
        assert!(canonical(&"A".repeat(MAX_METHOD_BYTES + 1), "/").is_err());
        assert_eq!(
            canonical("GET", "/a/%2e%2e/b?x=/../").map(|r| r.0),
            Ok("/b?x=/../".into())
        );
        assert_eq!(canonical("GET", "/a/b").map(|r| r.0), Ok("/a/b".into()));
    }

    #[test]
    fn http10_may_omit_host() {
        assert_eq!(check(&req(Version::HTTP_10, &[]), 32 * 1024), Ok(()));
    }

    #[test]
    fn size_limits_have_their_own_codes() {
        let many: Vec<(String, &str)> = (0..=MAX_HEADER_COUNT)
            .map(|i| (format!("x-{i}"), "v"))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(verdict(&many), Err(Reject::HeadersTooLarge));
        let mut long = RequestHeader::build(
            "GET",
            format!("/{}", "a".repeat(MAX_TARGET_BYTES)).as_bytes(),
            None,
        )
        .unwrap();
        long.append_header("host", "a.test").unwrap();
        assert_eq!(check(&long, usize::MAX), Err(Reject::UriTooLong));
        let big = "b".repeat(2000);
        assert_eq!(
            check(&req(Version::HTTP_11, &[("host", "a"), ("x", &big)]), 1024),
            Err(Reject::HeadersTooLarge)
        );
    }
}
