//! `vestibule-operator`: the Kubernetes controller and config server (`run`),
//! plus two offline tools: `translate` (manifests -> gateway config and
//! statuses) and `crd` (the Tenant CRD YAML).
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use vestibule_config::tenant::Tenant;
use vestibule_config::translate::{Options, CONTROLLER_NAME};

#[derive(Parser)]
#[command(name = "vestibule-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the in-cluster controller and config server (not yet implemented).
    Run,
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
        /// Print private keys instead of `<redacted>` (needed to feed the
        /// output to `vestibule-gateway --config`).
        #[arg(long)]
        include_keys: bool,
        /// Print only the GatewayConfig, without statuses.
        #[arg(long)]
        config_only: bool,
    },
    /// Print the Tenant CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => {
            eprintln!("vestibule-operator run: not yet implemented");
            ExitCode::from(1)
        }
        Command::Crd => match serde_saphyr::to_string(&Tenant::crd()) {
            Ok(yaml) => print_out(&yaml),
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::from(1)
            }
        },
        Command::Translate {
            paths,
            output,
            require_tenant,
            controller,
            include_keys,
            config_only,
        } => translate(
            &paths,
            Output {
                format: output,
                include_keys,
                config_only,
            },
            &Options {
                controller,
                require_tenant,
            },
        ),
    }
}

struct Output {
    format: Format,
    include_keys: bool,
    config_only: bool,
}

/// Prints the translation; exits 2 when some input could not be read, after
/// printing what the readable part produced.
fn translate(paths: &[PathBuf], output: Output, options: &Options) -> ExitCode {
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
