//! The Ingress phase: each Ingress of ours, oldest first, becomes routes,
//! TLS bindings, a default backend and pools, with tenant hijack rules and
//! conflicts applied; what is dropped becomes a condition.

use super::annotations::{Annotations, UpstreamAsk};
use super::*;
use crate::model::{PathRewrite, Redirect, RedirectStatus, Rewrite};

impl<'a> Translator<'a> {
    /// Adds a primary (non-canary) Ingress; `conditions` holds what its
    /// annotations already said.
    pub(super) fn add_ingress(
        &mut self,
        ingress: &'a Ingress,
        annotations: &Annotations,
        mut conditions: Vec<Condition>,
    ) {
        let (namespace, object, route_name) = identity(ingress);
        // Routes (and the default backend) this Ingress serves, and hosts it sets TLS for.
        let mut served = 0usize;
        let mut tls_hosts = 0usize;
        let no_spec = Default::default();
        let spec: &IngressSpec = ingress.spec.as_ref().unwrap_or(&no_spec);

        // Rule hosts, for TLS entries that list none.
        let mut rule_hosts = Vec::new();

        for rule in spec.rules.iter().flatten() {
            let Some(host) = rule_host(rule, &mut conditions) else {
                continue;
            };
            let tenant = match self.admit_host(&host, namespace) {
                Ok(t) => t,
                Err(c) => {
                    conditions.push(c);
                    continue;
                }
            };
            rule_hosts.push(host.clone());
            if let Some(policy) = annotations.plain_http {
                self.plain_http.entry(host.clone()).or_insert(policy);
            }
            if let Some(root) = &annotations.app_root {
                // `app-root`: `/` itself is sent to the application's root.
                let redirect = Redirect {
                    scheme: None,
                    hostname: None,
                    port: None,
                    path: Some(PathRewrite::Full(root.clone())),
                    status: RedirectStatus::FOUND,
                };
                self.routes.entry(host.clone()).or_default().insert_new(
                    RouteKey::path(PathMatch::Exact("/".into())),
                    || {
                        RouteEntry::new(
                            route_name.clone(),
                            Backend::Redirect(Box::new(redirect)),
                            object.clone(),
                        )
                    },
                );
            }
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let Some(matcher) = rule_path(&host, path, annotations.use_regex, &mut conditions)
                else {
                    continue;
                };
                let key = RouteKey::path(matcher);
                if let Some(existing) = self.routes.get(&host).and_then(|r| r.get(&key)) {
                    conditions.push(Condition::new(
                        ConditionType::Conflicted,
                        true,
                        Reason::RouteConflict,
                        format!(
                            "{host} {} is already served by {}",
                            key.path, existing.owner
                        ),
                    ));
                    continue;
                }
                // A redirect annotation answers every route: no backend.
                let backend = match &annotations.redirect {
                    Some(r) => Backend::Redirect(Box::new(r.clone())),
                    None => self.ingress_backend(
                        namespace,
                        &path.backend,
                        annotations.upstream.as_ref(),
                        &mut conditions,
                    ),
                };
                let filters = annotations
                    .networks
                    .iter()
                    .map(|n| Filter::ClientNetworks(n.clone()))
                    .chain(annotations.max_body.map(Filter::MaxBody))
                    .chain(annotations.upstream_vhost.iter().map(|h| {
                        Filter::Rewrite(Rewrite {
                            hostname: Some(h.clone()),
                            path: None,
                        })
                    }))
                    .chain(rewrite_target(&key.path, annotations))
                    .chain(annotations.cors.clone().map(Filter::Cors))
                    .chain(annotations.auth.clone().map(Filter::ExternalAuth))
                    .chain(annotations.client_rate.clone().map(Filter::ClientRate))
                    .chain(
                        annotations
                            .client_concurrency
                            .clone()
                            .map(Filter::ClientConcurrency),
                    )
                    .chain(annotations.affinity.clone().map(Filter::Affinity))
                    .collect();
                self.routes
                    .entry(host.clone())
                    .or_default()
                    .insert_new(key, || RouteEntry {
                        name: route_name.clone(),
                        filters,
                        timeout_ms: annotations.read_timeout_ms,
                        connect_timeout_ms: annotations.connect_timeout_ms,
                        send_timeout_ms: annotations.send_timeout_ms,
                        backend,
                        owner: object.clone(),
                    });
                served += 1;
                if let Some(t) = tenant {
                    self.count_tenant_route(t);
                }
            }
        }

        for entry in spec.tls.iter().flatten() {
            let hosts: Vec<HostPattern> = match &entry.hosts {
                Some(hosts) if !hosts.is_empty() => {
                    let mut parsed = Vec::new();
                    for raw in hosts {
                        match HostPattern::parse(raw) {
                            Ok(h) => parsed.push(h),
                            Err(e) => conditions.push(Condition::new(
                                ConditionType::Accepted,
                                false,
                                Reason::InvalidHost,
                                format!("spec.tls: {e}"),
                            )),
                        }
                    }
                    parsed
                }
                _ => rule_hosts.clone(),
            };
            let hosts: Vec<HostPattern> = hosts
                .into_iter()
                .filter(|h| *h != HostPattern::Any)
                .filter(|h| match self.admit_host(h, namespace) {
                    Ok(_) => true,
                    Err(c) => {
                        if !conditions.contains(&c) {
                            conditions.push(c);
                        }
                        false
                    }
                })
                .collect();
            if hosts.is_empty() {
                continue;
            }
            let tls = match entry.secret_name.as_deref() {
                Some(secret) => self.certificate(namespace, secret, &mut conditions),
                None => {
                    let msg = "spec.tls entry has no secretName".to_string();
                    conditions.push(Condition::new(
                        ConditionType::ResolvedRefs,
                        false,
                        Reason::SecretNotFound,
                        msg.clone(),
                    ));
                    HostTls::Unavailable(Unavailable {
                        reason: TlsUnavailable::SecretNotFound,
                        message: msg,
                    })
                }
            };
            for host in hosts {
                match self.tls.get(&host) {
                    Some(b) if b.owner != object && b.tls != tls => {
                        conditions.push(Condition::new(
                            ConditionType::Conflicted,
                            true,
                            Reason::TlsConflict,
                            format!("TLS for {host} is already set by {}", b.owner),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.tls.insert(
                            host,
                            TlsBinding {
                                tls: tls.clone(),
                                owner: object.clone(),
                            },
                        );
                        tls_hosts += 1;
                    }
                }
            }
        }

        if let Some(default) = &spec.default_backend {
            if self.options.require_tenant {
                conditions.push(Condition::new(
                    ConditionType::Accepted,
                    false,
                    Reason::TenantRequired,
                    "spec.defaultBackend is ignored with --require-tenant".into(),
                ));
            } else if let Some((_, owner)) = &self.default_backend {
                conditions.push(Condition::new(
                    ConditionType::Conflicted,
                    true,
                    Reason::DefaultBackendConflict,
                    format!("the default backend is already set by {owner}"),
                ));
            } else {
                let backend = self.ingress_backend(
                    namespace,
                    default,
                    annotations.upstream.as_ref(),
                    &mut conditions,
                );
                self.default_backend = Some((backend, object.clone()));
                served += 1;
            }
        }

        self.finish_ingress_status(object, conditions, served, tls_hosts);
    }

    /// The Ingress's status: `Accepted` first (what it serves), then the
    /// problems collected.
    pub(super) fn finish_ingress_status(
        &mut self,
        object: ObjectRef,
        mut conditions: Vec<Condition>,
        served: usize,
        tls_hosts: usize,
    ) {
        let accepted = if served > 0 || tls_hosts > 0 {
            let tls = match tls_hosts {
                0 => String::new(),
                n => format!(", TLS for {n} host(s)"),
            };
            Condition::new(
                ConditionType::Accepted,
                true,
                Reason::Accepted,
                format!("serving {served} route(s){tls}"),
            )
        } else {
            Condition::new(
                ConditionType::Accepted,
                false,
                Reason::NoValidRules,
                "nothing in this Ingress can be served".into(),
            )
        };
        conditions.insert(0, accepted);
        self.statuses.insert(
            object.clone(),
            ObjectStatus {
                object,
                conditions,
                routes: None,
                certificates: Vec::new(),
                listeners: Vec::new(),
                parents: Vec::new(),
            },
        );
    }

    /// Resolves an Ingress backend to a pool. Unresolvable Services and
    /// unsupported (resource) backends still get an (empty) pool: the route
    /// answers 503 instead of vanishing and letting a shorter path catch it.
    pub(super) fn ingress_backend(
        &mut self,
        namespace: &str,
        backend: &IngressBackend,
        upstream: Option<&UpstreamAsk>,
        conditions: &mut Vec<Condition>,
    ) -> Backend {
        let Some(service) = &backend.service else {
            // `ns/Kind/name`: no `:`, so never a Service pool; three parts,
            // so never a tenant pool.
            let (kind, name) = backend
                .resource
                .as_ref()
                .map_or(("", ""), |r| (r.kind.as_str(), r.name.as_str()));
            let id = format!("{namespace}/{kind}/{name}");
            let unsupported = Unresolved {
                reason: Reason::UnsupportedBackend,
                message: "only Service backends are supported (resource backends are not)".into(),
            };
            return self.install_pool(PoolId::new(id), Err(unsupported), conditions);
        };
        let port = service
            .port
            .as_ref()
            .and_then(|p| match (&p.name, p.number) {
                (Some(name), _) if !name.is_empty() => Some(PortRef::Name(name.clone())),
                (_, Some(n)) => Some(PortRef::Number(n)),
                _ => None,
            });
        let Some(port) = port else {
            // The API server requires a port; a manifest may still lack one.
            let missing = Unresolved {
                reason: Reason::ServicePortNotFound,
                message: format!("backend Service {namespace}/{} names no port", service.name),
            };
            let id = PoolId::new(format!("{namespace}/{}:", service.name));
            return self.install_pool(id, Err(missing), conditions);
        };
        let (id, pool) = self.services.resolve(namespace, &service.name, &port);
        let backend = self.install_pool(id, pool, conditions);
        match upstream {
            Some(ask) => {
                self.with_upstream_protocol(backend, ask, namespace, &service.name, conditions)
            }
            None => backend,
        }
    }
}

/// An Ingress's namespace, status object and route name.
pub(super) fn identity(ingress: &Ingress) -> (&str, ObjectRef, RouteName) {
    let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
    let name = ingress.metadata.name.as_deref().unwrap_or_default();
    let object = ObjectRef {
        kind: ObjectKind::Ingress,
        namespace: Some(namespace.to_string()),
        name: name.to_string(),
    };
    (
        namespace,
        object,
        RouteName::new(format!("ingress/{namespace}/{name}")),
    )
}

/// A rule's host (none: any host); an invalid one becomes a condition.
pub(super) fn rule_host(
    rule: &k8s_openapi::api::networking::v1::IngressRule,
    conditions: &mut Vec<Condition>,
) -> Option<HostPattern> {
    match rule.host.as_deref() {
        None | Some("") => Some(HostPattern::Any),
        Some(raw) => match HostPattern::parse(raw) {
            Ok(h) => Some(h),
            Err(e) => {
                conditions.push(Condition::new(
                    ConditionType::Accepted,
                    false,
                    Reason::InvalidHost,
                    e.to_string(),
                ));
                None
            }
        },
    }
}

/// A rule path's matcher; an invalid one becomes a condition.
pub(super) fn rule_path(
    host: &HostPattern,
    path: &k8s_openapi::api::networking::v1::HTTPIngressPath,
    regex: bool,
    conditions: &mut Vec<Condition>,
) -> Option<PathMatch> {
    let matched = match (regex, path.path_type.as_str()) {
        // `use-regex`: Prefix and ImplementationSpecific paths are regular
        // expressions (Exact stays exact, as nginx's `location =`).
        (true, "Prefix" | "ImplementationSpecific") => regex_path(path.path.as_deref()),
        _ => path_match(&path.path_type, path.path.as_deref()),
    };
    match matched {
        Ok(m) => Some(m),
        Err(msg) => {
            conditions.push(Condition::new(
                ConditionType::Accepted,
                false,
                Reason::InvalidPath,
                format!("host {host}: {msg}"),
            ));
            None
        }
    }
}

/// A `use-regex` path: absolute, no spaces or control characters, and a
/// regular expression the gateway can compile within its bounds.
fn regex_path(path: Option<&str>) -> Result<PathMatch, String> {
    let path = path.unwrap_or("/");
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "path {path:?} must be absolute and must not contain spaces or control characters"
        ));
    }
    crate::model::path_regex(path).map_err(|why| format!("path {path:?} (use-regex): {why}"))?;
    Ok(PathMatch::Regex(path.to_string()))
}

/// `rewrite-target` on a route: the whole path replaced, with the capture
/// groups of a regex path (an Exact path has none: its `$1`.. are empty,
/// as in nginx).
fn rewrite_target(matcher: &PathMatch, annotations: &Annotations) -> Option<Filter> {
    let target = annotations.rewrite_target.as_ref()?;
    let path = match matcher {
        PathMatch::Regex(_) => PathRewrite::Captures(target.clone()),
        PathMatch::Exact(_) | PathMatch::Prefix(_) => {
            let mut plain = String::with_capacity(target.len());
            let mut chars = target.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                } else {
                    plain.push(c);
                }
            }
            PathRewrite::Full(if plain.is_empty() { "/".into() } else { plain })
        }
    };
    Some(Filter::Rewrite(Rewrite {
        hostname: None,
        path: Some(path),
    }))
}
