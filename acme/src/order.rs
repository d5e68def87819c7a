//! One ACME order for one domain, start to finish (RFC 8555 §7.4): new
//! order, the challenge published on the [`Board`] and withdrawn whatever
//! happens, finalize with a fresh key, download the chain. Every exchange
//! with the CA is bounded by a timeout; the CA's problem documents come
//! back as the error.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use vestibule_config::issuer::ChallengeKind;
use vestibule_config::Hostname;

use crate::board::{AlpnChallenge, Board};

/// What an order produced: the chain and its fresh key, as PEM.
pub struct Certificate {
    pub chain_pem: String,
    pub key_pem: String,
    pub order_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The CA answered with a problem (its document, as the CA wrote it).
    #[error("{0}")]
    Ca(String),
    /// The CA did not answer in time, or the connection failed.
    #[error("{step}: {detail}")]
    Unreachable { step: &'static str, detail: String },
    /// The CA offered no challenge of the issuer's kind.
    #[error("the CA offers no {0} challenge for this domain")]
    NoChallenge(&'static str),
}

/// How long one exchange with the CA may take, and how long the CA may
/// take to validate and to issue.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub request: Duration,
    pub validation: Duration,
    /// How long a published challenge takes to reach every listener that
    /// may be asked for it: nothing in process, the config stream's
    /// propagation to every gateway replica in operator mode.
    pub propagation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: Duration::from_secs(30),
            validation: Duration::from_secs(120),
            propagation: Duration::ZERO,
        }
    }
}

fn ca_error(step: &'static str, e: instant_acme::Error) -> OrderError {
    match e {
        instant_acme::Error::Api(problem) => OrderError::Ca(problem.to_string()),
        other => OrderError::Unreachable {
            step,
            detail: other.to_string(),
        },
    }
}

/// Runs `f` under the request timeout.
pub(crate) async fn bounded<T>(
    step: &'static str,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, instant_acme::Error>>,
) -> Result<T, OrderError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|e| ca_error(step, e)),
        Err(_) => Err(OrderError::Unreachable {
            step,
            detail: format!("no answer within {timeout:?}"),
        }),
    }
}

/// A challenge published on the board, withdrawn when dropped.
enum Published<'b> {
    Http01 { board: &'b Board, token: String },
    TlsAlpn01 { board: &'b Board, domain: String },
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        match self {
            Published::Http01 { board, token } => board.withdraw_http01(token),
            Published::TlsAlpn01 { board, domain } => board.withdraw_tls_alpn01(domain),
        }
    }
}

/// Orders a certificate for `domain` and proves control with `kind`.
pub async fn issue(
    account: &Account,
    domain: &Hostname,
    kind: ChallengeKind,
    board: &Board,
    timeouts: Timeouts,
) -> Result<Certificate, OrderError> {
    let identifiers = [Identifier::Dns(domain.to_string())];
    let t = timeouts.request;
    let mut order = bounded(
        "new order",
        t,
        account.new_order(&NewOrder::new(&identifiers)),
    )
    .await?;
    let order_url = order.url().to_string();

    let mut published = Vec::new();
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = bounded("authorization", t, async {
            authorizations.next().await.transpose()
        })
        .await?
        {
            let mut authz = authz;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let (type_, name) = match kind {
                ChallengeKind::Http01 => (ChallengeType::Http01, "HTTP-01"),
                ChallengeKind::TlsAlpn01 => (ChallengeType::TlsAlpn01, "TLS-ALPN-01"),
            };
            let mut challenge = authz
                .challenge(type_)
                .ok_or(OrderError::NoChallenge(name))?;
            let key_authorization = challenge.key_authorization();
            published.push(match kind {
                ChallengeKind::Http01 => {
                    board.publish_http01(&challenge.token, key_authorization.as_str());
                    Published::Http01 {
                        board,
                        token: challenge.token.clone(),
                    }
                }
                ChallengeKind::TlsAlpn01 => {
                    let cert = tls_alpn01_certificate(domain, key_authorization.digest().as_ref())
                        .map_err(|e| OrderError::Unreachable {
                            step: "TLS-ALPN-01 certificate",
                            detail: e,
                        })?;
                    board.publish_tls_alpn01(domain.as_str(), cert);
                    Published::TlsAlpn01 {
                        board,
                        domain: domain.to_string(),
                    }
                }
            });
            if !timeouts.propagation.is_zero() {
                tokio::time::sleep(timeouts.propagation).await;
            }
            bounded("challenge ready", t, challenge.set_ready()).await?;
        }
    }

    let poll = RetryPolicy::new()
        .initial_delay(Duration::from_millis(200))
        .backoff(1.5)
        .timeout(timeouts.validation);
    let status = bounded(
        "validation",
        timeouts.validation + t,
        order.poll_ready(&poll),
    )
    .await?;
    drop(published);
    if status != OrderStatus::Ready {
        return Err(OrderError::Ca(format!(
            "order {status:?}: {}",
            invalid_detail(&mut order, t).await
        )));
    }
    let key_pem = bounded("finalize", t, order.finalize()).await?;
    let chain_pem = bounded(
        "certificate",
        timeouts.validation + t,
        order.poll_certificate(&poll),
    )
    .await?;
    Ok(Certificate {
        chain_pem,
        key_pem,
        order_url,
    })
}

/// The challenge errors of an invalid order: what the CA saw.
async fn invalid_detail(order: &mut instant_acme::Order, t: Duration) -> String {
    let mut details = Vec::new();
    let mut authorizations = order.authorizations();
    while let Ok(Some(mut authz)) = bounded("authorization", t, async {
        authorizations.next().await.transpose()
    })
    .await
    {
        if let Ok(state) = bounded("authorization", t, authz.refresh()).await {
            details.extend(
                state
                    .challenges
                    .iter()
                    .filter_map(|c| c.error.as_ref())
                    .map(|p| p.to_string()),
            );
        }
    }
    if details.is_empty() {
        "no detail from the CA".into()
    } else {
        details.join("; ")
    }
}

/// The self-signed certificate of RFC 8737 §3: the domain as its only SAN
/// and the critical acmeIdentifier extension holding SHA-256 of the key
/// authorization.
fn tls_alpn01_certificate(domain: &Hostname, digest: &[u8]) -> Result<AlpnChallenge, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(AlpnChallenge {
        key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
