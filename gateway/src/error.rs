//! The gateway's errors, typed: what failed, named by its flag, file or
//! address, and the exit code each means (1 runtime failure, 2 usage or
//! invalid config).

use std::net::SocketAddr;
use std::path::PathBuf;

use http::StatusCode;
use vestibule_config::manifests::ManifestError;
use vestibule_config::model::ConfigError;

/// Why the gateway could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("invalid config from {from}: {source}")]
    Compile {
        from: String,
        source: crate::runtime::CompileError,
    },
    #[error("--default-cert/--default-key: {0}")]
    DefaultCert(#[from] crate::tls::DefaultCertError),
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the HTTPS listener: {0}")]
    TlsListener(pingora_core::BError),
    #[error("cannot register the metrics: {0}")]
    Metrics(prometheus::Error),
    #[error("--state-dir: the ACME store: {0}")]
    AcmeStore(#[from] vestibule_acme::StoreError),
    #[error("--rate-limit-store: {0}")]
    RateLimitStore(#[from] crate::ratelimit::StoreError),
    #[error("cannot start the access log writer: {0}")]
    AccessLog(std::io::Error),
}

impl Error {
    /// The process exit code: 2 for usage or invalid config, 1 for the
    /// system failing.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Source(e) => e.exit_code(),
            Error::Compile { .. } | Error::DefaultCert(_) => 2,
            Error::Listen { .. } | Error::TlsListener(_) | Error::Metrics(_) => 1,
            Error::AccessLog(_) => 1,
            Error::AcmeStore(_) => 1,
            Error::RateLimitStore(_) => 2,
        }
    }
}

/// A config source could not produce a config. At startup this is a usage
/// or config error; later the last good config stays and this is reported.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A blank file is a write caught halfway (or a truncation), not a wish
    /// to serve nothing.
    #[error("{}: empty file (write `{{}}` for an empty config)", path.display())]
    Empty { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Invalid { path: PathBuf, source: ConfigError },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: not a file path; not watching", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: rewritten in place; waiting for writes to stop", path.display())]
    RewrittenInPlace { path: PathBuf },
    /// A file was created but not written yet: nothing to translate.
    #[error("no change yet")]
    NoChangeYet,
    #[error("{}", join(.0))]
    Manifests(Vec<ManifestError>),
    #[error("translator panicked; see the log")]
    TranslatorPanicked,
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

impl SourceError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SourceError::Operator(OperatorError::Runtime(_)) => 1,
            _ => 2,
        }
    }
}

fn join(errors: &[ManifestError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The operator source's flags or one of its polls failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("--operator {url:?}: {source}")]
    Url {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("--operator {url}: no host")]
    NoHost { url: String },
    #[error("--operator {url}: scheme must be http or https")]
    Scheme { url: String },
    #[error("--operator https://... needs --ca-file (the operator's CA)")]
    NoCaFile,
    #[error("--operator host {host:?}: not a valid server name")]
    ServerName { host: String },
    #[error("--token-file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--token-file {}: empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("--ca-file {}: {problem}", path.display())]
    CaFile { path: PathBuf, problem: CaProblem },
    #[error("--state-dir {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    #[error("building the request: {0}")]
    Request(http::Error),
    #[error("connect {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS to {authority}: {source}")]
    Tls {
        authority: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(hyper::Error),
    #[error("operator refused the token (401); check --token-file")]
    Unauthorized,
    #[error("operator answered {0}")]
    Status(StatusCode),
    #[error("long-poll timed out")]
    TimedOut,
    #[error("reading the config body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("config body is not valid gzip/UTF-8: {0}")]
    Gzip(std::io::Error),
    #[error("config body is too large")]
    TooLarge,
    #[error("config body is not UTF-8")]
    NotUtf8,
    #[error("operator sent an empty config body")]
    EmptyBody,
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What is wrong with a CA file.
#[derive(Debug, thiserror::Error)]
pub enum CaProblem {
    #[error("{0}")]
    Pem(rustls_pki_types::pem::Error),
    #[error("{0}")]
    Certificate(rustls::Error),
    #[error("no certificate")]
    Empty,
}
