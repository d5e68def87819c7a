//! What an Ingress or a Tenant touches: the host patterns it claims, the
//! Services and Secrets it reads. Two objects that share a host are
//! translated together; a Service or Secret change re-translates the
//! objects that read it. An object whose effect reaches beyond its own
//! hosts (a default backend, a host-less rule, a wildcard) is global: a
//! change to it is a full translation.

use k8s_openapi::api::networking::v1::Ingress;

use crate::hostname::{HostPattern, Hostname};
use crate::tenant::{Tenant, TenantTls};

/// Namespace and name.
pub type NamedRef = (String, String);

/// An object's reach, or `None` when it is global.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub hosts: Vec<HostPattern>,
    pub services: Vec<NamedRef>,
    pub secrets: Vec<NamedRef>,
}

/// The one ingress-nginx annotation that reads a Secret by name.
const PROXY_SSL_SECRET: &str = "nginx.ingress.kubernetes.io/proxy-ssl-secret";

impl Footprint {
    fn host(&mut self, raw: &str) -> Option<()> {
        match HostPattern::parse(raw) {
            Ok(p @ HostPattern::Exact(_)) => {
                if !self.hosts.contains(&p) {
                    self.hosts.push(p);
                }
                Some(())
            }
            // A host the translator rejects reaches nothing.
            Err(_) => Some(()),
            Ok(_) => None,
        }
    }

    pub fn of_ingress(ingress: &Ingress) -> Option<Footprint> {
        // Without a namespace the translator reads it as `default`, so two
        // objects may stand for one: left to the full translator.
        let ns = ingress.metadata.namespace.clone()?;
        let mut f = Footprint::default();
        let Some(spec) = ingress.spec.as_ref() else {
            return Some(f);
        };
        if spec.default_backend.is_some() {
            return None;
        }
        for rule in spec.rules.iter().flatten() {
            f.host(rule.host.as_deref()?)?;
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                if let Some(svc) = &path.backend.service {
                    f.services.push((ns.clone(), svc.name.clone()));
                }
            }
        }
        for tls in spec.tls.iter().flatten() {
            for h in tls.hosts.iter().flatten() {
                f.host(h)?;
            }
            if let Some(name) = &tls.secret_name {
                f.secrets.push((ns.clone(), name.clone()));
            }
        }
        if let Some(v) = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROXY_SSL_SECRET))
        {
            let (sns, name) = v.split_once('/').unwrap_or((ns.as_str(), v.as_str()));
            f.secrets.push((sns.to_string(), name.to_string()));
        }
        Some(f)
    }

    pub fn of_tenant(tenant: &Tenant, acme_namespace: &str) -> Option<Footprint> {
        let mut f = Footprint::default();
        for d in &tenant.spec.domains {
            f.host(d)?;
        }
        if let Some(b) = &tenant.spec.backend {
            for s in &b.services {
                f.services.push((b.namespace.clone(), s.name.clone()));
            }
        }
        match &tenant.spec.tls {
            Some(TenantTls::SecretRef(r)) => f.secrets.push((r.namespace.clone(), r.name.clone())),
            Some(TenantTls::Acme(_)) => {
                for d in &tenant.spec.domains {
                    if let Ok(h) = Hostname::parse(d) {
                        f.secrets
                            .push((acme_namespace.to_string(), crate::acme::secret_name(&h)));
                    }
                }
            }
            None => {}
        }
        Some(f)
    }
}
