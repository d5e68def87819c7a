//! Incremental translation: a change re-translates only the objects it
//! touches and whatever shares a host with them, and comes out as a
//! [`ConfigDelta`] against the previous config.
//!
//! The full translator stays the reference: the objects a change reaches
//! (its Ingresses and Tenants, every object sharing one of their hosts, the
//! objects reading a changed Service, EndpointSlice or Secret) are
//! translated by it as a snapshot of their own, and its hosts, pools,
//! certificates, tenants and statuses replace theirs in the kept output.
//! Whatever reaches beyond its hosts (IngressClasses, issuers, ConfigMaps,
//! the Gateway API, default backends, host-less rules, wildcards) makes the
//! next translation a full one. `config/tests/incremental.rs` checks that
//! random change sequences give the full translation's bytes.

mod footprint;
mod seen;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::acme::AcmePlan;
use crate::hostname::HostPattern;
use crate::manifests::Snapshot;
use crate::model::{CertId, ConfigDelta, GatewayConfig, HostTls, PoolId, TenantId, VirtualHost};

use super::{run, translate_with, CertificateMemo, ObjectKind, ObjectRef, ObjectStatus, Options};
use footprint::{Footprint, NamedRef};
use seen::{Changes, Seen};

/// An Ingress or a Tenant: what shares hosts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Node {
    Ingress(NamedRef),
    Tenant(String),
}

impl Node {
    fn object(&self) -> ObjectRef {
        match self {
            Node::Ingress((ns, name)) => ObjectRef {
                kind: ObjectKind::Ingress,
                namespace: Some(ns.clone()),
                name: name.clone(),
            },
            Node::Tenant(name) => super::tenant_ref(name),
        }
    }
}

/// In a large config, a reach of this share of all objects or more is
/// translated in full: the full pass is then about as cheap.
const FULL_SHARE: usize = 4;
const LARGE: usize = 1024;

/// What one update did.
#[derive(Debug)]
pub struct Update {
    /// From the previous config to the new one (empty when nothing changed).
    pub delta: ConfigDelta,
    /// Translated in full (the first time, or a global change).
    pub full: bool,
    /// Objects whose status may have changed (every one after a full pass).
    pub statuses: Vec<ObjectRef>,
    /// Their statuses, when the translator does not keep them
    /// ([`Incremental::without_statuses`]).
    pub dropped: Vec<ObjectStatus>,
}

/// The translator's state between changes.
pub struct Incremental {
    options: Options,
    memo: CertificateMemo,
    seen: Seen,
    config: GatewayConfig,
    statuses: BTreeMap<ObjectRef, Arc<ObjectStatus>>,
    /// Whether `statuses` is kept (a status writer reads it).
    keep_statuses: bool,
    acme: AcmePlan,
    /// Footprints of the Ingresses and Tenants of the last snapshot, and
    /// who claims each host, reads each Service and each Secret.
    footprints: HashMap<Node, Footprint>,
    by_host: HashMap<HostPattern, Vec<Node>>,
    by_service: HashMap<NamedRef, Vec<Node>>,
    by_secret: HashMap<NamedRef, Vec<Node>>,
    /// Objects of the last snapshot that are global (no footprint).
    global_objects: usize,
    /// How many hosts refer to each pool and certificate.
    pool_refs: HashMap<PoolId, u32>,
    cert_refs: HashMap<CertId, u32>,
    translated: bool,
}

impl Incremental {
    pub fn new(options: Options) -> Self {
        Incremental {
            options,
            memo: CertificateMemo::default(),
            seen: Seen::default(),
            config: GatewayConfig::default().seal(),
            statuses: BTreeMap::new(),
            keep_statuses: true,
            acme: AcmePlan::default(),
            footprints: HashMap::new(),
            by_host: HashMap::new(),
            by_service: HashMap::new(),
            by_secret: HashMap::new(),
            global_objects: 0,
            pool_refs: HashMap::new(),
            cert_refs: HashMap::new(),
            translated: false,
        }
    }

    /// A translator that hands each update's statuses out instead of
    /// keeping them all (100k objects' statuses are tens of MB): for
    /// `--manifests`, where nothing writes them back.
    pub fn without_statuses(options: Options) -> Self {
        Incremental {
            keep_statuses: false,
            ..Incremental::new(options)
        }
    }

    /// The config of the last update.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn statuses(&self) -> impl Iterator<Item = &ObjectStatus> {
        self.statuses.values().map(|s| &**s)
    }

    /// Every status, shared (a status writer's input, without copies).
    pub fn shared_statuses(&self) -> Vec<Arc<ObjectStatus>> {
        self.statuses.values().cloned().collect()
    }

    pub fn status(&self, object: &ObjectRef) -> Option<&ObjectStatus> {
        self.statuses.get(object).map(|s| &**s)
    }

    pub fn acme(&self) -> &AcmePlan {
        &self.acme
    }

    /// Translates `snapshot`, re-translating only what changed since the
    /// last call.
    pub fn update(&mut self, snapshot: &Snapshot) -> Update {
        let changes = self.seen.update(snapshot, &self.options);
        let gateway_api = !(snapshot.gateways.is_empty()
            && snapshot.http_routes.is_empty()
            && snapshot.gateway_classes.is_empty()
            && snapshot.reference_grants.is_empty());
        if !self.translated || changes.global || gateway_api || self.global_objects > 0 {
            return self.full(snapshot);
        }
        if changes.is_empty() {
            let version = self.config.version.clone();
            return Update {
                delta: ConfigDelta {
                    base: version.clone(),
                    version,
                    ..Default::default()
                },
                full: false,
                statuses: Vec::new(),
                dropped: Vec::new(),
            };
        }
        match self.reach(&changes) {
            Some((nodes, _))
                if self.footprints.len() >= LARGE
                    && nodes.len() * FULL_SHARE >= self.footprints.len() =>
            {
                self.full(snapshot)
            }
            Some((nodes, hosts)) => self.partial(snapshot, nodes, hosts),
            _ => self.full(snapshot),
        }
    }

    fn full(&mut self, snapshot: &Snapshot) -> Update {
        let translation = translate_with(snapshot, &self.options, &mut self.memo);
        let delta = ConfigDelta::between(&self.config, &translation.config);
        self.config = translation.config;
        let objects: Vec<ObjectRef> = translation
            .statuses
            .iter()
            .map(|s| s.object.clone())
            .collect();
        let mut dropped = Vec::new();
        if self.keep_statuses {
            self.statuses = translation
                .statuses
                .into_iter()
                .map(|s| (s.object.clone(), Arc::new(s)))
                .collect();
        } else {
            dropped = translation.statuses;
        }
        self.acme = translation.acme;
        self.footprints.clear();
        self.by_host.clear();
        self.by_service.clear();
        self.by_secret.clear();
        self.global_objects = 0;
        for ingress in &snapshot.ingresses {
            let node = Node::Ingress(seen::named(&ingress.metadata));
            self.index(node, Footprint::of_ingress(ingress));
        }
        for tenant in &snapshot.tenants {
            let node = Node::Tenant(tenant.metadata.name.clone().unwrap_or_default());
            self.index(
                node,
                Footprint::of_tenant(tenant, &self.options.acme_namespace),
            );
        }
        self.pool_refs.clear();
        self.cert_refs.clear();
        for vhost in &self.config.hosts {
            count(&mut self.pool_refs, &mut self.cert_refs, vhost, 1);
        }
        if let Some(id) = self.config.default_backend.as_ref().and_then(|b| b.pool()) {
            *self.pool_refs.entry(id.clone()).or_default() += 1;
        }
        self.translated = true;
        Update {
            delta,
            full: true,
            statuses: objects,
            dropped,
        }
    }

    /// Adds a node's footprint to the indexes (`None`: a global object).
    fn index(&mut self, node: Node, footprint: Option<Footprint>) {
        let Some(f) = footprint else {
            self.global_objects += 1;
            return;
        };
        for h in &f.hosts {
            self.by_host
                .entry(h.clone())
                .or_default()
                .push(node.clone());
        }
        for s in &f.services {
            self.by_service
                .entry(s.clone())
                .or_default()
                .push(node.clone());
        }
        for s in &f.secrets {
            self.by_secret
                .entry(s.clone())
                .or_default()
                .push(node.clone());
        }
        self.footprints.insert(node, f);
    }

    fn unindex(&mut self, node: &Node) {
        let Some(f) = self.footprints.remove(node) else {
            return;
        };
        fn drop_from<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, Vec<Node>>,
            key: &K,
            node: &Node,
        ) {
            if let Some(v) = map.get_mut(key) {
                v.retain(|n| n != node);
                if v.is_empty() {
                    map.remove(key);
                }
            }
        }
        for h in &f.hosts {
            drop_from(&mut self.by_host, h, node);
        }
        for s in &f.services {
            drop_from(&mut self.by_service, s, node);
        }
        for s in &f.secrets {
            drop_from(&mut self.by_secret, s, node);
        }
    }

    /// The nodes and hosts a change reaches, closed over shared hosts;
    /// `None` when a changed object is global.
    fn reach(&self, changes: &Changes) -> Option<(BTreeSet<Node>, BTreeSet<HostPattern>)> {
        let mut nodes: BTreeSet<Node> = BTreeSet::new();
        let mut hosts: BTreeSet<HostPattern> = BTreeSet::new();
        let mut todo: Vec<HostPattern> = Vec::new();
        let add = |node: Node,
                   new: Option<&Footprint>,
                   nodes: &mut BTreeSet<Node>,
                   todo: &mut Vec<HostPattern>| {
            let old = self.footprints.get(&node);
            for h in old.into_iter().chain(new).flat_map(|f| &f.hosts) {
                todo.push(h.clone());
            }
            nodes.insert(node);
        };
        for (key, new) in &changes.ingresses {
            let footprint = match new {
                Some(i) => Some(Footprint::of_ingress(i)?),
                None => None,
            };
            add(
                Node::Ingress(key.clone()),
                footprint.as_ref(),
                &mut nodes,
                &mut todo,
            );
        }
        for (name, new) in &changes.tenants {
            let footprint = match new {
                Some(t) => Some(Footprint::of_tenant(t, &self.options.acme_namespace)?),
                None => None,
            };
            add(
                Node::Tenant(name.clone()),
                footprint.as_ref(),
                &mut nodes,
                &mut todo,
            );
        }
        let readers = changes
            .services
            .iter()
            .flat_map(|s| self.by_service.get(s).into_iter().flatten())
            .chain(
                changes
                    .secrets
                    .iter()
                    .flat_map(|s| self.by_secret.get(s).into_iter().flatten()),
            );
        for node in readers {
            if !nodes.contains(node) {
                add(node.clone(), None, &mut nodes, &mut todo);
            }
        }
        while let Some(h) = todo.pop() {
            if !hosts.insert(h.clone()) {
                continue;
            }
            for node in self.by_host.get(&h).into_iter().flatten() {
                if !nodes.contains(node) {
                    add(node.clone(), None, &mut nodes, &mut todo);
                }
            }
        }
        Some((nodes, hosts))
    }

    fn partial(
        &mut self,
        snapshot: &Snapshot,
        nodes: BTreeSet<Node>,
        hosts: BTreeSet<HostPattern>,
    ) -> Update {
        // The new footprints, to index and to find what the part reads.
        let footprints: Vec<(Node, Option<Footprint>)> = nodes
            .iter()
            .map(|n| {
                let f = match n {
                    Node::Ingress(key) => self
                        .seen
                        .ingress(key)
                        .and_then(|i| Footprint::of_ingress(&i)),
                    Node::Tenant(name) => self
                        .seen
                        .tenant(name)
                        .and_then(|t| Footprint::of_tenant(&t, &self.options.acme_namespace)),
                };
                (n.clone(), f)
            })
            .collect();
        let part = self.seen.part(
            snapshot,
            &nodes,
            footprints.iter().filter_map(|(_, f)| f.as_ref()),
        );
        let translation = run(&part, &self.options, None).0;
        let sub = translation.config;

        // Hosts: the part's replace those of the reached hosts.
        let mut delta = ConfigDelta::default();
        let new_hosts: HashMap<&HostPattern, &VirtualHost> =
            sub.hosts.iter().map(|h| (&h.host, h)).collect();
        if new_hosts.keys().any(|h| !hosts.contains(*h)) {
            // A host outside the reach: the footprints missed something.
            return self.full(snapshot);
        }
        let mut pools: BTreeSet<PoolId> = BTreeSet::new();
        let mut certs: BTreeSet<CertId> = BTreeSet::new();
        for h in &hosts {
            let old = self
                .config
                .hosts
                .binary_search_by(|v| v.host.cmp(h))
                .ok()
                .map(|i| &self.config.hosts[i]);
            let new = new_hosts.get(h).copied();
            if old == new {
                continue;
            }
            for v in old.into_iter().chain(new) {
                pools.extend(v.routes.iter().flat_map(|r| r.pools()).cloned());
                certs.extend(v.tls.as_ref().and_then(HostTls::certificate).cloned());
            }
            if let Some(v) = old {
                count(&mut self.pool_refs, &mut self.cert_refs, v, -1);
            }
            match new {
                Some(v) => {
                    count(&mut self.pool_refs, &mut self.cert_refs, v, 1);
                    delta.hosts.push(v.clone());
                }
                None => delta.removed_hosts.push(h.clone()),
            }
        }
        pools.extend(sub.pools.keys().cloned());
        certs.extend(sub.certificates.keys().cloned());
        for id in pools {
            let used = self.pool_refs.get(&id).is_some_and(|n| *n > 0);
            splice(
                &mut delta.pools,
                &self.config.pools,
                &sub.pools,
                id.clone(),
                used,
            );
            splice(
                &mut delta.upstream_protocols,
                &self.config.upstream_protocols,
                &sub.upstream_protocols,
                id,
                used,
            );
        }
        for id in certs {
            let used = self.cert_refs.get(&id).is_some_and(|n| *n > 0);
            splice(
                &mut delta.certificates,
                &self.config.certificates,
                &sub.certificates,
                id,
                used,
            );
        }
        let tenants: BTreeSet<&str> = nodes
            .iter()
            .filter_map(|n| match n {
                Node::Tenant(name) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        for name in &tenants {
            let id = TenantId::new(*name);
            let used = sub.tenants.contains_key(&id);
            splice(
                &mut delta.tenants,
                &self.config.tenants,
                &sub.tenants,
                id,
                used,
            );
        }
        self.config.patch(&mut delta);

        // Statuses and the ACME plan of the reached objects.
        let mut statuses: HashMap<ObjectRef, ObjectStatus> = translation
            .statuses
            .into_iter()
            .map(|s| (s.object.clone(), s))
            .collect();
        let mut touched = Vec::with_capacity(nodes.len());
        let mut dropped = Vec::new();
        for node in &nodes {
            let object = node.object();
            match statuses.remove(&object) {
                Some(s) if !self.keep_statuses => dropped.push(s),
                Some(s) => {
                    self.statuses.insert(object.clone(), Arc::new(s));
                }
                None => {
                    self.statuses.remove(&object);
                }
            };
            touched.push(object);
        }
        self.acme
            .domains
            .retain(|_, d| !tenants.contains(d.tenant.as_str()));
        self.acme.domains.extend(translation.acme.domains);

        for (node, footprint) in footprints {
            self.unindex(&node);
            let exists = match &node {
                Node::Ingress(key) => self.seen.ingress(key).is_some(),
                Node::Tenant(name) => self.seen.tenant(name).is_some(),
            };
            if exists {
                self.index(node, footprint);
            }
        }
        Update {
            delta,
            full: false,
            statuses: touched,
            dropped,
        }
    }
}

/// Counts (or uncounts) the pools and certificate a vhost refers to.
fn count(
    pools: &mut HashMap<PoolId, u32>,
    certs: &mut HashMap<CertId, u32>,
    vhost: &VirtualHost,
    by: i32,
) {
    let bump = |n: &mut u32| *n = n.saturating_add_signed(by);
    for id in vhost.routes.iter().flat_map(|r| r.pools()) {
        bump(pools.entry(id.clone()).or_default());
    }
    if let Some(id) = vhost.tls.as_ref().and_then(HostTls::certificate) {
        bump(certs.entry(id.clone()).or_default());
    }
}

/// The delta entry for `key`: the part's value while something uses it,
/// removed once nothing does.
fn splice<K: Ord + Clone, V: Clone + PartialEq>(
    delta: &mut crate::model::MapDelta<K, V>,
    current: &BTreeMap<K, V>,
    part: &BTreeMap<K, V>,
    key: K,
    used: bool,
) {
    match (used, current.get(&key), part.get(&key)) {
        (true, cur, Some(new)) if cur != Some(new) => {
            delta.set.insert(key, new.clone());
        }
        (false, Some(_), _) => delta.removed.push(key),
        _ => {}
    }
}
