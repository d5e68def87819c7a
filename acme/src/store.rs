//! Where issued certificates and ACME account keys are kept: the narrow
//! interface between the issuer and storage ([`Store`]), and the
//! `--state-dir` implementation of `--manifests` mode ([`DirStore`]), which
//! also hands its certificates to the translator as the `kubernetes.io/tls`
//! Secrets an operator would have written.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde::{Deserialize, Serialize};
use vestibule_config::acme;
use vestibule_config::model::TenantId;
use vestibule_config::Hostname;

/// A certificate issued for one domain.
#[derive(Clone)]
pub struct Issued {
    pub domain: Hostname,
    pub tenant: TenantId,
    pub chain_pem: String,
    pub key_pem: String,
    pub order_url: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339: when this certificate is due for renewal.
    pub renew_at: String,
    /// Its ACME Renewal Information id, when the leaf has an AKI.
    pub ari_id: Option<String>,
}

// Keys never reach logs, even through `{:?}`.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("domain", &self.domain)
            .field("tenant", &self.tenant)
            .field("order_url", &self.order_url)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// What the issuer needs of storage. Account credentials are opaque JSON
/// (they hold the account's private key).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The stored credentials of the account for `key` (one per directory).
    async fn account(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn save_account(&self, key: &str, credentials: &str) -> Result<(), StoreError>;
    /// Keeps a new certificate; the one it replaces serves until this returns.
    async fn save(&self, issued: &Issued) -> Result<(), StoreError>;
}

/// The account key for a directory URL: a file or Secret name.
pub fn account_key(directory_url: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(directory_url.as_bytes())[..12])
}

// === impl DirStore ===

/// Certificates and accounts under `<state-dir>/acme/`:
/// `accounts/<key>.json` and `certs/<domain>/{tls.crt,tls.key,meta.json}`,
/// each written to a temporary file and renamed into place; keys and
/// account files are 0600, created so (never widened later).
pub struct DirStore {
    root: PathBuf,
    namespace: String,
    /// The certificates as Secrets, kept as shared objects so an unchanged
    /// one is the same `Arc` at every translation (its check is remembered).
    secrets: Mutex<BTreeMap<Hostname, Arc<Secret>>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    tenant: String,
    order: String,
    not_after: String,
    renew_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ari_id: Option<String>,
}

impl DirStore {
    /// Opens (creating) `<state_dir>/acme` and reads the certificates in it;
    /// Secrets are placed in `namespace` (the translator's acme namespace).
    /// A certificate directory that can't be read is skipped with a warning
    /// (its domain is ordered again).
    pub fn open(state_dir: &Path, namespace: &str) -> Result<Self, StoreError> {
        let root = state_dir.join("acme");
        for dir in [root.join("accounts"), root.join("certs")] {
            create_private_dir(&dir)?;
        }
        let store = DirStore {
            root,
            namespace: namespace.to_string(),
            secrets: Mutex::new(BTreeMap::new()),
        };
        let certs = store.root.join("certs");
        let entries = fs::read_dir(&certs).map_err(|source| StoreError::Io {
            path: certs.clone(),
            source,
        })?;
        let mut secrets = BTreeMap::new();
        for entry in entries.flatten() {
            let Some(domain) = entry
                .file_name()
                .to_str()
                .and_then(|n| Hostname::parse(n).ok())
            else {
                continue;
            };
            match store.read_cert(&entry.path()) {
                Ok((chain, key, meta)) => {
                    secrets.insert(
                        domain.clone(),
                        Arc::new(store.secret(&domain, chain, key, &meta)),
                    );
                }
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "skipping an unreadable stored certificate")
                }
            }
        }
        *store.secrets.lock().unwrap_or_else(|p| p.into_inner()) = secrets;
        Ok(store)
    }

    /// The stored certificates as `kubernetes.io/tls` Secrets.
    pub fn secrets(&self) -> Vec<Arc<Secret>> {
        let secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        secrets.values().cloned().collect()
    }

    fn read_cert(&self, dir: &Path) -> Result<(String, String, Meta), StoreError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| StoreError::Io { path, source })
        };
        let meta: Meta = serde_json::from_str(&read("meta.json")?)
            .map_err(|e| StoreError::Other(format!("{}: {e}", dir.join("meta.json").display())))?;
        Ok((read("tls.crt")?, read("tls.key")?, meta))
    }

    fn secret(&self, domain: &Hostname, chain: String, key: String, meta: &Meta) -> Secret {
        let mut annotations = vec![
            (acme::DOMAIN, domain.to_string()),
            (acme::ORDER, meta.order.clone()),
            (acme::NOT_AFTER, meta.not_after.clone()),
            (acme::RENEW_AT, meta.renew_at.clone()),
        ];
        if let Some(id) = &meta.ari_id {
            annotations.push((acme::ARI_ID, id.clone()));
        }
        let labels = [
            (acme::ISSUED_LABEL, "true".to_string()),
            (acme::TENANT_LABEL, meta.tenant.clone()),
        ];
        let map = |pairs: &[(&str, String)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        Secret {
            metadata: ObjectMeta {
                name: Some(acme::secret_name(domain)),
                namespace: Some(self.namespace.clone()),
                annotations: Some(map(&annotations)),
                labels: Some(map(&labels)),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(chain.into_bytes())),
                ("tls.key".to_string(), ByteString(key.into_bytes())),
            ])),
            ..Default::default()
        }
    }

    fn save_sync(&self, issued: &Issued) -> Result<(), StoreError> {
        let dir = self.root.join("certs").join(issued.domain.as_str());
        create_private_dir(&dir)?;
        let meta = Meta {
            tenant: issued.tenant.to_string(),
            order: issued.order_url.clone(),
            not_after: issued.not_after.clone(),
            renew_at: issued.renew_at.clone(),
            ari_id: issued.ari_id.clone(),
        };
        let meta_json =
            serde_json::to_string_pretty(&meta).map_err(|e| StoreError::Other(e.to_string()))?;
        // The key first: a crash between the files leaves a new key with
        // the old chain, which the gateway refuses (key mismatch) and the
        // domain is ordered again, never a served mismatch.
        write_atomic(&dir.join("tls.key"), issued.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join("tls.crt"), issued.chain_pem.as_bytes(), 0o644)?;
        write_atomic(&dir.join("meta.json"), meta_json.as_bytes(), 0o644)?;
        let secret = self.secret(
            &issued.domain,
            issued.chain_pem.clone(),
            issued.key_pem.clone(),
            &meta,
        );
        let mut secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        secrets.insert(issued.domain.clone(), Arc::new(secret));
        Ok(())
    }
}

#[async_trait]
impl Store for DirStore {
    async fn account(&self, key: &str) -> Result<Option<String>, StoreError> {
        let path = self.root.join("accounts").join(format!("{key}.json"));
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    async fn save_account(&self, key: &str, credentials: &str) -> Result<(), StoreError> {
        let path = self.root.join("accounts").join(format!("{key}.json"));
        write_atomic(&path, credentials.as_bytes(), 0o600)
    }

    async fn save(&self, issued: &Issued) -> Result<(), StoreError> {
        self.save_sync(issued)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to a temporary file created with `mode`, syncs it and
/// renames it over `path`: readers see the old file or the new one.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_certificates_come_back_as_secrets_with_private_keys() {
        let dir = std::env::temp_dir().join(format!("vestibule-acme-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = DirStore::open(&dir, "vestibule-system").unwrap();
        let issued = Issued {
            domain: Hostname::parse("shop.example.com").unwrap(),
            tenant: TenantId::new("shop"),
            chain_pem: "CHAIN".into(),
            key_pem: "KEY".into(),
            order_url: "https://ca/order/1".into(),
            not_after: "2030-01-01T00:00:00Z".into(),
            renew_at: "2029-09-01T00:00:00Z".into(),
            ari_id: None,
        };
        futures_lite_block_on(store.save(&issued)).unwrap();
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let cert_dir = dir.join("acme/certs/shop.example.com");
        assert_eq!(mode(cert_dir.join("tls.key")), 0o600);
        assert_eq!(mode(dir.join("acme")), 0o700);
        assert!(!format!("{issued:?}").contains("KEY"));

        // A new process reads them back.
        let again = DirStore::open(&dir, "vestibule-system").unwrap();
        let secrets = again.secrets();
        assert_eq!(secrets.len(), 1);
        let s = &secrets[0];
        assert_eq!(s.metadata.name.as_deref(), Some("acme.shop.example.com"));
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[acme::RENEW_AT],
            "2029-09-01T00:00:00Z"
        );
        assert_eq!(s.data.as_ref().unwrap()["tls.key"].0, b"KEY");
        fs::remove_dir_all(&dir).ok();
    }

    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }
}
