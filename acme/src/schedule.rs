//! The issuer's decisions, without I/O: when a certificate is due for
//! renewal, how long to back off after a failure, and the per-tenant
//! order rate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::jiff::Timestamp;

/// Limits on what demand can make the issuer do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Orders under way at once, in all.
    pub concurrent: usize,
    /// Orders under way at once for one tenant.
    pub concurrent_per_tenant: usize,
    /// Orders a tenant may start per hour (a bucket of this size, refilled
    /// evenly over the hour).
    pub tenant_orders_per_hour: u32,
    /// Backoff after a domain's first failure; doubled per failure.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrent: 4,
            concurrent_per_tenant: 2,
            tenant_orders_per_hour: 30,
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
        }
    }
}

/// The wait before the next attempt after `failures` failures in a row.
pub fn backoff(failures: u32, limits: &Limits) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    limits
        .retry_min
        .saturating_mul(1u32 << doublings)
        .min(limits.retry_max)
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// at two thirds of its lifetime (Let's Encrypt's advice: 60 days into 90).
/// Whole seconds, as annotations carry it (so the time a loop stored and the
/// time the plan brings back compare equal).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let at = not_before + lifetime * 2 / 3;
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// RFC 3339, as annotations carry times.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    Timestamp::from_second(secs)
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}

pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let ts: Timestamp = s.parse().ok()?;
    let secs = u64::try_from(ts.as_second()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// A token bucket of `capacity` orders refilled over an hour.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f64,
    last: SystemTime,
}

impl Bucket {
    pub fn full(limits: &Limits, now: SystemTime) -> Self {
        Bucket {
            tokens: f64::from(limits.tenant_orders_per_hour),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, limits: &Limits, now: SystemTime) -> bool {
        let capacity = f64::from(limits.tenant_orders_per_hour);
        let elapsed = now.duration_since(self.last).unwrap_or_default();
        self.tokens = (self.tokens + elapsed.as_secs_f64() * capacity / 3600.0).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let limits = Limits {
            retry_min: Duration::from_secs(10),
            retry_max: Duration::from_secs(100),
            ..Limits::default()
        };
        let waits: Vec<u64> = (1..=6).map(|n| backoff(n, &limits).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 100, 100]);
        assert_eq!(backoff(u32::MAX, &limits).as_secs(), 100);
    }

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(90 * 86400);
        assert_eq!(
            renew_at(start, end),
            start + Duration::from_secs(60 * 86400)
        );
        let text = rfc3339(start);
        assert_eq!(text, "1970-01-12T13:46:40Z");
        assert_eq!(parse_rfc3339(&text), Some(start));
    }

    #[test]
    fn the_bucket_refills_over_the_hour() {
        let limits = Limits {
            tenant_orders_per_hour: 2,
            ..Limits::default()
        };
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut b = Bucket::full(&limits, t0);
        assert!(b.take(&limits, t0));
        assert!(b.take(&limits, t0));
        assert!(!b.take(&limits, t0));
        assert!(!b.take(&limits, t0 + Duration::from_secs(1000)));
        assert!(b.take(&limits, t0 + Duration::from_secs(1800)));
    }
}
