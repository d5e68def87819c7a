//! Vestibule's data plane: a Pingora proxy serving a `GatewayConfig`.
//!
//! Data flows one way: a [`source`] produces configs, the [`control`]ler
//! compiles each into a [`runtime::Runtime`] (route table, pools, certs) and
//! swaps it in; the [`proxy`] reads the live runtime once per request.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod access_log;
pub mod admin;
pub mod apply;
pub mod auth;
pub mod cli;
pub mod conn;
pub mod control;
pub mod cors;
pub mod edge;
pub mod error;
pub mod filters;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod purge;
pub mod ratelimit;
pub mod route;
pub mod runtime;
pub mod serve;
pub mod source;
pub mod sticky;
pub mod tls;
pub mod upstream;
