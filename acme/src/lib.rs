//! Vestibule's ACME issuer: certificates for tenant domains from an ACME CA
//! (RFC 8555), on demand and at onboarding, renewed at two thirds of their
//! lifetime, within limits a client cannot push past.
//!
//! - [`manager`]: the loop that decides which orders run ([`issuer`] builds it);
//! - [`order`]: one order with `instant-acme`, HTTP-01 or TLS-ALPN-01;
//! - [`board`]: the pending challenge answers the listeners serve;
//! - [`store`]: the narrow interface to storage, and the `--state-dir` store;
//! - [`account`]: one account per directory, created once and kept;
//! - [`schedule`]: renewal times, backoff and rates, without I/O;
//! - [`renewal_info`]: ACME Renewal Information (RFC 9773);
//! - [`metrics`].
#![forbid(unsafe_code)]

pub mod account;
pub mod board;
pub mod manager;
pub mod metrics;
pub mod order;
pub mod renewal_info;
pub mod schedule;
pub mod store;

pub use board::Board;
pub use manager::{issuer, Handle, Settings};
pub use metrics::Metrics;
pub use order::Timeouts;
pub use schedule::Limits;
pub use store::{DirStore, Issued, Store, StoreError};
