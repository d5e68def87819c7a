//! Per client address limits of one route, on this replica (ingress-nginx's
//! `limit-rps` / `limit-rpm` and `limit-connections`): a GCRA arrival time
//! per address, and requests in flight per address. Both maps are bounded:
//! a full rate table forgets addresses whose bucket is full again (at most
//! once a second), then, if still full, one address to make room (nginx
//! evicts its least recently used), so a flood of addresses never locks
//! new clients out; the in-flight table only holds addresses with a request
//! under way. Limiters outlive config changes ([`PerClientLimiters`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use vestibule_config::model::{ClientConcurrency, ClientRate, RatePeriod, RouteName};

/// Addresses a route's rate table holds at most.
pub const MAX_CLIENTS: usize = 65_536;

type Table<V> = Mutex<HashMap<IpAddr, V, ahash::RandomState>>;

/// A route's per-address request rate.
pub struct ClientRateLimiter {
    /// Nanoseconds per request.
    interval: u64,
    /// How far an address's arrival time may run ahead of now: its burst.
    tolerance: u64,
    exempt: Vec<IpNet>,
    epoch: Instant,
    /// Arrival time of each address's next request, in ns since `epoch`,
    /// and when the table was last swept.
    tat: Mutex<(HashMap<IpAddr, u64, ahash::RandomState>, u64)>,
}

impl ClientRateLimiter {
    pub fn new(rate: &ClientRate) -> Self {
        let period: u64 = match rate.per {
            RatePeriod::Second => 1_000_000_000,
            RatePeriod::Minute => 60_000_000_000,
        };
        let interval = (period / u64::from(rate.requests.max(1))).max(1);
        ClientRateLimiter {
            interval,
            // nginx's `burst=B nodelay` lets B + 1 requests through at once.
            tolerance: interval.saturating_mul(u64::from(rate.burst.max(1)) + 1),
            exempt: rate.exempt.clone(),
            epoch: Instant::now(),
            tat: Mutex::default(),
        }
    }

    /// Takes one of `ip`'s requests, or says how long until it has one.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        self.check_at(ip, self.epoch.elapsed().as_nanos() as u64)
    }

    fn check_at(&self, ip: IpAddr, now: u64) -> Result<(), Duration> {
        let mut guard = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let (table, swept) = &mut *guard;
        if table.len() >= MAX_CLIENTS && !table.contains_key(&ip) {
            // Addresses whose bucket is full again hold nothing: forget
            // them, at most once a second (a sweep reads the whole table).
            if now.saturating_sub(*swept) >= 1_000_000_000 {
                table.retain(|_, tat| *tat > now);
                *swept = now;
            }
            if table.len() >= MAX_CLIENTS {
                if let Some(any) = table.keys().next().copied() {
                    table.remove(&any);
                }
            }
        }
        let tat = table.entry(ip).or_insert(0);
        let next = (*tat).max(now).saturating_add(self.interval);
        let allowed_until = now.saturating_add(self.tolerance);
        if next > allowed_until {
            return Err(Duration::from_nanos(next - allowed_until));
        }
        *tat = next;
        Ok(())
    }
}

/// A route's per-address cap on requests in flight.
pub struct ClientConcurrencyLimiter {
    max: u32,
    exempt: Vec<IpNet>,
    in_flight: Table<u32>,
}

/// One request's place under the cap; given back when dropped.
pub struct ClientSlot(Option<(Arc<ClientConcurrencyLimiter>, IpAddr)>);

impl ClientConcurrencyLimiter {
    pub fn new(c: &ClientConcurrency) -> Self {
        ClientConcurrencyLimiter {
            max: c.max,
            exempt: c.exempt.clone(),
            in_flight: Mutex::default(),
        }
    }

    /// A place for one more request of `ip`, unless it has `max` under way.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return Some(ClientSlot(None));
        }
        let mut table = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = table.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot(Some((self.clone(), ip))))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some((limiter, ip)) = self.0.take() else {
            return;
        };
        let mut table = limiter.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = table.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&ip);
            }
        }
    }
}

/// Every route's per-client limiters, by route and limit: a config change
/// that keeps a route's limit keeps its counts (and the requests in flight
/// keep counting against the same cap). Entries go with their last route.
#[derive(Default)]
pub struct PerClientLimiters {
    rates: Mutex<HashMap<(RouteName, ClientRate), Weak<ClientRateLimiter>>>,
    concurrency: Mutex<HashMap<(RouteName, ClientConcurrency), Weak<ClientConcurrencyLimiter>>>,
}

impl PerClientLimiters {
    pub fn rate(&self, route: &RouteName, rate: &ClientRate) -> Arc<ClientRateLimiter> {
        shared(&self.rates, (route.clone(), rate.clone()), || {
            ClientRateLimiter::new(rate)
        })
    }

    pub fn concurrency(
        &self,
        route: &RouteName,
        c: &ClientConcurrency,
    ) -> Arc<ClientConcurrencyLimiter> {
        shared(&self.concurrency, (route.clone(), c.clone()), || {
            ClientConcurrencyLimiter::new(c)
        })
    }
}

/// The live value under `key`, or a new one (forgetting dead entries).
fn shared<K: std::hash::Hash + Eq, V>(
    map: &Mutex<HashMap<K, Weak<V>>>,
    key: K,
    new: impl FnOnce() -> V,
) -> Arc<V> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
        return live;
    }
    map.retain(|_, w| w.strong_count() > 0);
    let value = Arc::new(new());
    map.insert(key, Arc::downgrade(&value));
    value
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_address_has_its_own_rate_and_burst() {
        let l = ClientRateLimiter::new(&ClientRate {
            requests: 10,
            per: RatePeriod::Second,
            burst: 5,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
        });
        let t0 = 1_000_000_000_000;
        // A burst of 5 on top of the one the rate allows (nginx's `burst=5 nodelay`).
        let passed = (0..20)
            .filter(|_| l.check_at(ip("192.0.2.1"), t0).is_ok())
            .count();
        assert_eq!(passed, 6);
        // Another address is not affected; an exempt one is never limited.
        assert!(l.check_at(ip("192.0.2.2"), t0).is_ok());
        assert!((0..100).all(|_| l.check(ip("10.1.2.3")).is_ok()));
        // 100 ms later the first has one more.
        assert!(l.check_at(ip("192.0.2.1"), t0 + 100_000_000).is_ok());
        assert!(l.check_at(ip("192.0.2.1"), t0 + 100_000_000).is_err());
    }

    #[test]
    fn a_full_table_still_takes_new_addresses() {
        let l = ClientRateLimiter::new(&ClientRate {
            requests: 1,
            per: RatePeriod::Minute,
            burst: 1,
            exempt: vec![],
        });
        let t0 = 1_000_000_000_000;
        for i in 0..MAX_CLIENTS as u32 {
            assert!(l.check_at(IpAddr::from(i.to_be_bytes()), t0).is_ok());
        }
        assert!(l.check_at(ip("192.0.2.1"), t0).is_ok());
        assert!(l.tat.lock().unwrap().0.len() <= MAX_CLIENTS);
    }

    #[test]
    fn in_flight_requests_are_capped_and_given_back() {
        let l = Arc::new(ClientConcurrencyLimiter::new(&ClientConcurrency {
            max: 2,
            exempt: vec![],
        }));
        let a = l.acquire(ip("192.0.2.1")).unwrap();
        let _b = l.acquire(ip("192.0.2.1")).unwrap();
        assert!(l.acquire(ip("192.0.2.1")).is_none());
        assert!(l.acquire(ip("192.0.2.9")).is_some());
        drop(a);
        assert!(l.acquire(ip("192.0.2.1")).is_some());
    }
}
