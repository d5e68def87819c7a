//! `vestibule-operator`: the Kubernetes controller and config server (`run`),
//! plus two offline tools: `translate` (manifests -> gateway config and
//! statuses) and `crd` (the Tenant CRD YAML).
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use vestibule_config::tenant::Tenant;
use vestibule_config::translate::{Options, CONTROLLER_NAME};
use vestibule_operator::leader::LeaseSettings;
use vestibule_operator::{ObjectName, Settings, TlsFiles};

#[derive(Parser)]
#[command(name = "vestibule-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the in-cluster controller and config server.
    ///
    /// Watches the cluster (in-cluster config, or KUBECONFIG), serves the
    /// translated config to gateways at GET /v1/config?after=VERSION, and,
    /// on the replica holding the Lease, writes statuses and Events back.
    Run(Box<RunArgs>),
    /// Print the GatewayConfig and statuses that the given manifests produce.
    Translate {
        /// Manifest files or directories (multi-document YAML).
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = Format::Yaml)]
        output: Format,
        /// Serve only hosts owned by a Tenant (strict SaaS mode).
        #[arg(long)]
        require_tenant: bool,
        /// IngressClasses with this spec.controller are ours.
        #[arg(long, default_value = CONTROLLER_NAME)]
        controller: String,
        /// Which IngressClasses to serve, as `run --ingress-class`: a
        /// controller name (contains a '/'), or the name of one IngressClass
        /// whose spec.controller is --controller.
        #[arg(long, value_name = "NAME|CONTROLLER")]
        ingress_class: Option<String>,
        /// Print private keys instead of `<redacted>` (needed to feed the
        /// output to `vestibule-gateway --config`).
        #[arg(long)]
        include_keys: bool,
        /// Print only the GatewayConfig, without statuses.
        #[arg(long)]
        config_only: bool,
        /// Divide each Tenant's rateLimit by this many gateway replicas (as
        /// `run --gateway-replicas` does).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        gateway_replicas: u32,
    },
    /// Report, for each Ingress of the given manifests, how its ingress-nginx
    /// annotations are treated: supported, approximated, unsupported or
    /// refused. Exit 0 when every one is supported, 3 otherwise.
    Migrate {
        /// Manifest files or directories (multi-document YAML).
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = MigrateFormat::Table)]
        output: MigrateFormat,
    },
    /// Print a CustomResourceDefinition as YAML: the Tenant's (default) or
    /// the AcmeIssuer's.
    Crd {
        #[arg(value_enum, default_value = "tenant")]
        kind: CrdKind,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CrdKind {
    Tenant,
    Acmeissuer,
}

#[derive(Args)]
struct RunArgs {
    /// Which IngressClasses to serve: a controller name (contains a '/';
    /// every IngressClass with that spec.controller), or the name of one
    /// IngressClass whose spec.controller is vestibule.dev/ingress-controller.
    #[arg(long, default_value = CONTROLLER_NAME)]
    ingress_class: String,
    /// Watch only this namespace (repeatable). Default: all namespaces.
    #[arg(long = "watch-namespace", value_name = "NAMESPACE")]
    watch_namespaces: Vec<String>,
    /// Serve only hosts owned by a Tenant (strict SaaS mode).
    #[arg(long)]
    require_tenant: bool,
    /// Config server address. It speaks HTTPS with --tls-cert and
    /// --tls-key; plain HTTP only with --insecure-listen.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Serve configs over plain HTTP: gateways' bearer tokens and every
    /// tenant's certificate keys cross the network in clear. For a local
    /// test only; refused without this flag when --tls-cert is not given.
    #[arg(long, conflicts_with = "tls_cert")]
    insecure_listen: bool,
    /// File holding the bearer token gateways must send (re-read when it changes).
    #[arg(long, env = "VESTIBULE_TOKEN_FILE")]
    token_file: PathBuf,
    /// PEM certificate chain for the config server (enables HTTPS).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the config server (enables HTTPS).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// namespace/name of the gateway's LoadBalancer Service; its addresses
    /// are copied to the status of every accepted Ingress.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    publish_service: Option<ObjectName>,
    /// Gateway replicas this operator serves: each Tenant's rateLimit is
    /// divided by it, so the limit holds across the whole fleet.
    #[arg(long, value_name = "N", default_value_t = 1, env = "VESTIBULE_GATEWAY_REPLICAS",
          value_parser = clap::value_parser!(u32).range(1..))]
    gateway_replicas: u32,
    /// Serve the Gateway API: watch GatewayClasses, Gateways, HTTPRoutes and
    /// ReferenceGrants (their CRDs must be installed) and write their statuses.
    #[arg(long, env = "VESTIBULE_GATEWAY_API")]
    gateway_api: bool,
    /// Metrics and health address (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "vestibule-operator")]
    lease_name: String,
    /// This replica's identity in the Lease. Default: $HOSTNAME (the pod name).
    #[arg(long, env = "HOSTNAME")]
    identity: Option<String>,
    /// Lease duration in seconds; the leader renews every third of it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_duration: u64,
    /// Longest a config request waits for a new version before 304, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300))]
    long_poll_timeout: u64,
    /// Most config requests waiting at once; more get 503.
    #[arg(long, default_value_t = 1024)]
    max_waiting: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Crd { kind } => match serde_saphyr::to_string(&match kind {
            CrdKind::Tenant => Tenant::crd(),
            CrdKind::Acmeissuer => vestibule_config::issuer::AcmeIssuer::crd(),
        }) {
            Ok(yaml) => print_out(&yaml),
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::from(1)
            }
        },
        Command::Migrate { paths, output } => migrate(&paths, output),
        Command::Translate {
            paths,
            output,
            require_tenant,
            controller,
            ingress_class,
            include_keys,
            config_only,
            gateway_replicas,
        } => {
            let (controller, ingress_class) = match ingress_class {
                Some(c) => class_options(c),
                None => (controller, None),
            };
            translate(
                &paths,
                Output {
                    format: output,
                    include_keys,
                    config_only,
                },
                &Options {
                    controller,
                    ingress_class,
                    require_tenant,
                    ..Options::default()
                },
                gateway_replicas,
            )
        }
    }
}

/// `--ingress-class`: a controller name (contains a '/'), or the name of
/// one IngressClass of our controller. The same for `run` and `translate`.
fn class_options(class: String) -> (String, Option<String>) {
    if class.contains('/') {
        (class, None)
    } else {
        (CONTROLLER_NAME.to_string(), Some(class))
    }
}

fn run(args: RunArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let insecure = args.insecure_listen;
    let settings = settings(args);
    // Check the token before touching the cluster: a bad mount is a usage error.
    if let Err(e) = vestibule_operator::server::Token::load(&settings.token_file) {
        eprintln!("error: {e}");
        return ExitCode::from(e.exit_code());
    }
    match (&settings.tls, insecure) {
        (Some(_), _) => {}
        (None, true) => tracing::warn!(
            listen = %settings.listen,
            "INSECURE: the config server speaks plain HTTP (--insecure-listen): bearer tokens and \
             tenants' private keys cross the network in clear; give it --tls-cert and --tls-key"
        ),
        (None, false) => {
            eprintln!(
                "error: --tls-cert/--tls-key are required: without them bearer tokens and private \
                 keys would be served in clear (--insecure-listen allows it, for a local test)"
            );
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot reach the Kubernetes API (in-cluster or KUBECONFIG): {e}");
                return ExitCode::from(1);
            }
        };
        let mut running = match vestibule_operator::start(client, settings).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(e.exit_code());
            }
        };
        let failed = tokio::select! {
            signal = shutdown_signal() => {
                tracing::info!(signal, "shutting down");
                None
            }
            r = running.failed() => Some(r),
        };
        if let Some(r) = failed {
            eprintln!(
                "error: {}",
                r.err()
                    .map_or("a task ended".to_string(), |e| e.to_string())
            );
            return ExitCode::from(1);
        }
        match running.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn settings(args: RunArgs) -> Settings {
    let identity = args
        .identity
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("vestibule-operator-{}", std::process::id()));
    let mut settings = Settings::new(args.token_file, identity.clone());
    let (controller, ingress_class) = class_options(args.ingress_class);
    settings.translate = Options {
        controller,
        ingress_class,
        require_tenant: args.require_tenant,
        ..Options::default()
    };
    settings.watch_namespaces = args.watch_namespaces;
    settings.listen = args.listen;
    settings.tls = args
        .tls_cert
        .zip(args.tls_key)
        .map(|(cert, key)| TlsFiles { cert, key });
    settings.publish_service = args.publish_service;
    settings.gateway_replicas = args.gateway_replicas;
    settings.gateway_api = args.gateway_api;
    settings.metrics = args.metrics;
    // Issued certificates and the ACME account live beside the operator.
    settings.translate.acme_namespace = args.lease_namespace.clone();
    let mut lease = LeaseSettings::with_duration(
        args.lease_namespace,
        identity,
        Duration::from_secs(args.lease_duration),
    );
    lease.name = args.lease_name;
    settings.lease = lease;
    settings.server.long_poll = Duration::from_secs(args.long_poll_timeout);
    settings.server.max_waiting = args.max_waiting;
    settings
}

/// SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

struct Output {
    format: Format,
    include_keys: bool,
    config_only: bool,
}

/// Prints the translation; exits 2 when some input could not be read, after
/// printing what the readable part produced.
fn translate(paths: &[PathBuf], output: Output, options: &Options, replicas: u32) -> ExitCode {
    for p in paths {
        if !p.exists() {
            eprintln!("error: {}: no such file or directory", p.display());
            return ExitCode::from(2);
        }
    }
    let loaded = vestibule_config::load_paths(paths);
    for skipped in &loaded.skipped {
        eprintln!("warning: skipped {skipped}");
    }
    let mut translation = vestibule_config::translate(&loaded.snapshot, options);
    translation.config = vestibule_operator::publish::per_replica(translation.config, replicas);
    if !output.include_keys {
        // Keys stay off terminals and CI logs unless asked for. The version
        // still names the real content.
        for cert in translation.config.certificates.values_mut() {
            cert.key_pem = "<redacted>".into();
        }
    }
    let text = if output.config_only {
        render(&translation.config, output.format)
    } else {
        render(&translation, output.format)
    };
    let code = match text {
        Ok(text) => print_out(&text),
        Err(e) => {
            eprintln!("error: cannot render the config: {e}");
            return ExitCode::from(1);
        }
    };
    if !loaded.errors.is_empty() {
        for e in &loaded.errors {
            eprintln!("error: {e}");
        }
        return ExitCode::from(2);
    }
    code
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum MigrateFormat {
    Table,
    Json,
}

fn migrate(paths: &[PathBuf], output: MigrateFormat) -> ExitCode {
    for p in paths {
        if !p.exists() {
            eprintln!("error: {}: no such file or directory", p.display());
            return ExitCode::from(2);
        }
    }
    let loaded = vestibule_config::load_paths(paths);
    if !loaded.errors.is_empty() {
        for e in &loaded.errors {
            eprintln!("error: {e}");
        }
        return ExitCode::from(2);
    }
    let report = vestibule_config::migrate::report(&loaded.snapshot);
    let text = match output {
        MigrateFormat::Table if report.is_empty() => {
            "no Ingress carries ingress-nginx annotations".to_string()
        }
        MigrateFormat::Table => vestibule_config::migrate::table(&report),
        MigrateFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let printed = print_out(&text);
    if printed != ExitCode::SUCCESS {
        return printed;
    }
    if vestibule_config::migrate::all_supported(&report) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

fn render<T: serde::Serialize>(value: &T, format: Format) -> Result<String, String> {
    match format {
        Format::Yaml => serde_saphyr::to_string(value).map_err(|e| e.to_string()),
        Format::Json => serde_json::to_string_pretty(value).map_err(|e| e.to_string()),
    }
}

fn print_out(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{}", text.trim_end()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is not a failure of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
