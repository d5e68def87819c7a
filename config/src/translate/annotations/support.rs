//! How Vestibule treats each ingress-nginx annotation (the `migrate`
//! report, the conditions, and the README's table, which a test keeps equal
//! to [`markdown_table`]).

/// How Vestibule treats an ingress-nginx annotation (`vestibule-operator
/// migrate` reports it per Ingress).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Support {
    /// Behaves as ingress-nginx documents it.
    Supported,
    /// Served, with a difference the note says.
    Approximated,
    /// No effect (a condition and an Event say so).
    Unsupported,
    /// Never accepted: raw configuration (snippets).
    Refused,
}

/// How `name` (without prefix) is treated, and a note for people.
pub fn classify(name: &str) -> (Support, &'static str) {
    if name.ends_with("snippet") || name.ends_with("snippets") {
        return (
            Support::Refused,
            "raw proxy configuration is never accepted (CVE-2025-1974)",
        );
    }
    match name {
        "canary"
        | "canary-weight"
        | "canary-weight-total"
        | "canary-by-header"
        | "canary-by-cookie" => {
            (Support::Supported, "")
        }
        "canary-by-header-value" => (
            Support::Approximated,
            "an exact header value; canary-by-header-pattern is not supported",
        ),
        "permanent-redirect-code"
        | "app-root"
        | "upstream-vhost"
        | "proxy-body-size"
        | "whitelist-source-range"
        | "denylist-source-range"
        | "ssl-redirect"
        | "force-ssl-redirect" => (Support::Supported, ""),
        "permanent-redirect" | "temporal-redirect" => (
            Support::Approximated,
            "the request's query string is kept on the target URL",
        ),
        "backend-protocol" => (
            Support::Approximated,
            "HTTP, HTTPS, GRPC, GRPCS and H2C; a TLS upstream's certificate is verified (against the system roots, or proxy-ssl-secret's ca.crt) unless proxy-ssl-verify is \"off\", where ingress-nginx does not verify by default",
        ),
        "proxy-ssl-verify" | "proxy-ssl-name" => (Support::Supported, ""),
        "proxy-ssl-secret" => (
            Support::Approximated,
            "its ca.crt verifies the upstream (no client certificate); the Secret must be in the Ingress's namespace, of type kubernetes.io/tls or labelled vestibule.dev/upstream-ca=true",
        ),
        "proxy-ssl-ca-configmap" => (
            Support::Supported,
            "Vestibule's own (under vestibule.dev/ too): the ca.crt of a ConfigMap in the Ingress's namespace labelled vestibule.dev/upstream-ca=true (trust-manager bundles) verifies the upstream",
        ),
        "proxy-ssl-server-name" => (
            Support::Approximated,
            "SNI is always sent to TLS upstreams",
        ),
        "enable-cors"
        | "cors-allow-origin"
        | "cors-allow-methods"
        | "cors-allow-headers"
        | "cors-expose-headers"
        | "cors-allow-credentials"
        | "cors-max-age" => (
            Support::Approximated,
            "admitted origins get Access-Control-Allow-Origin (and -Credentials, -Expose-Headers) on responses; an OPTIONS request from one is answered 204 here with -Methods, -Headers and -Max-Age; Vary: Origin is added when an origin is echoed",
        ),
        "auth-url" => (
            Support::Approximated,
            "the original request's headers (no body) go to the URL with X-Original-URL, X-Original-Method and the forwarding headers; 2xx passes, 401 and 403 are the client's answer, anything else (or no answer within 5 s) is a 500; no cache",
        ),
        "auth-method" | "auth-response-headers" => (Support::Supported, ""),
        "auth-signin" => (
            Support::Approximated,
            "a 401 becomes a 302 to it, with rd=<original URL> added when it has no query; $host, $scheme, $request_uri and $escaped_request_uri are filled, no other nginx variable",
        ),
        "limit-rps" | "limit-rpm" | "limit-burst-multiplier" | "limit-whitelist" => (
            Support::Approximated,
            "per client address, per Ingress and gateway replica (not shared between replicas; kept across config changes); 503 beyond the rate and its burst (the rate times limit-burst-multiplier, 5, as nginx's burst=B nodelay)",
        ),
        "limit-connections" => (
            Support::Approximated,
            "requests in flight per client address, per route and gateway replica; 503 beyond it",
        ),
        "affinity" | "session-cookie-name" | "session-cookie-max-age" | "session-cookie-path" => (
            Support::Approximated,
            "the cookie names an endpoint by an opaque id (the same on every replica); the client stays on it while it is ready, and is pinned to another (a new cookie) when it is not; HttpOnly, Secure on HTTPS; affinity-mode is always persistent",
        ),
        "auth-type" | "auth-secret" | "auth-secret-type" | "auth-realm" | "auth-tls-secret"
        | "auth-tls-verify-client" | "auth-tls-verify-depth" | "auth-tls-pass-certificate-to-upstream" => (
            Support::Unsupported,
            "basic/digest auth and client certificates are not supported: an Ingress asking for them (auth-type, auth-secret, auth-tls-secret) has its routes refused (500) rather than served unprotected",
        ),
        "use-regex" => (
            Support::Approximated,
            "the Ingress's own Prefix and ImplementationSpecific paths become case-insensitive regular expressions anchored at the start (the regex crate: no backreferences or lookaround); ingress-nginx turns every path of the host into one",
        ),
        "rewrite-target" => (
            Support::Supported,
            "",
        ),
        "proxy-read-timeout" => (
            Support::Approximated,
            "the wait for the upstream's response between reads, as ingress-nginx; 504 after it",
        ),
        "proxy-connect-timeout" => (
            Support::Approximated,
            "per connect attempt (one retry on another endpoint); at most 3600 s where nginx caps it at 75 s",
        ),
        "proxy-send-timeout" => (Support::Supported, ""),
        _ => (Support::Unsupported, "no effect"),
    }
}

/// The annotations the README's table lists: every one Vestibule reads,
/// and the unsupported ones charts use most.
pub const DOCUMENTED: &[&str] = &[
    "affinity",
    "app-root",
    "auth-method",
    "auth-response-headers",
    "auth-signin",
    "auth-url",
    "backend-protocol",
    "canary",
    "canary-by-cookie",
    "canary-by-header",
    "canary-by-header-value",
    "canary-weight",
    "canary-weight-total",
    "cors-allow-credentials",
    "cors-allow-headers",
    "cors-allow-methods",
    "cors-allow-origin",
    "cors-expose-headers",
    "cors-max-age",
    "denylist-source-range",
    "enable-cors",
    "force-ssl-redirect",
    "limit-burst-multiplier",
    "limit-connections",
    "limit-rpm",
    "limit-rps",
    "limit-whitelist",
    "permanent-redirect",
    "permanent-redirect-code",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "proxy-ssl-ca-configmap",
    "proxy-ssl-name",
    "proxy-ssl-secret",
    "proxy-ssl-server-name",
    "proxy-ssl-verify",
    "rewrite-target",
    "session-cookie-max-age",
    "session-cookie-name",
    "session-cookie-path",
    "ssl-redirect",
    "temporal-redirect",
    "upstream-vhost",
    "use-regex",
    "whitelist-source-range",
    // Unsupported, seen in the corpus of public charts.
    "auth-secret",
    "auth-type",
    "custom-http-errors",
    "proxy-buffer-size",
    "proxy-buffering",
    "proxy-request-buffering",
    "secure-backends",
    "server-alias",
    "service-upstream",
    "ssl-passthrough",
    "upstream-hash-by",
    // Refused, always.
    "configuration-snippet",
    "server-snippet",
    "auth-snippet",
    "stream-snippet",
];

/// The README's annotation table.
pub fn markdown_table() -> String {
    let mut out = String::from("| annotation | Vestibule | how |\n|---|---|---|\n");
    for name in DOCUMENTED {
        let (support, note) = classify(name);
        let support = match support {
            Support::Supported => "supported",
            Support::Approximated => "approximated",
            Support::Unsupported => "unsupported",
            Support::Refused => "refused",
        };
        let note = match (support, note) {
            ("unsupported", "no effect") => {
                "no effect; an `UnsupportedAnnotation` condition and Event name it"
            }
            (_, "") => "as ingress-nginx documents it",
            (_, note) => note,
        };
        out.push_str(&format!(
            "| `{name}` | {support} | {} |\n",
            note.replace('|', "\\|")
        ));
    }
    out
}
