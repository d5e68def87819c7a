//! The request headers the edge owns. A client may not speak for the
//! gateway: tenant and forwarding headers it sends are removed in every
//! spelling a backend could fold into them (CGI, WSGI, Rack and PHP read
//! `X_Tenant_Id` and `X-Tenant-Id` as one `HTTP_X_TENANT_ID`), and the
//! gateway sets its own values from what it knows about the connection.

use std::net::IpAddr;

use super::client_ip::Client;

use http::HeaderValue;
use pingora_core::Result;
use pingora_http::RequestHeader;

// Header names as `&'static str` in their wire case: Pingora keeps the case
// of each name it inserts, and a `HeaderName` argument would cost one more
// copy per header and request. Removal matches any case.
pub const X_TENANT_ID: &str = "X-Tenant-Id";
const X_FORWARDED_FOR: &str = "X-Forwarded-For";
const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
const X_FORWARDED_HOST: &str = "X-Forwarded-Host";
const X_FORWARDED_PORT: &str = "X-Forwarded-Port";
const X_REAL_IP: &str = "X-Real-IP";
const FORWARDED: &str = "Forwarded";

/// Names only the gateway may send upstream (lower case). Some it sets,
/// the rest it only strips: a backend or framework reads each of them as
/// the client's address, scheme, host or the "original" URL. Client values
/// will be kept only from trusted proxies, once those can be configured.
const PROTECTED: &[&str] = &[
    "x-tenant-id",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-uri",
    "x-real-ip",
    "x-original-url",
    "x-original-uri",
    "x-original-host",
    "x-original-forwarded-for",
    "x-rewrite-url",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "client-ip",
];

/// Hop-by-hop headers (and the proxy's credentials): never copied onto a
/// request the gateway makes itself (mirrors, auth checks).
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// What to do with request header names that contain `_`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Underscores {
    /// Drop every such header (nginx's `underscores_in_headers off`).
    #[default]
    Drop,
    /// Pass them on, except those that read as a protected name once `_`
    /// is read as `-`.
    Allow,
}

/// Whether `name` (lower case, as `http` stores it) equals a protected
/// name with `_` read as `-`.
pub fn protected(name: &str) -> bool {
    PROTECTED.iter().any(|p| folded_eq(p, name))
}

/// Whether `name` reads as `canonical` (lower case) once `_` is read as
/// `-`, as CGI, WSGI, Rack and PHP read header names.
pub fn folded_eq(canonical: &str, name: &str) -> bool {
    canonical.len() == name.len()
        && canonical
            .bytes()
            .zip(name.bytes())
            .all(|(p, n)| p == n || (p == b'-' && n == b'_'))
}

/// Removes the client's protected headers, and headers with `_` in their
/// name unless `underscores` allows them. Allocates only when there is
/// something to remove.
pub fn scrub(req: &mut RequestHeader, underscores: Underscores) {
    remove_where(req, |name| {
        (underscores == Underscores::Drop && name.contains('_')) || protected(name)
    });
}

/// Removes every header whose (lower case) name `doomed` says so;
/// allocates only when there is something to remove.
pub fn remove_where(req: &mut RequestHeader, doomed: impl Fn(&str) -> bool) {
    let names: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|name| doomed(name.as_str()))
        .cloned()
        .collect();
    for name in names {
        req.remove_header(&name);
    }
}

/// What the gateway knows of the request, for the headers it sets.
pub struct Origin<'a> {
    /// The real client, and who connected.
    pub client: Option<&'a Client>,
    /// The TLS listener took the request.
    pub tls: bool,
    /// The request's authority (Host, or `:authority` on HTTP/2), as sent.
    pub authority: Option<&'a HeaderValue>,
    pub tenant: Option<&'a HeaderValue>,
}

/// Sets the tenant and forwarding headers on a scrubbed upstream request.
/// Each is set, never appended, but X-Forwarded-For: a trusted proxy's
/// chain gets that proxy appended (`--trusted-proxies`).
pub fn set_forwarding(req: &mut RequestHeader, origin: &Origin<'_>) -> Result<()> {
    // Room for the seven set below at once: inserted one by one they grew
    // both of the head's maps (values and original case) on most requests.
    req.reserve(7);
    if let Some(tenant) = origin.tenant {
        req.insert_header(X_TENANT_ID, tenant.clone())?;
    }
    let client_ip = origin.client.map(|c| c.ip);
    let ip = client_ip.map(ip_value);
    if let (Some(client), Some(ip)) = (origin.client, &ip) {
        let chain = match &client.forwarded_for {
            Some(chain) => appended(chain, client.peer),
            None => ip.clone(),
        };
        req.insert_header(X_FORWARDED_FOR, chain)?;
        req.insert_header(X_REAL_IP, ip.clone())?;
    }
    let proto = if origin.tls { "https" } else { "http" };
    req.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(proto))?;
    // The port the client addressed: the authority's, else the scheme's.
    let port = origin
        .authority
        .and_then(|a| authority_port(a.as_bytes()))
        .map_or_else(
            || HeaderValue::from_static(if origin.tls { "443" } else { "80" }),
            |p| HeaderValue::from_bytes(p).unwrap_or(HeaderValue::from_static("")),
        );
    req.insert_header(X_FORWARDED_PORT, port)?;
    if let Some(authority) = origin.authority {
        req.insert_header(X_FORWARDED_HOST, authority.clone())?;
    }
    let client = client_ip.zip(ip.as_ref());
    req.insert_header(FORWARDED, forwarded(client, origin.authority, proto))?;
    Ok(())
}

/// `chain, peer`.
fn appended(chain: &HeaderValue, peer: IpAddr) -> HeaderValue {
    let peer = ip_value(peer);
    let mut v = Vec::with_capacity(chain.len() + 2 + peer.len());
    v.extend_from_slice(chain.as_bytes());
    v.extend_from_slice(b", ");
    v.extend_from_slice(peer.as_bytes());
    HeaderValue::from_bytes(&v).unwrap_or(peer)
}

/// RFC 7239: `for=192.0.2.1;host="a.test:8443";proto=https`; an IPv6
/// address is a quoted, bracketed string, the host a quoted string (it may
/// hold `:`, which a token can't).
fn forwarded(
    client: Option<(IpAddr, &HeaderValue)>,
    authority: Option<&HeaderValue>,
    proto: &str,
) -> HeaderValue {
    let mut v = String::with_capacity(64);
    match client {
        Some((IpAddr::V4(_), text)) => {
            v.push_str("for=");
            v.push_str(text.to_str().unwrap_or("unknown"));
        }
        Some((IpAddr::V6(_), text)) => {
            v.push_str("for=\"[");
            v.push_str(text.to_str().unwrap_or(""));
            v.push_str("]\"");
        }
        None => v.push_str("for=unknown"),
    }
    // The authority passed host validation: no quote or backslash in it.
    if let Some(host) = authority.and_then(|a| a.to_str().ok()) {
        v.push_str(";host=\"");
        v.push_str(host);
        v.push('"');
    }
    v.push_str(";proto=");
    v.push_str(proto);
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("for=unknown"))
}

/// The port of a validated authority (`h:8080`, `[::1]:8080`), if any.
/// The port of an authority (`host:port`, `[v6]:port`), if it names one.
pub fn authority_port(authority: &[u8]) -> Option<&[u8]> {
    let after_host = match authority.iter().rposition(|&b| b == b']') {
        Some(end) => &authority[end + 1..],
        None => authority,
    };
    let colon = after_host.iter().position(|&b| b == b':')?;
    Some(&after_host[colon + 1..]).filter(|p| !p.is_empty())
}

/// A client address as a header value. IPv4 is written by hand: `Display`
/// goes through the formatter's padding logic, which costs several times
/// as much per request.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static(""));
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn names(r: &RequestHeader) -> Vec<String> {
        let mut n: Vec<String> = r.headers.keys().map(|k| k.to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn protected_names_go_in_every_spelling() {
        let spoofed = [
            ("X-Tenant-Id", "acme"),
            ("X_Tenant_Id", "acme"),
            ("X-Tenant_Id", "acme"),
            ("x_forwarded_for", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("True-Client-IP", "6.6.6.6"),
            ("X-Original-URL", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("X-Forwarded-Prefix", "/x"),
            ("X-Client-IP", "6.6.6.6"),
            ("keep-me", "1"),
            ("x_custom", "1"),
        ];
        let mut r = request(&spoofed);
        scrub(&mut r, Underscores::Drop);
        assert_eq!(names(&r), ["keep-me"]);
        let mut r = request(&spoofed);
        scrub(&mut r, Underscores::Allow);
        assert_eq!(names(&r), ["keep-me", "x_custom"]);
    }

    #[test]
    fn forwarding_headers_say_what_the_gateway_saw() {
        let mut r = request(&[]);
        let authority = HeaderValue::from_static("a.test:8443");
        let tenant = HeaderValue::from_static("acme");
        let client = Client {
            ip: "10.1.2.3".parse().unwrap(),
            peer: "10.1.2.3".parse().unwrap(),
            forwarded_for: None,
        };
        let origin = Origin {
            client: Some(&client),
            tls: true,
            authority: Some(&authority),
            tenant: Some(&tenant),
        };
        set_forwarding(&mut r, &origin).unwrap();
        let h = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("x-tenant-id"), "acme");
        assert_eq!(h("x-forwarded-for"), "10.1.2.3");
        assert_eq!(h("x-real-ip"), "10.1.2.3");
        assert_eq!(h("x-forwarded-proto"), "https");
        assert_eq!(h("x-forwarded-port"), "8443");
        assert_eq!(h("x-forwarded-host"), "a.test:8443");
        assert_eq!(
            h("forwarded"),
            "for=10.1.2.3;host=\"a.test:8443\";proto=https"
        );
        let v6 = forwarded(
            Some(("::1".parse().unwrap(), &HeaderValue::from_static("::1"))),
            None,
            "http",
        );
        assert_eq!(v6, "for=\"[::1]\";proto=http");
        // A trusted proxy's chain: the proxy is appended, the real client
        // is X-Real-IP and Forwarded's `for`.
        let mut r = request(&[]);
        let client = Client {
            ip: "198.51.100.7".parse().unwrap(),
            peer: "10.0.0.9".parse().unwrap(),
            forwarded_for: Some(HeaderValue::from_static("198.51.100.7, 10.0.0.8")),
        };
        let origin = Origin {
            client: Some(&client),
            tls: false,
            authority: None,
            tenant: None,
        };
        set_forwarding(&mut r, &origin).unwrap();
        let h = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("x-forwarded-for"), "198.51.100.7, 10.0.0.8, 10.0.0.9");
        assert_eq!(h("x-real-ip"), "198.51.100.7");
        assert_eq!(h("forwarded"), "for=198.51.100.7;proto=http");
        assert_eq!(authority_port(b"[::1]:81"), Some(&b"81"[..]));
        assert_eq!(authority_port(b"[::1]"), None);
        assert_eq!(authority_port(b"a.test:"), None);
    }

    #[test]
    fn client_addresses_format_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "100.9.255.199",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip), ip.to_string().as_str());
        }
    }
}
