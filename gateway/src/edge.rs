//! Request hygiene at the edge: framing and shape checks that Pingora's
//! parser lets through but that an upstream might read differently
//! (request smuggling), and the size limits with their proper status codes.
//! Pure: a parsed request head in, a verdict out.

use http::{header, Version};
use pingora_http::RequestHeader;

/// Longest request target (path + query) accepted; longer gets 414.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Most header fields accepted; more gets 431 (Pingora's own cap is 256,
/// answered with a bare 400).
pub const MAX_HEADER_COUNT: usize = 100;

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
