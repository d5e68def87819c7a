//! The operator's error type: failures of the system (I/O, the API server,
//! bad startup files). User mistakes in Kubernetes objects are statuses, not errors.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
    #[error("a background task panicked")]
    TaskPanicked,
}

impl Error {
    /// Exit code per DESIGN.md: 2 for bad input files, 1 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::File { .. } | Error::Tls(_) => 2,
            _ => 1,
        }
    }
}
