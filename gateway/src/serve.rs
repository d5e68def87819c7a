//! Server bootstrap: builds the config source, loads the first config,
//! checks the listeners, and runs Pingora's server (HTTP, HTTPS, admin and
//! the controller) until SIGTERM. Shared by the binary and the demo example.

use std::net::{SocketAddr, TcpListener};

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use std::sync::Arc;

use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};

use crate::access_log::AccessLog;
use crate::admin::{Access, Admin};
use crate::cli::{Cli, HeaderCase, LogFormat};
use crate::conn::proxy_protocol::ProxyProtocol;
use crate::conn::{CapFilter, ClientLimits, ConnGuard, Edge};
use crate::control::Controller;
use crate::error::{Error, SourceError};
use crate::proxy::{Gateway, ProxySettings};
use crate::runtime::{Runtime, Shared};

use crate::source::{Acme, ConfigSource, FileSource, ManifestsSource, OperatorSource};
use crate::tls;
use vestibule_acme::DirStore;

use crate::ratelimit::{GlobalLimiter, StoreSettings};

/// Structured logs on stderr (`RUST_LOG` filters; default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Client connections' socket buffers. Pingora's default read buffer is
/// 64 KiB, allocated at accept: 2,000 idle or slow connections would pin
/// 128 MiB. None at all: request heads are parsed from Pingora's own
/// (4 KiB, growing) buffer, which exists only while a request is read, and
/// body reads go straight to the caller's buffer, so an idle connection
/// holds no read buffer and no extra syscall is made.
fn downstream_buffers() -> L4BufferSettings {
    L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)
}

/// Handshake names waiting to be reported to the operator's issuer.
const DEMAND_QUEUE: usize = 256;

/// Connections the admin listener holds in all, and per client IP.
const ADMIN_CONNECTIONS: u32 = 64;
const ADMIN_CONNECTIONS_PER_IP: u32 = 16;

/// Fails early, with the address in the error, when a listener can't bind
/// (Pingora would panic later inside its runtime).
fn check_bind(flag: &'static str, addr: SocketAddr) -> Result<(), Error> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| Error::Listen { flag, addr, source })
}

/// The config source the flags name (clap requires exactly one).
fn source(cli: &Cli, shared: &Shared) -> Result<Box<dyn ConfigSource>, Error> {
    Ok(match (&cli.manifests, &cli.config, &cli.operator) {
        (Some(dir), _, _) => {
            let options = vestibule_config::Options {
                require_tenant: cli.require_tenant,
                ..Default::default()
            };
            let source = ManifestsSource::new(dir, cli.max_manifest_bytes, options.clone());
            match &cli.state_dir {
                Some(state) => {
                    Box::new(source.with_acme(acme_issuer(cli, shared, state, &options)?))
                }
                None => Box::new(source),
            }
        }
        (None, Some(file), _) => Box::new(FileSource::new(file)),
        (_, _, url) => {
            // clap requires --token-file with --operator.
            let token = cli.token_file.clone().unwrap_or_default();
            let (demand, demands) = tokio::sync::mpsc::channel(DEMAND_QUEUE);
            let _ = shared.acme_demand.set(demand);
            Box::new(
                OperatorSource::new(
                    url.as_deref().unwrap_or_default(),
                    &token,
                    cli.ca_file.as_deref(),
                    cli.state_dir.as_deref(),
                )
                .map_err(SourceError::from)?
                .with_demand(demands),
            )
        }
    })
}

/// The ACME issuer of `--manifests` mode: certificates kept under
/// `<state>/acme`, metrics in the gateway's registry, challenges answered
/// by this process's listeners.
fn acme_issuer(
    cli: &Cli,
    shared: &Shared,
    state: &std::path::Path,
    options: &vestibule_config::Options,
) -> Result<Acme, Error> {
    let store = Arc::new(DirStore::open(state, &options.acme_namespace)?);
    let metrics =
        vestibule_acme::Metrics::new(shared.metrics.registry()).map_err(Error::Metrics)?;
    let (nudge, nudges) = tokio::sync::mpsc::unbounded_channel();
    let (handle, run) = vestibule_acme::issuer(vestibule_acme::Settings {
        store: store.clone(),
        metrics,
        limits: cli.acme_limits(),
        timeouts: vestibule_acme::Timeouts::default(),
        on_change: Arc::new(move || {
            let _ = nudge.send(());
        }),
        sees_handshakes: true,
    });
    let _ = shared.acme.set(handle.clone());
    Ok(Acme {
        store,
        handle,
        run: std::sync::Mutex::new(Some(Box::pin(run))),
        nudges: std::sync::Mutex::new(Some(nudges)),
    })
}

/// Runs the gateway; returns only on a startup error (Pingora's server owns
/// the process and exits it on shutdown); [`Error::exit_code`] says how
/// the process ends.
pub fn run(cli: Cli) -> Result<(), Error> {
    let shared = Shared::new(cli.upstream_settings(), String::new()).map_err(Error::Metrics)?;
    let store = match cli.rate_limit_store_settings() {
        Some(settings) => {
            let limiter = GlobalLimiter::new(&settings.prefix, shared.metrics.registry())
                .map_err(Error::Metrics)?;
            // Checked here (URL, files), connected lazily in the service.
            crate::ratelimit::check_store(&settings)?;
            let _ = shared.global_limits.set(limiter.clone());
            Some(LimitStore { limiter, settings })
        }
        None => None,
    };
    let source = source(&cli, &shared)?;
    shared
        .status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .source = source.describe();
    if let (Some(cert), Some(key)) = (&cli.default_cert, &cli.default_key) {
        // clap requires both together.
        let now = crate::runtime::unix_now() as i64;
        tls::load_default_cert(&shared.cert_cache, cert, key, now).map_err(Error::DefaultCert)?;
    }
    match source.initial()? {
        Some(config) => {
            let runtime =
                Runtime::compile(&config, &Runtime::empty(), &shared).map_err(|source_error| {
                    Error::Compile {
                        from: source.describe(),
                        source: source_error,
                    }
                })?;
            tracing::info!(
                version = %runtime.version,
                hosts = runtime.summary.hosts,
                routes = runtime.summary.routes,
                pools = runtime.summary.pools,
                "initial config loaded"
            );
            shared.swap(runtime);
        }
        None => tracing::info!("no config yet; starting unready"),
    }
    check_bind("--http", cli.http)?;
    check_bind("--https", cli.https)?;
    check_bind("--admin", cli.admin)?;

    let conf = ServerConf {
        threads: cli.threads.max(1),
        // Pingora's grace period is the drain window after SIGTERM: the
        // listeners are closed, in-flight requests run until it ends.
        grace_period_seconds: Some(cli.drain_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        // One worker: a plain current-thread runtime, ~25% less CPU per
        // request than tokio's work-stealing scheduler. With more workers,
        // Pingora's per-thread runtimes park each idle upstream connection
        // on a random thread, where it races the next request that reuses
        // it (the reuse fails, is logged as an error and costs a connect),
        // so they keep work stealing.
        work_stealing: cli.threads > 1,
        ..ServerConf::default()
    };
    pingora_core::services::listening::set_handshake_timeout(
        cli.handshake_timeout
            .max(std::time::Duration::from_millis(10)),
    );
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // Both listeners run the proxy behind the connection guard (head and
    // idle deadlines, per-IP cap; see `conn`), which shares one per-IP table.
    let limits = cli.client_limits();
    let guard = ConnGuard::new(limits.clone(), shared.metrics.guard.clone());
    let edge_service = |name: &str, settings: ProxySettings| {
        let mut app = pingora_proxy::http_proxy(
            &server.configuration,
            Gateway::new(shared.clone(), settings),
        );
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(limits.keepalive_timeout);
        options.h1_discard_header_case = cli.header_case == HeaderCase::Canonical;
        app.server_options = Some(options);
        Service::new(name.to_string(), Edge::new(app, guard.clone()))
    };
    // One access log for both listeners; `RUST_LOG` filtering
    // `vestibule::access` out turns it off as before.
    let access_log = (!cli.no_access_log
        && tracing::enabled!(target: "vestibule::access", tracing::Level::INFO))
    .then(|| AccessLog::start(cli.log_format, Box::new(std::io::stderr())))
    .transpose()
    .map_err(Error::AccessLog)?;
    let settings = ProxySettings {
        access_log,
        ..cli.proxy_settings()
    };
    let mut proxy = edge_service("vestibule http", settings.clone());
    let proxy_protocol = |then| ProxyProtocol {
        timeout: limits.header_timeout,
        then,
    };
    if cli.proxy_protocol {
        proxy
            .endpoints()
            .set_pre_tls_callback(Arc::new(proxy_protocol(None)));
    }
    proxy.add_listener(ListenerConfig::tcp(cli.http.to_string()).l4_buffer(downstream_buffers()));
    // The HTTPS listener: the same proxy with `tls: true` behind rustls,
    // whose certificates come from the live runtime at each handshake.
    let tls_settings = tls::listener_settings(shared.clone()).map_err(Error::TlsListener)?;
    let mut https = edge_service(
        "vestibule https",
        ProxySettings {
            tls: true,
            ..settings
        },
    );
    let hello_gate = tls::hello_gate(shared.clone(), guard.clone(), limits.header_timeout);
    if cli.proxy_protocol {
        // The client is known once the PROXY header is read: the per-IP cap
        // is taken then (by the hello gate), not at accept, where every
        // connection comes from the balancer.
        https
            .endpoints()
            .set_pre_tls_callback(Arc::new(proxy_protocol(Some(hello_gate))));
    } else {
        https.endpoints().set_pre_tls_callback(hello_gate);
        // Over-cap clients are refused before the handshake costs anything.
        https.set_connection_filter(Arc::new(CapFilter(guard.clone())));
    }
    https.add_listener(
        ListenerConfig::tcp(cli.https.to_string())
            .tls(tls_settings)
            .l4_buffer(downstream_buffers()),
    );

    // The admin listener: the proxy's deadlines, and small caps (probes and
    // scrapes need a handful of connections).
    let access = match &cli.admin_token_file {
        Some(file) => Access::Token(file.clone()),
        None => Access::Open,
    };
    let admin_limits = ClientLimits {
        max_connections_per_ip: ADMIN_CONNECTIONS_PER_IP,
        max_connections: ADMIN_CONNECTIONS,
        ..limits.clone()
    };
    let admin_guard = ConnGuard::new(admin_limits, shared.metrics.guard.clone());
    let mut admin = Service::new(
        "vestibule admin".to_string(),
        Edge::new(Admin::new(shared.clone(), access), admin_guard),
    );
    admin.add_tcp(&cli.admin.to_string());
    admin.threads = Some(1);

    let controller = background_service("controller", Controller::new(shared.clone(), source));

    server.add_service(proxy);
    server.add_service(https);
    server.add_service(admin);
    server.add_service(controller);
    if let Some(store) = store {
        server.add_service(background_service("rate limit store", store));
    }
    tracing::info!(http = %cli.http, https = %cli.https, admin = %cli.admin, threads = cli.threads, "vestibule-gateway serving");
    server.run(RunArgs::default());
    Ok(())
}

/// Renews the cluster-wide rate limit leases until shutdown.
struct LimitStore {
    limiter: Arc<GlobalLimiter>,
    settings: StoreSettings,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for LimitStore {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        tokio::select! {
            result = self.limiter.clone().run(self.settings.clone()) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "rate limit store: per-replica limits only");
                }
            }
            _ = shutdown.changed() => {}
        }
    }
}
