//! Per-tenant rate limits. [`local`]: a bucket per tenant on this replica,
//! holding the tenant's per-replica share. [`global`], with
//! `--rate-limit-store`: the tenant's whole limit, one bucket in Redis for
//! the fleet, spent here from local leases, with the local bucket as the
//! fallback while the store is down. A request is checked by
//! [`TenantLimit::check`]: one or two atomics, never I/O.

mod global;
mod local;
pub mod per_client;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

pub use global::{check_store, GlobalLimiter, StoreError, StoreSettings, Take};
pub use local::TenantLimiter;

/// A tenant's limits on this replica.
pub struct TenantLimit {
    /// The per-replica share (and the fallback of `global`).
    pub local: Arc<TenantLimiter>,
    /// The cluster-wide budget, with a store.
    pub global: Option<Arc<global::Budget>>,
}

/// A refused request: when to retry, and the policy to state.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub wait: Duration,
    /// Requests per second of the limit that applied.
    pub quota: u32,
}

impl TenantLimit {
    #[inline]
    pub fn check(&self) -> Result<(), Refusal> {
        if let Some(budget) = &self.global {
            match budget.take() {
                Take::Granted => return Ok(()),
                Take::Refused(wait) => {
                    return Err(Refusal {
                        wait,
                        quota: budget.limit.requests_per_second,
                    })
                }
                Take::StoreDown => {}
            }
        }
        self.local.check().map_err(|wait| Refusal {
            wait,
            quota: self.local.limit.requests_per_second,
        })
    }
}

impl Refusal {
    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` of the 429
    /// (draft-ietf-httpapi-ratelimit-headers: a one-second window).
    pub fn headers(&self) -> [(http::HeaderName, HeaderValue); 3] {
        let secs = retry_after_secs(self.wait);
        let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
        [
            (http::header::RETRY_AFTER, HeaderValue::from(secs)),
            (
                http::HeaderName::from_static("ratelimit-policy"),
                value(format!("\"tenant\";q={};w=1", self.quota)),
            ),
            (
                http::HeaderName::from_static("ratelimit"),
                value(format!("\"tenant\";r=0;t={secs}")),
            ),
        ]
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    s.clamp(1, 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_the_429_states_its_policy() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        let r = Refusal {
            wait: Duration::from_millis(10),
            quota: 100,
        };
        let h = r.headers();
        assert_eq!(h[0].1, "1");
        assert_eq!(h[1].1, "\"tenant\";q=100;w=1");
        assert_eq!(h[2].1, "\"tenant\";r=0;t=1");
    }
}
