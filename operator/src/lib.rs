//! The operator as a library: `run` wires the watches, the debounced
//! translator, the config server, leader election and status write-back
//! together; `main.rs` is only the CLI around it, and tests drive it in
//! process against a fake API server.
#![forbid(unsafe_code)]

pub mod acme;
pub mod error;
pub mod gateway_api;
pub mod leader;
pub mod metrics;
pub mod publish;
pub mod server;
pub mod status;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinSet;
use vestibule_config::translate::Options;

pub use error::Error;

/// Everything `run` needs, with production defaults in [`Settings::new`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// Translator options (controller name, `--require-tenant`).
    pub translate: Options,
    /// Gateway replicas the config is served to: each tenant's rate limit
    /// is divided by this ([`publish::per_replica`]).
    pub gateway_replicas: u32,
    /// Watch the Gateway API (GatewayClass, Gateway, HTTPRoute,
    /// ReferenceGrant) and write their statuses. Off by default: the
    /// watches need the Gateway API CRDs in the cluster.
    pub gateway_api: bool,
    /// Namespaces to watch; empty means all.
    pub watch_namespaces: Vec<String>,
    /// Config server address.
    pub listen: SocketAddr,
    /// Bearer token file for the config server.
    pub token_file: PathBuf,
    /// Serve HTTPS with this certificate chain and key (PEM); plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// `namespace/name` of the gateway's LoadBalancer Service.
    pub publish_service: Option<ObjectName>,
    /// Metrics and health listener.
    pub metrics: SocketAddr,
    pub lease: leader::LeaseSettings,
    pub debounce: publish::Debounce,
    pub server: server::Limits,
    /// How often the token file is checked for a new token.
    pub token_reload: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Limits on the ACME orders the leader places.
    pub acme_limits: vestibule_acme::Limits,
    /// How long a pending HTTP-01 challenge is given to reach every gateway
    /// replica (config published, long polls answered) before the CA is
    /// told to validate.
    pub acme_propagation: Duration,
}

impl Settings {
    pub fn new(token_file: PathBuf, identity: String) -> Self {
        Settings {
            translate: Options::default(),
            gateway_replicas: 1,
            gateway_api: false,
            watch_namespaces: Vec::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            token_file,
            tls: None,
            publish_service: None,
            metrics: SocketAddr::from(([0, 0, 0, 0], 9090)),
            lease: leader::LeaseSettings::new("default".into(), identity),
            debounce: publish::Debounce::default(),
            server: server::Limits::default(),
            token_reload: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            acme_limits: vestibule_acme::Limits::default(),
            acme_propagation: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A namespaced object's `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for ObjectName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ObjectName {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("{s:?} is not namespace/name")),
        }
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A started operator. Dropping it does not stop it: call
/// [`Running::shutdown`] (graceful) or [`Running::abort`] (a crash).
pub struct Running {
    pub config_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Whether this replica currently holds the Lease.
    pub leader: tokio_watch::Receiver<bool>,
    /// The currently served config, once the first translation is done.
    pub published: tokio_watch::Receiver<Option<Arc<publish::Published>>>,
    pub metrics: Arc<metrics::Metrics>,
    shutdown: tokio_watch::Sender<bool>,
    tasks: JoinSet<Result<(), Error>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, releases the Lease
    /// if held, and waits for every task.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "task failed during shutdown");
                    result = Err(e);
                }
                Err(e) if e.is_panic() => {
                    tracing::error!(error = %e, "task panicked");
                    result = Err(Error::TaskPanicked);
                }
                _ => {}
            }
        }
        result
    }

    /// Stops every task at once, without releasing the Lease: what a
    /// crashed or partitioned replica looks like to the others.
    pub async fn abort(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until any task ends (an error, since tasks run until shutdown).
    pub async fn failed(&mut self) -> Result<(), Error> {
        match self.tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::TaskPanicked),
            None => Ok(()),
        }
    }
}

/// Starts the operator: binds both listeners, then runs until shutdown.
pub async fn start(client: Client, settings: Settings) -> Result<Running, Error> {
    let token = server::Token::load(&settings.token_file)?;
    let tls = match &settings.tls {
        Some(files) => Some(server::load_tls(files)?),
        None => None,
    };
    let config_listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: settings.listen,
                source,
            })?;
    let metrics_listener = TcpListener::bind(settings.metrics)
        .await
        .map_err(|source| Error::Bind {
            addr: settings.metrics,
            source,
        })?;
    let config_addr = config_listener.local_addr().map_err(Error::Io)?;
    let metrics_addr = metrics_listener.local_addr().map_err(Error::Io)?;

    let metrics = Arc::new(metrics::Metrics::new()?);
    let (shutdown_tx, shutdown_rx) = tokio_watch::channel(false);
    let (leader_tx, leader_rx) = tokio_watch::channel(false);
    let (published_tx, published_rx) = tokio_watch::channel(None);
    let (status_tx, status_rx) = tokio_watch::channel(None);

    let mut tasks = JoinSet::new();
    let stores = watch::Stores::start(&client, &settings, &mut tasks, shutdown_rx.clone());

    let (demand_tx, demand_rx) = tokio::sync::mpsc::channel(256);
    let (acme, acme_run) = acme::issuer(
        client.clone(),
        settings.translate.acme_namespace.clone(),
        metrics.registry(),
        settings.acme_limits,
        settings.acme_propagation,
        stores.dirty.clone(),
    )?;
    {
        let mut shutdown = shutdown_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = acme_run => {}
                _ = stopped(&mut shutdown) => {}
            }
            Ok(())
        });
    }
    // A new leader orders what the old one left; a replica that stops
    // leading stops ordering: both through a translation.
    {
        let (mut leader, dirty, mut shutdown) =
            (leader_rx.clone(), stores.dirty.clone(), shutdown_rx.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    changed = leader.changed() => if changed.is_err() { return Ok(()) },
                    _ = stopped(&mut shutdown) => return Ok(()),
                }
                dirty.notify_one();
            }
        });
    }

    tasks.spawn(acme::relay_demand(
        client.clone(),
        settings.translate.acme_namespace.clone(),
        acme.clone(),
        leader_rx.clone(),
        demand_rx,
        shutdown_rx.clone(),
    ));
    let whole = Arc::new(publish::WholeClients::default());
    tasks.spawn(publish::run(
        stores.clone(),
        settings.clone(),
        metrics.clone(),
        publish::Acme {
            handle: acme,
            leader: leader_rx.clone(),
        },
        publish::Outputs {
            published: published_tx,
            statuses: status_tx,
            whole: whole.clone(),
        },
        shutdown_rx.clone(),
    ));
    tasks.spawn(server::serve_config(
        config_listener,
        tls,
        server::ConfigState {
            published: published_rx.clone(),
            token: token.clone(),
            metrics: metrics.clone(),
            limits: settings.server.clone(),
            waiting: Arc::new(tokio::sync::Semaphore::new(settings.server.max_waiting)),
            shutdown: shutdown_rx.clone(),
            demand: demand_tx,
            whole,
            dirty: stores.dirty.clone(),
        },
        settings.shutdown_grace,
    ));
    tasks.spawn(server::reload_token(
        token,
        settings.token_file.clone(),
        settings.token_reload,
        shutdown_rx.clone(),
    ));
    tasks.spawn(metrics::serve(
        metrics_listener,
        metrics.clone(),
        published_rx.clone(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(leader::run(
        client.clone(),
        settings.lease.clone(),
        leader_tx,
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(status::run(
        client,
        stores,
        settings.lease.identity.clone(),
        leader_rx.clone(),
        status_rx,
        metrics.clone(),
        shutdown_rx,
    ));
    tracing::info!(%config_addr, %metrics_addr, tls = settings.tls.is_some(), "operator started");
    Ok(Running {
        config_addr,
        metrics_addr,
        leader: leader_rx,
        published: published_rx,
        metrics,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// Resolves once shutdown is requested (or its sender is gone). Returns
/// `()` so no lock guard is held across the awaits that follow.
pub(crate) async fn stopped(shutdown: &mut tokio_watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
