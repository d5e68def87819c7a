//! Test PKI: a CA minted with rcgen that issues leaf certificates, and
//! rustls (and HTTP/2) clients that trust only it. Separate from `common`, which
//! the cross-crate tests also compile without rcgen and rustls.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use vestibule_config::model::Certificate;

/// A test CA issuing leaf certificates; clients trust only it.
pub struct Pki {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    roots: Arc<RootCertStore>,
}

impl Pki {
    pub fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vestibule test CA");
        let ca = params.self_signed(&key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: rcgen::Issuer::new(params, key),
            roots: Arc::new(roots),
        }
    }

    /// The CA as an rcgen issuer, for leaves a test builds itself.
    pub fn issuer_for_tests(&self) -> &rcgen::Issuer<'static, rcgen::KeyPair> {
        &self.issuer
    }

    /// A leaf for `names` with a key of `alg`; the chain is leaf + CA.
    pub fn issue(&self, names: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> Certificate {
        self.issue_dated(names, alg, None)
    }

    pub fn issue_dated(
        &self,
        names: &[&str],
        alg: &'static rcgen::SignatureAlgorithm,
        dates: Option<(i32, i32)>,
    ) -> Certificate {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some((from, to)) = dates {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        Certificate {
            cert_pem: format!("{}{}", leaf.pem(), self.ca_pem),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn client(&self, alpn: &[&[u8]], tls12_only: bool) -> Arc<ClientConfig> {
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// HTTP/1.1 with resumption off: every connection makes a full
    /// handshake, so a certificate swap can't hide behind a resumed session.
    pub fn fresh_client(&self) -> Arc<ClientConfig> {
        let mut config = Arc::unwrap_or_clone(self.client(&[b"http/1.1"], false));
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// The whole body of an HTTP/2 response, releasing flow control as it goes.
pub async fn h2_body(mut body: h2::RecvStream) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        out.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&out).into_owned()
}
