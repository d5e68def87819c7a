//! `backend-protocol` and the `proxy-ssl-*` annotations: how the routes of
//! an Ingress speak to its Services. Unlike ingress-nginx, a TLS upstream's
//! certificate is verified unless `proxy-ssl-verify: "off"` says otherwise.

use std::collections::BTreeMap;

use crate::hostname::Hostname;

/// The wire an Ingress asks for (HTTP, the default, is `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    /// `H2C` and `GRPC`: HTTP/2 with prior knowledge.
    H2c,
    /// `HTTPS`.
    Https,
    /// `GRPCS`: TLS with ALPN h2.
    H2,
}

/// What the annotations ask of the upstream connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UpstreamAsk {
    pub wire: Wire,
    /// `proxy-ssl-verify: "off"`.
    pub verify_off: bool,
    /// `proxy-ssl-secret: ns/name`: its `ca.crt` verifies the upstream.
    pub ca_secret: Option<(String, String)>,
    /// `proxy-ssl-ca-configmap: name` (the Ingress's namespace): its
    /// `ca.crt` verifies the upstream (trust-manager's bundles are such).
    pub ca_config_map: Option<String>,
    /// `proxy-ssl-name`: SNI and the name verified.
    pub server_name: Option<Hostname>,
}

/// Reads the upstream annotations among `known`.
pub(super) fn read(
    known: &BTreeMap<&str, &str>,
    invalid: &mut dyn FnMut(&str, &str, &str),
) -> Option<UpstreamAsk> {
    let wire = match known.get("backend-protocol").map(|v| v.trim()) {
        None => return None,
        Some(v) => match v.to_ascii_uppercase().as_str() {
            "HTTP" => return None,
            "H2C" | "GRPC" => Wire::H2c,
            "HTTPS" => Wire::Https,
            "GRPCS" => Wire::H2,
            _ => {
                invalid(
                    "backend-protocol",
                    v,
                    "HTTP, HTTPS, GRPC, GRPCS or H2C (AUTO_HTTP and FCGI are not supported); the backend is spoken to over HTTP",
                );
                return None;
            }
        },
    };
    let verify_off = match known.get("proxy-ssl-verify").copied() {
        None | Some("on") => false,
        Some("off") => true,
        Some(v) => {
            invalid("proxy-ssl-verify", v, "\"on\" or \"off\"; verifying");
            false
        }
    };
    let ca_secret = known.get("proxy-ssl-secret").and_then(|v| {
        let parsed = v.split_once('/').filter(|(ns, name)| {
            [ns, name].iter().all(|s| {
                !s.is_empty()
                    && s.len() <= 253
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
            })
        });
        if parsed.is_none() {
            invalid("proxy-ssl-secret", v, "\"namespace/name\" of a Secret");
        }
        parsed.map(|(ns, name)| (ns.to_string(), name.to_string()))
    });
    let ca_config_map = known.get("proxy-ssl-ca-configmap").and_then(|v| {
        let ok = !v.is_empty()
            && v.len() <= 253
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !ok {
            invalid(
                "proxy-ssl-ca-configmap",
                v,
                "the name of a ConfigMap in the Ingress's namespace",
            );
        }
        ok.then(|| v.to_string())
    });
    let server_name = known.get("proxy-ssl-name").and_then(|v| {
        let parsed = Hostname::parse(v).ok();
        if parsed.is_none() {
            invalid("proxy-ssl-name", v, "not a hostname");
        }
        parsed
    });
    Some(UpstreamAsk {
        wire,
        verify_off,
        ca_secret,
        ca_config_map,
        server_name,
    })
}
