//! The cluster-wide limiter: each tenant's limit is one GCRA bucket in
//! Redis (or Valkey), shared by every gateway replica. Redis is never on a
//! request's path: each replica leases small shares of a tenant's budget
//! (at most a tenth of the limit, and at most 100 ms of the traffic it sees)
//! and spends them locally with one atomic per request; a background task
//! renews the leases ahead of need, all tenants in one pipelined round
//! every 10 ms.
//!
//! Error bound: Redis grants a token only when its bucket has one, so the
//! fleet never admits more than the limit plus its burst, whatever the
//! spread of traffic over replicas; tokens a replica leased and did not
//! spend are dropped after [`LEASE_LIFETIME`], so no replica carries an old
//! lease into a later second. At most one lease per replica is in hand at
//! a time: the admitted count of any one second is off by at most the sum of
//! the replicas' leases (replicas x a tenth of the limit, less when their
//! traffic is low) from the limit.
//!
//! Failure: when a round fails or takes longer than [`ROUND_TIMEOUT`] the
//! store counts as down, every tenant falls back to its per-replica limit
//! (the local limiter), once logged and counted; rounds keep being tried
//! every [`RETRY_EVERY`] and the first one that succeeds brings the global
//! limits back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::ConnectionManager;
use vestibule_config::model::{RateLimit, TenantId};

/// How often leases are renewed.
pub const TICK: Duration = Duration::from_millis(10);
/// A round of lease requests longer than this counts as a store failure.
pub const ROUND_TIMEOUT: Duration = Duration::from_millis(250);
/// While the store is down, how often a round is tried.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);
/// Leased tokens not spent within this are dropped.
pub const LEASE_LIFETIME: Duration = Duration::from_secs(1);

/// GCRA over leases, in Redis' clock (no skew between replicas): grants up
/// to ARGV[3] tokens that fit in the bucket (interval ARGV[1] and burst
/// tolerance ARGV[2], microseconds) and returns how many it granted. The
/// key expires when the bucket is full again.
const LEASE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval)
local grant = math.min(want, math.max(room, 0))
if grant > 0 then
  tat = tat + grant * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return grant
";

/// Where the store is and how to reach it.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// `redis://host:port[/db]` or `rediss://...`.
    pub url: String,
    /// PEM roots for `rediss://` (else the system's).
    pub ca_file: Option<PathBuf>,
    /// AUTH password, read from this file (trailing newline trimmed).
    pub password_file: Option<PathBuf>,
    /// Prepended to every key.
    pub prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rate limit store {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("rate limit store: cannot read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

// === impl Budget ===

/// A tenant's leased share of its cluster-wide budget on this replica.
pub struct Budget {
    /// The cluster-wide limit.
    pub limit: RateLimit,
    key: String,
    /// Tokens in hand; never spent below zero.
    tokens: AtomicI64,
    /// Requests since the last tick (the demand estimate).
    demand: AtomicU32,
    /// When the tokens in hand were leased, in ms since the limiter started.
    leased_at: AtomicU64,
    /// The store's health, shared with the limiter.
    store_up: Arc<AtomicBool>,
    interval: Duration,
}

/// What a budget says about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    Granted,
    /// Over the cluster-wide limit: retry after about this long.
    Refused(Duration),
    /// The store is down: the caller applies its per-replica limit.
    StoreDown,
}

impl Budget {
    /// One token, if one is in hand. No lock, no allocation, no I/O.
    #[inline]
    pub fn take(&self) -> Take {
        self.demand.fetch_add(1, Relaxed);
        if !self.store_up.load(Relaxed) {
            return Take::StoreDown;
        }
        let mut t = self.tokens.load(Relaxed);
        while t > 0 {
            match self
                .tokens
                .compare_exchange_weak(t, t - 1, Relaxed, Relaxed)
            {
                Ok(_) => return Take::Granted,
                Err(seen) => t = seen,
            }
        }
        Take::Refused(self.interval)
    }

    /// The lease to keep in hand for a demand of `rate` requests/s: a
    /// tenth of the limit, at most 100 ms of that demand, at least 1.
    fn lease_size(&self, rate: f64) -> i64 {
        let tenth = i64::from(self.limit.requests_per_second / 10).max(1);
        let demand = (rate / 10.0).ceil() as i64;
        tenth.min(demand).max(1)
    }
}

// === impl GlobalLimiter ===

/// Budgets of every rate-limited tenant, renewed from the store.
pub struct GlobalLimiter {
    prefix: String,
    store_up: Arc<AtomicBool>,
    budgets: Mutex<HashMap<(TenantId, u32, u32), Weak<Budget>>>,
    epoch: Instant,
    metrics: StoreMetrics,
}

struct StoreMetrics {
    up: IntGauge,
    rounds_failed: IntCounter,
    fallbacks: IntCounter,
    tokens: IntCounterVec,
}

impl GlobalLimiter {
    pub fn new(prefix: &str, registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let up = IntGauge::new(
            "vestibule_rate_limit_store_up",
            "1 while the cluster-wide rate limit store answers, 0 while tenants fall back to per-replica limits",
        )?;
        let rounds_failed = IntCounter::new(
            "vestibule_rate_limit_store_failures_total",
            "Lease rounds with the rate limit store that failed or timed out",
        )?;
        let fallbacks = IntCounter::new(
            "vestibule_rate_limit_store_fallbacks_total",
            "Times the store went down and tenants fell back to per-replica limits",
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "vestibule_rate_limit_leased_tokens_total",
                "Tokens leased from the cluster-wide budgets, and leased tokens dropped unspent",
            ),
            &["result"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(rounds_failed.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        Ok(Arc::new(GlobalLimiter {
            prefix: prefix.to_string(),
            store_up: Arc::new(AtomicBool::new(false)),
            budgets: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            metrics: StoreMetrics {
                up,
                rounds_failed,
                fallbacks,
                tokens,
            },
        }))
    }

    /// The budget of `tenant` under `limit`: the same one while the limit
    /// holds (across config swaps), a fresh one when it changes.
    pub fn budget(&self, tenant: &TenantId, limit: RateLimit) -> Arc<Budget> {
        let key = (tenant.clone(), limit.requests_per_second, limit.burst);
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = budgets.get(&key).and_then(Weak::upgrade) {
            return b;
        }
        let interval = match limit.requests_per_second {
            0 => Duration::from_secs(60),
            rps => Duration::from_nanos(1_000_000_000 / u64::from(rps)),
        };
        let budget = Arc::new(Budget {
            limit,
            key: format!("{}{}", self.prefix, tenant),
            tokens: AtomicI64::new(0),
            demand: AtomicU32::new(0),
            leased_at: AtomicU64::new(0),
            store_up: self.store_up.clone(),
            interval,
        });
        budgets.insert(key, Arc::downgrade(&budget));
        budget
    }

    pub fn store_up(&self) -> bool {
        self.store_up.load(Relaxed)
    }

    /// Connects (lazily: the store may be down at start) and renews leases
    /// until the process ends.
    pub async fn run(self: Arc<Self>, settings: StoreSettings) -> Result<(), StoreError> {
        let conn = connect(&settings)?;
        let script = redis::Script::new(LEASE_SCRIPT);
        let mut rates: HashMap<String, f64> = HashMap::new();
        let mut loaded = false;
        loop {
            let up = self.store_up();
            tokio::time::sleep(if up { TICK } else { RETRY_EVERY }).await;
            let budgets = self.live_budgets();
            let wants = self.wants(&budgets, &mut rates);
            let mut conn = conn.clone();
            let round = async {
                if !loaded {
                    script.prepare_invoke().load_async(&mut conn).await?;
                }
                if wants.is_empty() {
                    // Nothing to lease: a ping keeps the health current.
                    return redis::cmd("PING")
                        .query_async::<()>(&mut conn)
                        .await
                        .map(|_| Vec::new());
                }
                let mut pipe = redis::pipe();
                for (b, want) in &wants {
                    pipe.cmd("EVALSHA")
                        .arg(script.get_hash())
                        .arg(1)
                        .arg(&b.key)
                        .arg(b.interval.as_micros() as u64)
                        .arg(b.interval.as_micros() as u64 * u64::from(b.limit.burst.max(1)))
                        .arg(*want);
                }
                pipe.query_async::<Vec<i64>>(&mut conn).await
            };
            match tokio::time::timeout(ROUND_TIMEOUT, round).await {
                Ok(Ok(granted)) => {
                    loaded = true;
                    let now = self.now_ms();
                    for ((b, _), g) in wants.iter().zip(granted) {
                        if g > 0 {
                            b.tokens.fetch_add(g, Relaxed);
                            b.leased_at.store(now, Relaxed);
                            self.metrics
                                .tokens
                                .with_label_values(&["leased"])
                                .inc_by(g as u64);
                        }
                    }
                    if !up {
                        tracing::info!(store = %settings.url, "rate limit store answers: cluster-wide limits are back");
                        self.store_up.store(true, Relaxed);
                        self.metrics.up.set(1);
                    }
                }
                failed => {
                    // A restarted store has lost the script.
                    loaded = false;
                    self.metrics.rounds_failed.inc();
                    if up {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {ROUND_TIMEOUT:?}"),
                        };
                        tracing::warn!(store = %settings.url, %error, "rate limit store down: tenants fall back to per-replica limits");
                        self.store_up.store(false, Relaxed);
                        self.metrics.up.set(0);
                        self.metrics.fallbacks.inc();
                    }
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The budgets still in use (the others are forgotten).
    fn live_budgets(&self) -> Vec<Arc<Budget>> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets.retain(|_, b| b.strong_count() > 0);
        budgets.values().filter_map(Weak::upgrade).collect()
    }

    /// The leases to ask for: for each budget with demand whose tokens in
    /// hand fell below half its lease, enough to fill the lease. Expired
    /// tokens are dropped first.
    fn wants(
        &self,
        budgets: &[Arc<Budget>],
        rates: &mut HashMap<String, f64>,
    ) -> Vec<(Arc<Budget>, i64)> {
        let now = self.now_ms();
        let lifetime = LEASE_LIFETIME.as_millis() as u64;
        let tick_s = TICK.as_secs_f64();
        let mut wants = Vec::new();
        rates.retain(|k, _| budgets.iter().any(|b| &b.key == k));
        for b in budgets {
            let seen = f64::from(b.demand.swap(0, Relaxed));
            let rate = rates.entry(b.key.clone()).or_insert(0.0);
            *rate = 0.7 * *rate + 0.3 * seen / tick_s;
            let tokens = b.tokens.load(Relaxed);
            if tokens > 0 && now.saturating_sub(b.leased_at.load(Relaxed)) > lifetime {
                let dropped = b.tokens.swap(0, Relaxed).max(0);
                self.metrics
                    .tokens
                    .with_label_values(&["expired"])
                    .inc_by(dropped as u64);
                continue;
            }
            if *rate < 0.5 && seen == 0.0 {
                continue;
            }
            let lease = b.lease_size(*rate);
            if tokens * 2 < lease {
                wants.push((b.clone(), lease - tokens.max(0)));
            }
        }
        wants
    }
}

/// Checks the settings (URL, CA and password files) without connecting:
/// a typo fails the start, a store that is down does not.
pub fn check_store(settings: &StoreSettings) -> Result<(), StoreError> {
    client(settings).map(drop)
}

/// A connection that reconnects by itself, connected lazily. Needs a Tokio
/// runtime (it spawns its driver).
fn connect(settings: &StoreSettings) -> Result<ConnectionManager, StoreError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(ROUND_TIMEOUT))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client(settings)?, config).map_err(|source| {
        StoreError::Redis {
            url: settings.url.clone(),
            source,
        }
    })
}

fn client(settings: &StoreSettings) -> Result<redis::Client, StoreError> {
    let fail = |source| StoreError::Redis {
        url: settings.url.clone(),
        source,
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| StoreError::File {
            path: path.clone(),
            source,
        })
    };
    let mut info =
        redis::IntoConnectionInfo::into_connection_info(settings.url.as_str()).map_err(fail)?;
    if let Some(path) = &settings.password_file {
        let password = String::from_utf8_lossy(&read(path)?).trim().to_string();
        info = info
            .clone()
            .set_redis_settings(info.redis_settings().clone().set_password(password));
    }
    let client = match &settings.ca_file {
        Some(path) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(read(path)?),
            },
        ),
        None => redis::Client::open(info),
    }
    .map_err(fail)?;
    Ok(client)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limiter() -> Arc<GlobalLimiter> {
        GlobalLimiter::new("t:", &Registry::new()).unwrap()
    }

    fn limit(rps: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst: 10,
        }
    }

    #[test]
    fn tokens_in_hand_are_spent_once_and_a_down_store_falls_back() {
        let l = limiter();
        let b = l.budget(&TenantId::new("a"), limit(100));
        assert_eq!(b.take(), Take::StoreDown);
        l.store_up.store(true, Relaxed);
        assert!(matches!(b.take(), Take::Refused(_)));
        b.tokens.store(2, Relaxed);
        assert_eq!(b.take(), Take::Granted);
        assert_eq!(b.take(), Take::Granted);
        assert!(matches!(b.take(), Take::Refused(_)));
        assert_eq!(b.tokens.load(Relaxed), 0);
    }

    #[test]
    fn leases_follow_demand_and_a_tenth_of_the_limit() {
        let l = limiter();
        let b = l.budget(&TenantId::new("a"), limit(100));
        // At most a tenth of the limit, at most 100 ms of demand, at least 1.
        assert_eq!(b.lease_size(1000.0), 10);
        assert_eq!(b.lease_size(30.0), 3);
        assert_eq!(b.lease_size(0.0), 1);
        // The same budget while the limit holds; a new one when it changes.
        assert!(Arc::ptr_eq(&b, &l.budget(&TenantId::new("a"), limit(100))));
        assert!(!Arc::ptr_eq(&b, &l.budget(&TenantId::new("a"), limit(200))));
        // Demand since the last tick asks for a lease; none, nothing.
        let mut rates = HashMap::new();
        assert!(l.wants(std::slice::from_ref(&b), &mut rates).is_empty());
        for _ in 0..20 {
            b.demand.fetch_add(1, Relaxed);
        }
        let wants = l.wants(std::slice::from_ref(&b), &mut rates);
        assert_eq!(wants.len(), 1);
        assert_eq!(wants[0].1, 10);
        // Tokens in hand above half the lease: no request.
        b.tokens.store(8, Relaxed);
        b.leased_at.store(l.now_ms(), Relaxed);
        b.demand.fetch_add(20, Relaxed);
        assert!(l.wants(std::slice::from_ref(&b), &mut rates).is_empty());
    }
}
