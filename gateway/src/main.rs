//! `vestibule-gateway`: the CLI. Exit codes: 0 ok, 1 runtime failure, 2
//! usage or invalid config.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

use std::process::ExitCode;

use clap::Parser;
use vestibule_gateway::cli::Cli;
use vestibule_gateway::serve;

// Per-request cost is dominated by small short-lived allocations in Pingora's
// HTTP path; mimalloc serves them markedly cheaper than glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    serve::init_logging(cli.log_format);
    match serve::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vestibule-gateway: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
