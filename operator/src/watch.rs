//! Watch caches: one kube-runtime reflector per kind (and per namespace when
//! `--watch-namespace` narrows the watch). Every change marks the snapshot
//! dirty; the publisher decides when to translate.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use vestibule_config::gateway_api::{
    Gateway, GatewayClass, HttpRoute, ReferenceGrant, ReferenceGrantV1Beta1,
};
use vestibule_config::issuer::AcmeIssuer;
use vestibule_config::tenant::Tenant;
use vestibule_config::Snapshot;

use crate::{Error, Settings};

/// Only TLS Secrets are cached: the operator never needs (or holds) others.
pub const TLS_SECRET_SELECTOR: &str = "type=kubernetes.io/tls";
/// Opaque Secrets holding an AcmeIssuer's External Account Binding key.
pub const EAB_SECRET_SELECTOR: &str = "vestibule.dev/acme-eab=true";

/// The Gateway API caches.
#[derive(Clone)]
pub struct GatewayApiStores {
    pub classes: Store<GatewayClass>,
    pub gateways: Vec<Store<Gateway>>,
    pub routes: Vec<Store<HttpRoute>>,
    /// v1beta1: served by every Gateway API release in use.
    pub grants: Vec<Store<ReferenceGrantV1Beta1>>,
    /// For listeners' namespace selectors (labels).
    pub namespaces: Store<Namespace>,
}

/// Read handles to every cache, cheap to clone.
#[derive(Clone)]
pub struct Stores {
    pub ingress_classes: Store<IngressClass>,
    pub ingresses: Vec<Store<Ingress>>,
    pub services: Vec<Store<Service>>,
    pub endpoint_slices: Vec<Store<EndpointSlice>>,
    pub secrets: Vec<Store<Secret>>,
    /// ConfigMaps labelled as upstream roots (`proxy-ssl-ca-configmap`).
    pub config_maps: Vec<Store<ConfigMap>>,
    pub tenants: Store<Tenant>,
    pub acme_issuers: Store<AcmeIssuer>,
    /// The Gateway API objects, when `--gateway-api` is on.
    pub gateway_api: Option<GatewayApiStores>,
    /// The `--publish-service` Service, watched on its own so it is seen
    /// even outside the watched namespaces.
    pub publish_service: Option<Store<Service>>,
    /// Notified on every change of any cache.
    pub dirty: Arc<Notify>,
}

impl Stores {
    /// Spawns one reflector task per cache into `tasks`.
    pub fn start(
        client: &Client,
        settings: &Settings,
        tasks: &mut JoinSet<Result<(), Error>>,
        shutdown: watch::Receiver<bool>,
    ) -> Stores {
        let dirty = Arc::new(Notify::new());
        let namespaces: Vec<Option<&str>> = if settings.watch_namespaces.is_empty() {
            vec![None]
        } else {
            settings
                .watch_namespaces
                .iter()
                .map(|n| Some(n.as_str()))
                .collect()
        };
        let mut spawn = Spawner {
            client,
            tasks,
            dirty: &dirty,
            shutdown: &shutdown,
        };
        let all = watcher::Config::default();
        let ingress_classes = spawn.one("IngressClass", Api::all(client.clone()), all.clone());
        let tenants = spawn.one("Tenant", Api::all(client.clone()), all.clone());
        let acme_issuers = spawn.one("AcmeIssuer", Api::all(client.clone()), all.clone());
        let ingresses = spawn.each("Ingress", &namespaces, &all);
        let services = spawn.each("Service", &namespaces, &all);
        let endpoint_slices = spawn.each("EndpointSlice", &namespaces, &all);
        let mut secrets = spawn.each(
            "Secret",
            &namespaces,
            &watcher::Config::default().fields(TLS_SECRET_SELECTOR),
        );
        // External Account Binding keys are Opaque Secrets: those labelled
        // for it are watched too (never every Secret of the cluster).
        secrets.extend(spawn.each(
            "Secret",
            &namespaces,
            &watcher::Config::default().labels(EAB_SECRET_SELECTOR),
        ));
        // So are Opaque Secrets of upstream roots (`proxy-ssl-secret`).
        secrets.extend(spawn.each(
            "Secret",
            &namespaces,
            &watcher::Config::default().labels(&format!(
                "{}=true",
                vestibule_config::translate::tls::UPSTREAM_CA_LABEL
            )),
        ));
        let upstream_ca = format!(
            "{}=true",
            vestibule_config::translate::tls::UPSTREAM_CA_LABEL
        );
        let config_maps = spawn.each(
            "ConfigMap",
            &namespaces,
            &watcher::Config::default().labels(&upstream_ca),
        );
        // Issued certificates live in the acme namespace, watched or not.
        let acme_ns = settings.translate.acme_namespace.as_str();
        if !namespaces.iter().any(|n| n.is_none_or(|n| n == acme_ns)) {
            secrets.extend(
                spawn.each(
                    "Secret",
                    &[Some(acme_ns)],
                    &watcher::Config::default()
                        .labels(&format!("{}=true", vestibule_config::acme::ISSUED_LABEL)),
                ),
            );
        }
        let gateway_api = settings.gateway_api.then(|| GatewayApiStores {
            classes: spawn.one("GatewayClass", Api::all(client.clone()), all.clone()),
            gateways: spawn.each("Gateway", &namespaces, &all),
            routes: spawn.each("HTTPRoute", &namespaces, &all),
            grants: spawn.each("ReferenceGrant", &namespaces, &all),
            namespaces: spawn.one("Namespace", Api::all(client.clone()), all.clone()),
        });
        let publish_service = settings.publish_service.as_ref().map(|p| {
            spawn.one(
                "PublishService",
                Api::namespaced(client.clone(), &p.namespace),
                watcher::Config::default().fields(&format!("metadata.name={}", p.name)),
            )
        });
        Stores {
            ingress_classes,
            ingresses,
            services,
            endpoint_slices,
            secrets,
            config_maps,
            tenants,
            acme_issuers,
            gateway_api,
            publish_service,
            dirty,
        }
    }

    /// Waits until every cache has done its initial list, so the first
    /// translation never sees a half-filled cluster.
    pub async fn ready(&self) -> bool {
        let mut ok = self.ingress_classes.wait_until_ready().await.is_ok()
            && self.tenants.wait_until_ready().await.is_ok()
            && self.acme_issuers.wait_until_ready().await.is_ok();
        for s in &self.ingresses {
            ok &= s.wait_until_ready().await.is_ok();
        }
        for s in &self.services {
            ok &= s.wait_until_ready().await.is_ok();
        }
        for s in &self.endpoint_slices {
            ok &= s.wait_until_ready().await.is_ok();
        }
        for s in &self.secrets {
            ok &= s.wait_until_ready().await.is_ok();
        }
        for s in &self.config_maps {
            ok &= s.wait_until_ready().await.is_ok();
        }
        if let Some(s) = &self.publish_service {
            ok &= s.wait_until_ready().await.is_ok();
        }
        if let Some(g) = &self.gateway_api {
            ok &= g.classes.wait_until_ready().await.is_ok();
            ok &= g.namespaces.wait_until_ready().await.is_ok();
            for s in &g.gateways {
                ok &= s.wait_until_ready().await.is_ok();
            }
            for s in &g.routes {
                ok &= s.wait_until_ready().await.is_ok();
            }
            for s in &g.grants {
                ok &= s.wait_until_ready().await.is_ok();
            }
        }
        ok
    }

    /// Copies the caches into a translator input.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            ingress_classes: owned(&self.ingress_classes),
            ingresses: owned_all(&self.ingresses),
            services: owned_all(&self.services),
            endpoint_slices: owned_all(&self.endpoint_slices),
            secrets: owned_all(&self.secrets),
            config_maps: owned_all(&self.config_maps),
            tenants: owned(&self.tenants),
            acme_issuers: owned(&self.acme_issuers),
            gateway_classes: self
                .gateway_api
                .as_ref()
                .map_or_else(Vec::new, |g| owned(&g.classes)),
            gateways: self
                .gateway_api
                .as_ref()
                .map_or_else(Vec::new, |g| owned_all(&g.gateways)),
            http_routes: self
                .gateway_api
                .as_ref()
                .map_or_else(Vec::new, |g| owned_all(&g.routes)),
            reference_grants: self.gateway_api.as_ref().map_or_else(Vec::new, |g| {
                owned_all(&g.grants)
                    .iter()
                    .map(|r| Arc::new(ReferenceGrant::from(&**r)))
                    .collect()
            }),
            namespaces: self
                .gateway_api
                .as_ref()
                .map_or_else(Vec::new, |g| owned(&g.namespaces)),
            ..Snapshot::default()
        }
    }

    /// Finds a cached Ingress.
    pub fn ingress(&self, namespace: &str, name: &str) -> Option<Arc<Ingress>> {
        let key = reflector::ObjectRef::new(name).within(namespace);
        self.ingresses.iter().find_map(|s| s.get(&key))
    }

    pub fn acme_issuer(&self, name: &str) -> Option<Arc<AcmeIssuer>> {
        self.acme_issuers.get(&reflector::ObjectRef::new(name))
    }

    pub fn tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(&reflector::ObjectRef::new(name))
    }
}

/// The store's objects, shared with it (no copy).
fn owned<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<Arc<K>> {
    store.state()
}

fn owned_all<K: Resource<DynamicType = ()> + Clone>(stores: &[Store<K>]) -> Vec<Arc<K>> {
    stores.iter().flat_map(owned).collect()
}

struct Spawner<'a> {
    client: &'a Client,
    tasks: &'a mut JoinSet<Result<(), Error>>,
    dirty: &'a Arc<Notify>,
    shutdown: &'a watch::Receiver<bool>,
}

impl Spawner<'_> {
    fn one<K>(&mut self, kind: &'static str, api: Api<K>, config: watcher::Config) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (store, writer) = reflector::store();
        self.tasks.spawn(reflect(
            kind,
            api,
            config,
            writer,
            self.dirty.clone(),
            self.shutdown.clone(),
        ));
        store
    }

    fn each<K>(
        &mut self,
        kind: &'static str,
        namespaces: &[Option<&str>],
        config: &watcher::Config,
    ) -> Vec<Store<K>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        namespaces
            .iter()
            .map(|ns| {
                let api = match ns {
                    Some(ns) => Api::namespaced(self.client.clone(), ns),
                    None => Api::all(self.client.clone()),
                };
                self.one(kind, api, config.clone())
            })
            .collect()
    }
}

/// Runs one reflector until shutdown. Watch errors are retried with
/// backoff by kube-runtime; they are logged, never fatal.
async fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    dirty: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            event = stream.next() => match event {
                // Objects of an initial list are reported once, at InitDone.
                Some(Ok(Event::Init | Event::InitApply(_))) => {}
                Some(Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_))) => dirty.notify_one(),
                Some(Err(e)) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
                None => return Ok(()),
            },
            _ = crate::stopped(&mut shutdown) => return Ok(()),
        }
    }
}
