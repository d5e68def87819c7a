//! ACME phases: `AcmeIssuer`s checked and accepted, and the certificates of
//! Tenants with `tls.acme` (issued ones served, missing ones marked pending
//! and put in the [`AcmePlan`], wildcards refused).

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::acme::{self, Eab, IssuerPlan, PlannedDomain};
use crate::hostname::Hostname;
use crate::issuer::AcmeIssuer;
use crate::tenant::TenantAcme;
use crate::translate::status::{CertificateState, DomainCertificate};

use super::*;

/// Longest directory URL accepted.
const MAX_URL: usize = 2048;

fn issuer_ref(name: &str) -> ObjectRef {
    ObjectRef {
        kind: ObjectKind::AcmeIssuer,
        namespace: None,
        name: name.to_string(),
    }
}

impl<'a> Translator<'a> {
    /// Checks every `AcmeIssuer`, oldest first; the oldest accepted one
    /// with `default: true` is the default.
    pub(super) fn accept_issuers(&mut self, issuers: &'a [Arc<AcmeIssuer>]) {
        for issuer in by_age(issuers, |i| &i.metadata) {
            let name = issuer.metadata.name.clone().unwrap_or_default();
            let condition = match self.issuer_plan(issuer) {
                Ok(plan) => {
                    if issuer.spec.default && self.default_issuer.is_none() {
                        self.default_issuer = Some(name.clone());
                    }
                    self.acme.issuers.insert(name.clone(), plan);
                    Condition::new(
                        ConditionType::Accepted,
                        true,
                        Reason::Accepted,
                        format!("ACME directory {}", issuer.spec.directory_url),
                    )
                }
                Err(why) => {
                    Condition::new(ConditionType::Accepted, false, Reason::InvalidIssuer, why)
                }
            };
            let object = issuer_ref(&name);
            self.statuses.insert(
                object.clone(),
                ObjectStatus {
                    object,
                    conditions: vec![condition],
                    routes: None,
                    certificates: Vec::new(),
                    listeners: Vec::new(),
                    parents: Vec::new(),
                },
            );
        }
    }

    /// The issuer's settings with its Secret resolved, or what is wrong
    /// (never quoting Secret data).
    fn issuer_plan(&self, issuer: &AcmeIssuer) -> Result<IssuerPlan, String> {
        let spec = &issuer.spec;
        let url = &spec.directory_url;
        if !url.starts_with("https://")
            || url.len() > MAX_URL
            || url.bytes().any(|b| b.is_ascii_control() || b == b' ')
        {
            return Err(format!(
                "directoryUrl {url:?} must be an https:// URL (at most {MAX_URL} bytes)"
            ));
        }
        if let Some(email) = &spec.email {
            let ok = email.len() <= 254
                && email
                    .split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
                && !email
                    .bytes()
                    .any(|b| b.is_ascii_control() || b" ,;<>".contains(&b));
            if !ok {
                return Err(format!("email {email:?} is not an address"));
            }
        }
        if let Some(pem) = &spec.ca_bundle {
            let roots =
                CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
            if !matches!(roots, Ok(r) if !r.is_empty()) {
                return Err("caBundle holds no PEM certificate".into());
            }
        }
        let eab = match &spec.external_account_binding {
            None => None,
            Some(b) => {
                let r = &b.key_secret_ref;
                let hmac_key = self
                    .secrets
                    .field(&r.namespace, &r.name, &r.key)
                    .ok_or_else(|| {
                        format!(
                            "externalAccountBinding: Secret {}/{} has no key {:?}",
                            r.namespace, r.name, r.key
                        )
                    })?;
                let text = String::from_utf8_lossy(hmac_key);
                let hmac_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(text.trim().trim_end_matches('='))
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "externalAccountBinding: Secret {}/{} key {:?} is not base64url",
                            r.namespace, r.name, r.key
                        )
                    })?;
                Some(Eab {
                    key_id: b.key_id.clone(),
                    hmac_key,
                })
            }
        };
        Ok(IssuerPlan {
            directory_url: url.clone(),
            email: spec.email.clone(),
            eab,
            ca_bundle: spec.ca_bundle.clone(),
            challenge: spec.challenge,
            issue: spec.issue,
        })
    }

    /// Certificates for tenant `index`'s domains from ACME: the issued
    /// Secret when there is one, else pending (and planned). Returns the
    /// tenant's `CertificateReady` condition.
    pub(super) fn tenant_acme(&mut self, index: usize, spec: &TenantAcme) -> Condition {
        let id = self.tenants[index].id.clone();
        let domains = self.tenants[index].domains.clone();
        let object = tenant_ref(id.as_str());
        let issuer = match &spec.issuer {
            Some(name) if self.acme.issuers.contains_key(name) => Ok(name.clone()),
            Some(name) => Err(format!(
                "AcmeIssuer {name:?} does not exist or is not accepted"
            )),
            None => self
                .default_issuer
                .clone()
                .ok_or_else(|| "no AcmeIssuer is the default (spec.default: true)".to_string()),
        };
        let mut states = Vec::with_capacity(domains.len());
        for domain in &domains {
            let (tls, state) = match (domain, &issuer) {
                (_, Err(why)) => (
                    unavailable(TlsUnavailable::IssuerNotFound, why.clone()),
                    domain_state(domain, CertificateState::Unsupported, None, why.clone()),
                ),
                (HostPattern::Exact(host), Ok(issuer)) => self.acme_domain(host, &id, issuer),
                _ => {
                    let why = "wildcard domains need the DNS-01 challenge, which Vestibule does not support; list the names or use tls.secretRef".to_string();
                    (
                        unavailable(TlsUnavailable::Dns01Required, why.clone()),
                        domain_state(domain, CertificateState::Unsupported, None, why),
                    )
                }
            };
            states.push(state);
            // An Ingress TLS entry for a specific host is more specific.
            self.tls
                .entry(domain.clone())
                .or_insert_with(|| TlsBinding {
                    tls,
                    owner: object.clone(),
                });
        }
        let condition = certificate_ready(&states);
        if let Some(status) = self.statuses.get_mut(&object) {
            status.certificates = states;
        }
        condition
    }

    /// One exact domain: its issued certificate, or pending.
    fn acme_domain(
        &mut self,
        host: &Hostname,
        tenant: &TenantId,
        issuer: &str,
    ) -> (HostTls, DomainCertificate) {
        let domain = HostPattern::Exact(host.clone());
        let namespace = self.options.acme_namespace.clone();
        let name = acme::secret_name(host);
        let issued = self.checked_certificate(&namespace, &name).ok();
        self.acme.domains.insert(
            host.clone(),
            PlannedDomain {
                tenant: tenant.clone(),
                issuer: issuer.to_string(),
                certificate: issued.clone(),
                not_after: issued
                    .as_ref()
                    .and_then(|_| self.secrets.annotation(&namespace, &name, acme::NOT_AFTER)),
                renew_at: issued
                    .as_ref()
                    .and_then(|_| self.secrets.annotation(&namespace, &name, acme::RENEW_AT)),
                ari_id: issued
                    .as_ref()
                    .and_then(|_| self.secrets.annotation(&namespace, &name, acme::ARI_ID)),
            },
        );
        match issued {
            Some(id) => {
                let not_after = self.secrets.annotation(&namespace, &name, acme::NOT_AFTER);
                // The certificate serves until it expires; the status says
                // when its renewal is failing.
                let message = self
                    .acme_failures
                    .get(host)
                    .map(|p| format!("renewal failed, retried with backoff: {p}"))
                    .unwrap_or_default();
                let state = domain_state(&domain, CertificateState::Issued, not_after, message);
                (HostTls::Certificate(id), state)
            }
            None => {
                let (state, message) = match self.acme_failures.get(host) {
                    Some(problem) => (CertificateState::Failed, problem.clone()),
                    None => (
                        CertificateState::Pending,
                        format!(
                            "ordered from AcmeIssuer {issuer} at the first handshake or onboarding"
                        ),
                    ),
                };
                (
                    unavailable(TlsUnavailable::AcmePending, message.clone()),
                    domain_state(&domain, state, None, message),
                )
            }
        }
    }
}

fn unavailable(reason: TlsUnavailable, message: String) -> HostTls {
    HostTls::Unavailable(Unavailable { reason, message })
}

fn domain_state(
    domain: &HostPattern,
    state: CertificateState,
    not_after: Option<String>,
    message: String,
) -> DomainCertificate {
    DomainCertificate {
        domain: domain.to_string(),
        state,
        not_after,
        message,
    }
}

/// The tenant's `CertificateReady`: true when every domain is issued; else
/// the worst state names the reason and the domains.
fn certificate_ready(states: &[DomainCertificate]) -> Condition {
    let with = |s: CertificateState| {
        states
            .iter()
            .filter(|d| d.state == s)
            .map(|d| d.domain.as_str())
            .collect::<Vec<_>>()
    };
    let (failed, unsupported, pending) = (
        with(CertificateState::Failed),
        with(CertificateState::Unsupported),
        with(CertificateState::Pending),
    );
    let (reason, names, what) = if !failed.is_empty() {
        (
            Reason::CertificateFailed,
            failed,
            "order failed (retried with backoff)",
        )
    } else if !unsupported.is_empty() {
        let reason = if states.iter().any(|d| d.message.contains("DNS-01")) {
            Reason::Dns01Required
        } else {
            Reason::IssuerNotFound
        };
        let first = states
            .iter()
            .find(|d| d.state == CertificateState::Unsupported);
        (
            reason,
            unsupported,
            first.map_or("", |d| d.message.as_str()),
        )
    } else if !pending.is_empty() {
        (Reason::CertificatePending, pending, "not issued yet")
    } else if let Some(d) = states.iter().find(|d| !d.message.is_empty()) {
        return Condition::new(
            ConditionType::CertificateReady,
            true,
            Reason::RenewalFailing,
            format!("{}: {}", d.domain, d.message),
        );
    } else {
        return Condition::new(
            ConditionType::CertificateReady,
            true,
            Reason::CertificateReady,
            format!("{} domain(s) issued by ACME", states.len()),
        );
    };
    Condition::new(
        ConditionType::CertificateReady,
        false,
        reason,
        format!("{}: {what}", names.join(", ")),
    )
}
