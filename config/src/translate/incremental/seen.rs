//! The objects of the last snapshot by namespace and name, what changed
//! since, and the part of a snapshot a partial translation reads.
//!
//! A snapshot is compared by pointer with the last one (reflector stores and
//! the manifest cache hand out the same `Arc` for an unchanged object, in
//! the same order): only the block between the common ends is looked up,
//! by a hash of namespace and name, and compared by value.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use super::footprint::{Footprint, NamedRef};
use super::Node;
use crate::hostname::Hostname;
use crate::issuer::AcmeIssuer;
use crate::manifests::Snapshot;
use crate::tenant::Tenant;
use crate::translate::Options;

/// The label that names an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Secrets with a label of ours (upstream roots, ACME account bindings) are
/// read by name from annotations and issuers: a change to one is global.
const OUR_LABELS: &str = "vestibule.dev/";

pub fn named(meta: &ObjectMeta) -> NamedRef {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn key(namespace: &str, name: &str) -> u64 {
    // A fixed hasher: the same key in every pass.
    let mut h = std::hash::DefaultHasher::new();
    namespace.hash(&mut h);
    name.hash(&mut h);
    h.finish()
}

fn key_of(meta: &ObjectMeta) -> u64 {
    key(
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// Did a kind whose every change is global change?
fn global<T>(r: Result<Vec<T>, Vec<T>>) -> bool {
    r.map_or(true, |c| !c.is_empty())
}

/// One kind's objects by key, and the last snapshot's list of them.
struct Table<T> {
    objects: HashMap<u64, Arc<T>>,
    /// The last snapshot's objects in its order. A new list is compared
    /// with it by pointer from both ends (snapshots are concatenations of
    /// per-file or per-store lists, so a change is a block in the middle):
    /// only that block is looked up by key.
    last: Vec<Arc<T>>,
    /// The last update found two objects under one key: the next one
    /// rebuilds the table.
    clashed: bool,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            objects: HashMap::new(),
            last: Vec::new(),
            clashed: false,
        }
    }
}

/// An object added, changed (old and new) or removed.
type Change<T> = (Option<Arc<T>>, Option<Arc<T>>);

fn same_name<T: Resource>(a: &T, b: &T) -> bool {
    a.meta().namespace == b.meta().namespace && a.meta().name == b.meta().name
}

impl<T: Resource + PartialEq> Table<T> {
    /// Takes in `objects` and returns what changed. Two objects under one
    /// key (a duplicate, or a hash collision) are `Err`: the full translator
    /// decides between them.
    fn update(&mut self, objects: &[Arc<T>]) -> Result<Vec<Change<T>>, Vec<Change<T>>> {
        if self.clashed {
            return self.rebuild(objects);
        }
        let (n, m) = (objects.len(), self.last.len());
        let mut p = 0;
        while p < n.min(m) && Arc::ptr_eq(&objects[p], &self.last[p]) {
            p += 1;
        }
        let mut s = 0;
        while s < n.min(m) - p && Arc::ptr_eq(&objects[n - 1 - s], &self.last[m - 1 - s]) {
            s += 1;
        }
        let (old_mid, new_mid) = (&self.last[p..m - s], &objects[p..n - s]);
        if old_mid.is_empty() && new_mid.is_empty() {
            return Ok(Vec::new());
        }
        let old_keys: HashMap<u64, &Arc<T>> =
            old_mid.iter().map(|o| (key_of(o.meta()), o)).collect();
        let mut new_keys: HashSet<u64> = HashSet::with_capacity(new_mid.len());
        let mut changes = Vec::new();
        let mut clash = old_keys.len() != old_mid.len();
        for o in new_mid {
            let k = key_of(o.meta());
            clash |= !new_keys.insert(k);
            match old_keys.get(&k) {
                Some(old) => {
                    clash |= !same_name(&***old, &**o);
                    if !Arc::ptr_eq(old, o) && ***old != **o {
                        changes.push((Some((*old).clone()), Some(o.clone())));
                    }
                }
                // Also under a key outside the block: a duplicate.
                None if self.objects.contains_key(&k) => clash = true,
                None => changes.push((None, Some(o.clone()))),
            }
        }
        for (k, old) in &old_keys {
            if !new_keys.contains(k) {
                changes.push((Some((*old).clone()), None));
            }
        }
        if clash {
            return self.rebuild(objects);
        }
        for (k, _) in old_keys {
            self.objects.remove(&k);
        }
        for o in new_mid {
            self.objects.insert(key_of(o.meta()), o.clone());
        }
        self.last.splice(p..m - s, new_mid.iter().cloned());
        Ok(changes)
    }

    /// The table made anew from `objects`, keyed lookups only.
    fn rebuild(&mut self, objects: &[Arc<T>]) -> Result<Vec<Change<T>>, Vec<Change<T>>> {
        let mut next: HashMap<u64, Arc<T>> = HashMap::with_capacity(objects.len());
        let mut clash = false;
        for o in objects {
            clash |= next.insert(key_of(o.meta()), o.clone()).is_some();
        }
        let mut changes = Vec::new();
        for (k, o) in &next {
            match self.objects.get(k) {
                Some(old) if Arc::ptr_eq(old, o) => {}
                Some(old) if same_name(&**old, &**o) && **old == **o => {}
                Some(old) => changes.push((Some(old.clone()), Some(o.clone()))),
                None => changes.push((None, Some(o.clone()))),
            }
        }
        for (k, old) in &self.objects {
            if !next.contains_key(k) {
                changes.push((Some(old.clone()), None));
            }
        }
        self.objects = next;
        self.last = objects.to_vec();
        self.clashed = clash;
        if clash {
            Err(changes)
        } else {
            Ok(changes)
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Arc<T>> {
        let o = self.objects.get(&key(namespace, name))?;
        (o.meta().namespace.as_deref().unwrap_or("") == namespace
            && o.meta().name.as_deref() == Some(name))
        .then(|| o.clone())
    }
}

/// What changed between two snapshots.
#[derive(Default)]
pub struct Changes {
    /// Something every host may depend on changed.
    pub global: bool,
    pub ingresses: Vec<(NamedRef, Option<Arc<Ingress>>)>,
    pub tenants: Vec<(String, Option<Arc<Tenant>>)>,
    /// Services changed, or whose EndpointSlices did.
    pub services: BTreeSet<NamedRef>,
    pub secrets: BTreeSet<NamedRef>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.global
            && self.ingresses.is_empty()
            && self.tenants.is_empty()
            && self.services.is_empty()
            && self.secrets.is_empty()
    }
}

#[derive(Default)]
pub struct Seen {
    ingress_classes: Table<IngressClass>,
    acme_issuers: Table<AcmeIssuer>,
    config_maps: Table<ConfigMap>,
    ingresses: Table<Ingress>,
    tenants: Table<Tenant>,
    services: Table<Service>,
    slices: Table<EndpointSlice>,
    secrets: Table<Secret>,
    /// Secrets with a label of ours, which every part reads.
    labelled: BTreeMap<u64, Arc<Secret>>,
    acme_failures: BTreeMap<Hostname, String>,
    /// The last snapshot had two objects under one key.
    clashed: bool,
}

fn ours(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .iter()
        .flatten()
        .any(|(k, _)| k.starts_with(OUR_LABELS))
}

impl Seen {
    /// Takes in `snapshot`, returning what changed since the last one.
    pub fn update(&mut self, snapshot: &Snapshot, _options: &Options) -> Changes {
        let mut changes = Changes::default();
        let classes = global(self.ingress_classes.update(&snapshot.ingress_classes));
        let issuers = global(self.acme_issuers.update(&snapshot.acme_issuers));
        let maps = global(self.config_maps.update(&snapshot.config_maps));
        changes.global = classes || issuers || maps || self.acme_failures != snapshot.acme_failures;
        let mut clash = false;
        self.acme_failures.clone_from(&snapshot.acme_failures);

        match self.ingresses.update(&snapshot.ingresses) {
            Ok(c) => {
                for (old, new) in c {
                    let meta = old.as_ref().or(new.as_ref()).map(|o| named(&o.metadata));
                    changes.ingresses.extend(meta.map(|k| (k, new)));
                }
            }
            Err(_) => clash = true,
        }
        match self.tenants.update(&snapshot.tenants) {
            Ok(c) => {
                for (old, new) in c {
                    let name = old
                        .as_ref()
                        .or(new.as_ref())
                        .and_then(|t| t.metadata.name.clone());
                    changes.tenants.extend(name.map(|n| (n, new)));
                }
            }
            Err(_) => clash = true,
        }
        match self.services.update(&snapshot.services) {
            Ok(c) => {
                for (old, new) in c {
                    changes
                        .services
                        .extend(old.or(new).map(|s| named(&s.metadata)));
                }
            }
            Err(_) => clash = true,
        }
        match self.slices.update(&snapshot.endpoint_slices) {
            Ok(c) => {
                for o in c
                    .into_iter()
                    .flat_map(|(old, new)| old.into_iter().chain(new))
                {
                    let service = o
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL));
                    if let Some(service) = service {
                        let ns = o.metadata.namespace.clone().unwrap_or_default();
                        changes.services.insert((ns, service.clone()));
                    }
                }
            }
            Err(_) => clash = true,
        }
        match self.secrets.update(&snapshot.secrets) {
            Ok(c) => {
                for (old, new) in c {
                    let Some(meta) = old.as_ref().or(new.as_ref()).map(|s| s.metadata.clone())
                    else {
                        continue;
                    };
                    if old.as_deref().is_some_and(ours) || new.as_deref().is_some_and(ours) {
                        changes.global = true;
                    }
                    match new.filter(|s| ours(s)) {
                        Some(s) => self.labelled.insert(key_of(&meta), s),
                        None => self.labelled.remove(&key_of(&meta)),
                    };
                    changes.secrets.insert(named(&meta));
                }
            }
            Err(_) => clash = true,
        }
        // Two objects under one key: translated in full while they last and
        // once more after, as the indexes may have kept either one's reach.
        changes.global |= clash || self.clashed;
        self.clashed = clash;
        changes
    }

    pub fn ingress(&self, (ns, name): &NamedRef) -> Option<Arc<Ingress>> {
        self.ingresses.get(ns, name)
    }

    pub fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.get("", name)
    }

    /// The snapshot a partial translation of `nodes` reads: them, what
    /// their footprints read, and the cluster-wide objects.
    pub fn part<'a>(
        &self,
        snapshot: &Snapshot,
        nodes: &BTreeSet<Node>,
        footprints: impl Iterator<Item = &'a Footprint>,
    ) -> Snapshot {
        let mut part = Snapshot {
            ingress_classes: snapshot.ingress_classes.clone(),
            config_maps: snapshot.config_maps.clone(),
            acme_issuers: snapshot.acme_issuers.clone(),
            namespaces: snapshot.namespaces.clone(),
            acme_failures: snapshot.acme_failures.clone(),
            secrets: self.labelled.values().cloned().collect(),
            ..Snapshot::default()
        };
        for node in nodes {
            match node {
                Node::Ingress(key) => part.ingresses.extend(self.ingress(key)),
                Node::Tenant(name) => part.tenants.extend(self.tenant(name)),
            }
        }
        let mut services: HashSet<(&str, &str)> = HashSet::new();
        let mut secrets: HashSet<(&str, &str)> = HashSet::new();
        for f in footprints {
            for (ns, name) in &f.services {
                if services.insert((ns, name)) {
                    part.services.extend(self.services.get(ns, name));
                }
            }
            for (ns, name) in &f.secrets {
                if secrets.insert((ns, name)) && !self.labelled.contains_key(&key(ns, name)) {
                    part.secrets.extend(self.secrets.get(ns, name));
                }
            }
        }
        if !services.is_empty() {
            part.endpoint_slices = snapshot
                .endpoint_slices
                .iter()
                .filter(|s| {
                    let ns = s.metadata.namespace.as_deref().unwrap_or("");
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|svc| services.contains(&(ns, svc.as_str())))
                })
                .cloned()
                .collect();
        }
        part
    }
}
