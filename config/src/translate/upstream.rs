//! The upstream protocol phase: an Ingress backend whose annotations ask
//! for h2c or TLS gets a pool of its own (`ns/svc:port+https-…`), so the
//! same Service port can be spoken to differently by different Ingresses,
//! with its protocol beside it in the config.

use sha2::{Digest, Sha256};

use super::annotations::{UpstreamAsk, Wire};
use super::*;
use crate::model::{UpstreamProtocol, UpstreamTls, UpstreamVerify};

impl<'a> Translator<'a> {
    /// `backend` with the pool moved to one that speaks `ask`'s protocol
    /// (`service` names the Service for the default server name).
    pub(super) fn with_upstream_protocol(
        &mut self,
        backend: Backend,
        ask: &UpstreamAsk,
        namespace: &str,
        service: &str,
        conditions: &mut Vec<Condition>,
    ) -> Backend {
        let Backend::Pool(id) = backend else {
            return backend;
        };
        match self.upstream_protocol(ask, namespace, service, conditions) {
            Some(protocol) => self.speaking(id, protocol),
            None => {
                // No way to speak to it as asked: no endpoints (503).
                let tagged = PoolId::new(format!("{id}+unusable"));
                self.pools
                    .entry(tagged.clone())
                    .or_insert(Pool::Endpoints(Vec::new()));
                Backend::Pool(tagged)
            }
        }
    }

    /// The pool of `id`'s endpoints that speaks `protocol`.
    pub(super) fn speaking(&mut self, id: PoolId, protocol: UpstreamProtocol) -> Backend {
        let tagged = PoolId::new(format!("{id}+{}", tag(&protocol)));
        if let Some(pool) = self.pools.get(&id).cloned() {
            self.pools.entry(tagged.clone()).or_insert(pool);
        }
        self.upstream_protocols
            .entry(tagged.clone())
            .or_insert(protocol);
        Backend::Pool(tagged)
    }

    fn upstream_protocol(
        &self,
        ask: &UpstreamAsk,
        namespace: &str,
        service: &str,
        conditions: &mut Vec<Condition>,
    ) -> Option<UpstreamProtocol> {
        let tls = match ask.wire {
            Wire::H2c => return Some(UpstreamProtocol::H2c),
            Wire::Https | Wire::H2 => {
                // The Service's cluster DNS name, which in-cluster
                // certificates carry, unless proxy-ssl-name says otherwise.
                let name = ask
                    .server_name
                    .clone()
                    .or_else(|| Hostname::parse(&format!("{service}.{namespace}.svc")).ok());
                let Some(server_name) = name else {
                    conditions.push(Condition::new(
                        ConditionType::ResolvedRefs,
                        false,
                        Reason::InvalidAnnotation,
                        format!(
                            "Service {service:?} makes no DNS name to verify: set proxy-ssl-name"
                        ),
                    ));
                    return None;
                };
                UpstreamTls {
                    server_name,
                    verify: self.upstream_verify(ask, namespace, conditions),
                }
            }
        };
        Some(match ask.wire {
            Wire::H2 => UpstreamProtocol::H2(tls),
            _ => UpstreamProtocol::Https(tls),
        })
    }

    /// How the upstream's certificate is checked; a CA Secret that can't
    /// be used leaves the system roots (never no verification).
    fn upstream_verify(
        &self,
        ask: &UpstreamAsk,
        namespace: &str,
        conditions: &mut Vec<Condition>,
    ) -> UpstreamVerify {
        if ask.verify_off {
            return UpstreamVerify::Off;
        }
        if let Some(name) = &ask.ca_config_map {
            return match self.config_map_roots(namespace, name) {
                Ok(pem) => UpstreamVerify::Roots(pem),
                Err(message) => {
                    let problem = Condition::new(
                        ConditionType::ResolvedRefs,
                        false,
                        Reason::InvalidAnnotation,
                        format!(
                            "proxy-ssl-ca-configmap: {message}; verifying against the system roots"
                        ),
                    );
                    if !conditions.contains(&problem) {
                        conditions.push(problem);
                    }
                    UpstreamVerify::SystemRoots
                }
            };
        }
        let Some((ns, name)) = &ask.ca_secret else {
            return UpstreamVerify::SystemRoots;
        };
        let problem = if ns != namespace {
            Condition::new(
                ConditionType::ResolvedRefs,
                false,
                Reason::RefNotPermitted,
                format!("proxy-ssl-secret: Secrets of namespace {ns} can't be used by an Ingress of {namespace}; verifying against the system roots"),
            )
        } else {
            match self.secrets.roots(ns, name) {
                Ok(pem) => return UpstreamVerify::Roots(pem),
                Err(u) => Condition::new(
                    ConditionType::ResolvedRefs,
                    false,
                    u.reason,
                    format!(
                        "proxy-ssl-secret: {}; verifying against the system roots",
                        u.message
                    ),
                ),
            }
        };
        if !conditions.contains(&problem) {
            conditions.push(problem);
        }
        UpstreamVerify::SystemRoots
    }
}

impl Translator<'_> {
    /// The PEM roots in ConfigMap `namespace/name`'s `ca.crt`.
    fn config_map_roots(&self, namespace: &str, name: &str) -> Result<String, String> {
        let cm = self
            .config_maps
            .iter()
            .find(|c| {
                c.metadata.namespace.as_deref() == Some(namespace)
                    && c.metadata.name.as_deref() == Some(name)
            })
            .ok_or_else(|| {
                format!("ConfigMap {namespace}/{name} not found (labelled vestibule.dev/upstream-ca=true)")
            })?;
        let pem = cm
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .ok_or_else(|| format!("ConfigMap {namespace}/{name} has no ca.crt"))?;
        super::tls::check_roots(pem.as_bytes())
            .map_err(|why| format!("ConfigMap {namespace}/{name}: {why}"))?;
        Ok(pem.clone())
    }
}

/// `h2c`, or the TLS protocol with a short hash of its settings: pools of
/// the same Service port with different names or roots stay apart.
fn tag(protocol: &UpstreamProtocol) -> String {
    let Some(tls) = protocol.tls() else {
        return protocol.tag().to_string();
    };
    let mut h = Sha256::new();
    h.update(tls.server_name.as_str().as_bytes());
    match &tls.verify {
        UpstreamVerify::SystemRoots => h.update(b"\0system"),
        UpstreamVerify::Roots(pem) => {
            h.update(b"\0roots\0");
            h.update(pem.as_bytes());
        }
        UpstreamVerify::Off => h.update(b"\0off"),
    }
    format!("{}-{}", protocol.tag(), hex::encode(&h.finalize()[..4]))
}
