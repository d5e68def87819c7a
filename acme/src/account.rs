//! ACME accounts: one per directory, created once and kept in the
//! [`Store`] (the credentials hold the account key), reused by every order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{Account, AccountCredentials, BodyWrapper, ExternalAccountKey, NewAccount};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use vestibule_config::acme::IssuerPlan;

use crate::order::{bounded, OrderError};
use crate::store::{account_key, Store};

/// The accounts of this process, by directory.
pub struct Accounts {
    store: Arc<dyn Store>,
    request_timeout: Duration,
    /// Held while an account is looked up or created, so one directory
    /// never gets two accounts.
    by_key: tokio::sync::Mutex<HashMap<String, Account>>,
}

fn unreachable(step: &'static str, detail: impl ToString) -> OrderError {
    OrderError::Unreachable {
        step,
        detail: detail.to_string(),
    }
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, request_timeout: Duration) -> Self {
        Accounts {
            store,
            request_timeout,
            by_key: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The account for `issuer`: cached, else restored from the store,
    /// else registered with the CA and stored.
    pub async fn get(&self, issuer: &IssuerPlan) -> Result<Account, OrderError> {
        let key = account_key(&issuer.directory_url);
        let mut accounts = self.by_key.lock().await;
        if let Some(a) = accounts.get(&key) {
            return Ok(a.clone());
        }
        let timeout = self.request_timeout;
        let stored = self
            .store
            .account(&key)
            .await
            .map_err(|e| unreachable("account store", e))?;
        let account = match stored {
            Some(json) => {
                let credentials: AccountCredentials =
                    serde_json::from_str(&json).map_err(|e| unreachable("stored account", e))?;
                let restore = builder(issuer)?.from_credentials(credentials);
                bounded("account", timeout, restore).await?
            }
            None => {
                let contact = issuer.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = issuer
                    .eab
                    .as_ref()
                    .map(|e| ExternalAccountKey::new(e.key_id.clone(), &e.hmac_key));
                let new_account = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let create = builder(issuer)?.create(
                    &new_account,
                    issuer.directory_url.clone(),
                    eab.as_ref(),
                );
                let (account, credentials) = bounded("new account", timeout, create).await?;
                let json = serde_json::to_string(&credentials)
                    .map_err(|e| unreachable("account credentials", e))?;
                self.store
                    .save_account(&key, &json)
                    .await
                    .map_err(|e| unreachable("account store", e))?;
                tracing::info!(directory = %issuer.directory_url, account = %account.id(), "ACME account registered");
                account
            }
        };
        accounts.insert(key, account.clone());
        Ok(account)
    }
}

/// The account builder: the system roots, or the issuer's CA bundle.
fn builder(issuer: &IssuerPlan) -> Result<instant_acme::AccountBuilder, OrderError> {
    let Some(bundle) = &issuer.ca_bundle else {
        return Account::builder().map_err(|e| unreachable("HTTP client", e));
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        let cert = cert.map_err(|e| unreachable("caBundle", e))?;
        roots.add(cert).map_err(|e| unreachable("caBundle", e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable("TLS settings", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: HyperClient<_, BodyWrapper<bytes::Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(Account::builder_with_http(Box::new(client)))
}
