//! The local limiter: a token bucket per tenant and gateway replica,
//! kept as one atomic (GCRA: the bucket is the "theoretical arrival time"
//! of the next request), so checking it is a load and a compare-and-swap on
//! the hot path, with no lock and no allocation.
//!
//! The IR's `tenants[id].rateLimit` is already this replica's share: the
//! operator divides each tenant's limit by `--gateway-replicas` (see
//! `vestibule_operator::publish::per_replica`). A limiter whose limit did not
//! change is reused by the next runtime, so config swaps keep bucket state.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use vestibule_config::model::RateLimit;

pub struct TenantLimiter {
    pub limit: RateLimit,
    /// Nanoseconds per token.
    interval: u64,
    /// How far the arrival time may run ahead of now: the burst.
    tolerance: u64,
    /// Theoretical arrival time, in nanoseconds since `epoch`.
    tat: AtomicU64,
    epoch: Instant,
}

impl TenantLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let interval = match limit.requests_per_second {
            0 => u64::MAX / 4,
            rps => 1_000_000_000 / u64::from(rps),
        }
        .max(1);
        let burst = u64::from(limit.burst.max(1));
        TenantLimiter {
            limit,
            interval,
            tolerance: interval.saturating_mul(burst),
            tat: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is available.
    #[inline]
    pub fn check(&self) -> Result<(), Duration> {
        self.check_at(self.epoch.elapsed().as_nanos() as u64)
    }

    fn check_at(&self, now: u64) -> Result<(), Duration> {
        if self.limit.requests_per_second == 0 {
            // A tenant switched off.
            return Err(Duration::from_secs(60));
        }
        let mut tat = self.tat.load(Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            let allowed_until = now.saturating_add(self.tolerance);
            if next > allowed_until {
                return Err(Duration::from_nanos(next - allowed_until));
            }
            match self.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limiter(rps: u32, burst: u32) -> TenantLimiter {
        TenantLimiter::new(RateLimit {
            requests_per_second: rps,
            burst,
        })
    }

    #[test]
    fn burst_then_rate() {
        let l = limiter(10, 5);
        let t0 = 10 * SEC;
        for _ in 0..5 {
            assert!(l.check_at(t0).is_ok());
        }
        let wait = l.check_at(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // 100 ms later one more token.
        assert!(l.check_at(t0 + SEC / 10).is_ok());
        assert!(l.check_at(t0 + SEC / 10).is_err());
        // Over a long quiet period the bucket refills only to the burst.
        let t1 = t0 + 100 * SEC;
        let ok = (0..20).filter(|_| l.check_at(t1).is_ok()).count();
        assert_eq!(ok, 5);
    }

    #[test]
    fn sustained_rate_is_exact() {
        let l = limiter(100, 1);
        let mut ok = 0;
        // 10 s of a request every millisecond.
        for ms in 0..10_000u64 {
            if l.check_at(SEC + ms * 1_000_000).is_ok() {
                ok += 1;
            }
        }
        assert!((1000..=1001).contains(&ok), "{ok}");
    }

    #[test]
    fn zero_rate_refuses() {
        let l = limiter(0, 0);
        assert!(l.check_at(SEC).is_err());
    }

    #[test]
    fn concurrent_takers_never_exceed_the_burst() {
        let l = std::sync::Arc::new(limiter(1, 1000));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..1000).filter(|_| l.check_at(SEC).is_ok()).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(total, 1000);
    }
}
