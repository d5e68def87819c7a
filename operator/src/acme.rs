//! ACME in operator mode: the issuer runs in the operator and orders only
//! while this replica leads (so the CA sees one order per domain, not one
//! per replica); certificates and the account key are kept in Secrets,
//! which every replica and restart reuses; pending HTTP-01 challenges
//! travel to the gateways in the config they long-poll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use tokio::sync::Notify;
use vestibule_acme::{Issued, Store, StoreError};
use vestibule_config::acme;

/// Label of the account Secrets.
const ACCOUNT_LABEL: &str = "vestibule.dev/acme-account";
/// The account Secret's key holding the credentials (with the account key).
const CREDENTIALS: &str = "credentials.json";

/// Issued certificates in `kubernetes.io/tls` Secrets `acme.<domain>` of
/// the acme namespace; accounts in `vestibule-acme-account-<hash>`.
pub struct SecretStore {
    client: Client,
    namespace: String,
}

impl SecretStore {
    pub fn new(client: Client, namespace: String) -> Self {
        SecretStore { client, namespace }
    }

    fn api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates `secret`, or replaces the one of its name.
    async fn put(&self, mut secret: Secret) -> Result<(), StoreError> {
        let api = self.api();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let failed =
            |e: kube::Error| StoreError::Other(format!("Secret {}/{name}: {e}", self.namespace));
        match api.get_opt(&name).await.map_err(failed)? {
            Some(current) => {
                secret.metadata.resource_version = current.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &secret)
                    .await
                    .map_err(failed)?;
            }
            None => {
                api.create(&PostParams::default(), &secret)
                    .await
                    .map_err(failed)?;
            }
        }
        Ok(())
    }
}

fn account_secret(key: &str) -> String {
    format!("vestibule-acme-account-{key}")
}

#[async_trait]
impl Store for SecretStore {
    async fn account(&self, key: &str) -> Result<Option<String>, StoreError> {
        let secret = self
            .api()
            .get_opt(&account_secret(key))
            .await
            .map_err(|e| StoreError::Other(format!("account Secret: {e}")))?;
        Ok(secret.and_then(|s| {
            let bytes = s.data?.remove(CREDENTIALS)?;
            String::from_utf8(bytes.0).ok()
        }))
    }

    async fn save_account(&self, key: &str, credentials: &str) -> Result<(), StoreError> {
        self.put(Secret {
            metadata: ObjectMeta {
                name: Some(account_secret(key)),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    ACCOUNT_LABEL.to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                CREDENTIALS.to_string(),
                ByteString(credentials.as_bytes().to_vec()),
            )])),
            ..Default::default()
        })
        .await
    }

    async fn save(&self, issued: &Issued) -> Result<(), StoreError> {
        let mut annotations = BTreeMap::from([
            (acme::DOMAIN.to_string(), issued.domain.to_string()),
            (acme::ORDER.to_string(), issued.order_url.clone()),
            (acme::NOT_AFTER.to_string(), issued.not_after.clone()),
            (acme::RENEW_AT.to_string(), issued.renew_at.clone()),
        ]);
        if let Some(id) = &issued.ari_id {
            annotations.insert(acme::ARI_ID.to_string(), id.clone());
        }
        let labels = BTreeMap::from([
            (acme::ISSUED_LABEL.to_string(), "true".to_string()),
            (
                acme::TENANT_LABEL.to_string(),
                label_value(issued.tenant.as_str()),
            ),
        ]);
        self.put(Secret {
            metadata: ObjectMeta {
                name: Some(acme::secret_name(&issued.domain)),
                namespace: Some(self.namespace.clone()),
                annotations: Some(annotations),
                labels: Some(labels),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (
                    "tls.crt".to_string(),
                    ByteString(issued.chain_pem.as_bytes().to_vec()),
                ),
                (
                    "tls.key".to_string(),
                    ByteString(issued.key_pem.as_bytes().to_vec()),
                ),
            ])),
            ..Default::default()
        })
        .await
    }
}

/// A label value (at most 63 characters): the tenant name, cut if longer
/// (the annotation-free label is for selection, the name is in the Tenant).
fn label_value(v: &str) -> String {
    v.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.', '_'])
        .to_string()
}

/// The operator's issuer: Secrets in `namespace`, metrics in `registry`,
/// each stored certificate or failure and each challenge change makes
/// `dirty` ask for a translation.
pub fn issuer(
    client: Client,
    namespace: String,
    registry: &prometheus::Registry,
    limits: vestibule_acme::Limits,
    propagation: Duration,
    dirty: Arc<Notify>,
) -> Result<
    (
        vestibule_acme::Handle,
        impl std::future::Future<Output = ()> + Send,
    ),
    prometheus::Error,
> {
    let metrics = vestibule_acme::Metrics::new(registry)?;
    let on_change = dirty.clone();
    let (handle, run) = vestibule_acme::issuer(vestibule_acme::Settings {
        store: Arc::new(SecretStore::new(client, namespace)),
        metrics,
        limits,
        timeouts: vestibule_acme::Timeouts {
            propagation,
            ..Default::default()
        },
        on_change: Arc::new(move || on_change.notify_one()),
        // Gateways report handshakes (`POST /v1/acme/demand`, relayed by
        // [`relay_demand`]).
        sees_handshakes: true,
    });
    let mut challenges = handle.board().subscribe();
    let run = async move {
        let passes_challenges_on = async move {
            while challenges.changed().await.is_ok() {
                dirty.notify_one();
            }
        };
        tokio::join!(run, passes_challenges_on);
    };
    Ok((handle, run))
}

// === on-demand requests from gateway replicas ===

/// The ConfigMap (in the operator's namespace) through which replicas that
/// do not lead pass on-demand requests to the one that does: a gateway's
/// request lands on whichever replica its connection reached.
pub const DEMAND_CONFIGMAP: &str = "vestibule-acme-demand";
/// Names it holds at most; more are dropped (a later handshake asks again).
const DEMAND_KEYS_MAX: usize = 1024;
/// How often the leader takes the requests others left.
const LEADER_POLL: Duration = Duration::from_secs(1);

/// Relays `POST /v1/acme/demand` requests to the leader's issuer: directly
/// on the leader, through [`DEMAND_CONFIGMAP`] elsewhere.
pub async fn relay_demand(
    client: Client,
    namespace: String,
    handle: vestibule_acme::Handle,
    leader: tokio::sync::watch::Receiver<bool>,
    mut demands: tokio::sync::mpsc::Receiver<Vec<vestibule_config::Hostname>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), crate::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let mut tick = tokio::time::interval(LEADER_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(names) = demands.recv() => {
                if *leader.borrow() {
                    for n in &names {
                        handle.on_demand(n.as_str());
                    }
                } else if let Err(e) = record(&api, &names).await {
                    tracing::warn!(error = %e, "cannot pass on-demand requests to the leader");
                }
            }
            _ = tick.tick() => if *leader.borrow() {
                if let Err(e) = take(&api, &handle).await {
                    tracing::debug!(error = %e, "cannot read on-demand requests");
                }
            },
            _ = crate::stopped(&mut shutdown) => return Ok(()),
        }
    }
}

/// Adds `names` to the ConfigMap (created on first use), within its bound.
async fn record(
    api: &Api<ConfigMap>,
    names: &[vestibule_config::Hostname],
) -> Result<(), kube::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let data: BTreeMap<String, String> =
        names.iter().map(|n| (n.to_string(), now.clone())).collect();
    match api.get_opt(DEMAND_CONFIGMAP).await? {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(DEMAND_CONFIGMAP.into()),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                // Another replica created it meanwhile: add to it.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    merge(api, &names_patch(names, &now)).await
                }
                other => other.map(drop),
            }
        }
        Some(cm) if cm.data.as_ref().map_or(0, BTreeMap::len) >= DEMAND_KEYS_MAX => Ok(()),
        Some(_) => merge(api, &names_patch(names, &now)).await,
    }
}

fn names_patch(names: &[vestibule_config::Hostname], value: &str) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|n| (n.to_string(), value.into()))
        .collect();
    serde_json::json!({ "data": data })
}

async fn merge(api: &Api<ConfigMap>, patch: &serde_json::Value) -> Result<(), kube::Error> {
    api.patch(
        DEMAND_CONFIGMAP,
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map(drop)
}

/// The leader hands the recorded names to its issuer and removes them.
async fn take(api: &Api<ConfigMap>, handle: &vestibule_acme::Handle) -> Result<(), kube::Error> {
    let Some(cm) = api.get_opt(DEMAND_CONFIGMAP).await? else {
        return Ok(());
    };
    let data = cm.data.unwrap_or_default();
    if data.is_empty() {
        return Ok(());
    }
    for name in data.keys() {
        handle.on_demand(name);
    }
    let removed: serde_json::Map<String, serde_json::Value> = data
        .keys()
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    merge(api, &serde_json::json!({ "data": removed })).await
}
