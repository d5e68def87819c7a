//! Debounced translation: a change after a quiet period is translated at
//! once; changes that follow are coalesced until the caches settle (a quiet
//! period, bounded by a maximum delay). Translation is incremental, and a
//! new config version is published, as a delta on a chain, only when the
//! output changed. Statuses go to the status writer
//! after every translation, so drift in the cluster is corrected too.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{IngressLoadBalancerIngress, IngressPortStatus};
use tokio::sync::{watch, Notify};
use vestibule_config::model::{Certificate, ConfigDelta, ConfigVersion, MapDelta};
use vestibule_config::translate::{Incremental, ObjectRef, ObjectStatus};
use vestibule_config::{GatewayConfig, Hostname};

use crate::metrics::Metrics;
use crate::watch::Stores;
use crate::{Error, Settings};

#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// Translate once no change arrived for this long...
    pub quiet: Duration,
    /// ...or this long after the first change, whichever comes first.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_millis(500),
        }
    }
}

/// A served version: a base config and the deltas from it to this
/// version. The base's bodies are encoded once, when a client first needs
/// the whole config; every other client gets the deltas it lacks.
#[derive(Debug)]
pub struct Published {
    pub version: ConfigVersion,
    pub base: Arc<Base>,
    /// Deltas from `base` to `version`, oldest first.
    pub chain: Vec<Arc<ConfigDelta>>,
    pub hosts: usize,
}

/// A whole config, encoded on first use.
#[derive(Debug)]
pub struct Base {
    pub config: GatewayConfig,
    encoded: OnceLock<Result<Encoded, String>>,
}

/// The wire bodies of a whole config.
#[derive(Debug)]
pub struct Encoded {
    pub json: Bytes,
    pub gzip: Bytes,
}

impl Base {
    pub fn new(config: GatewayConfig) -> Self {
        Base {
            config,
            encoded: OnceLock::new(),
        }
    }

    /// The JSON and gzip bodies (encoded by the first caller; at 100k
    /// tenants that takes a second: call it off the async threads).
    pub fn encoded(&self) -> Result<&Encoded, &str> {
        self.encoded
            .get_or_init(|| {
                let json = serde_json::to_vec(&self.config).map_err(|e| e.to_string())?;
                let gzip = gzip(&json).map_err(|e| e.to_string())?;
                Ok(Encoded {
                    json: Bytes::from(json),
                    gzip: Bytes::from(gzip),
                })
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

/// A body gzipped for the wire (fast: the operator encodes on demand).
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    gz.write_all(body)?;
    gz.finish()
}

impl Published {
    /// A version that is its own base.
    pub fn whole(config: GatewayConfig) -> Self {
        Published {
            version: config.version.clone(),
            hosts: config.hosts.len(),
            base: Arc::new(Base::new(config)),
            chain: Vec::new(),
        }
    }

    /// The one delta from `after` to this version, when `after` is this
    /// version's base or a version on its chain (not this version itself).
    pub fn delta_from(&self, after: &ConfigVersion) -> Option<ConfigDelta> {
        let start = if self.base.config.version == *after {
            0
        } else {
            self.chain.iter().position(|d| d.version == *after)? + 1
        };
        let (first, rest) = self.chain.get(start..)?.split_first()?;
        let mut delta = (**first).clone();
        for d in rest {
            delta.then(d);
        }
        Some(delta)
    }
}

/// Deltas kept after a base before a new base is taken: a new replica then
/// gets at most this many changes after the whole config.
const MAX_CHAIN: usize = 64;

/// The published config, kept by the translation loop: changed in place by
/// each delta, copied into a new base when the chain is long (or when
/// `/v1` clients, which take whole configs only, are about).
pub struct Publisher {
    current: GatewayConfig,
    base: Option<Arc<Base>>,
    chain: Vec<Arc<ConfigDelta>>,
    chain_hosts: usize,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher {
            current: GatewayConfig::default().seal(),
            base: None,
            chain: Vec::new(),
            chain_hosts: 0,
        }
    }
}

impl Publisher {
    /// Applies a translated delta (its tenants' limits divided among
    /// `replicas`, the issuer's pending challenges set) and returns the
    /// version to publish, or `None` when nothing changed and the base is
    /// fresh enough for `whole_wanted`.
    pub fn publish(
        &mut self,
        mut delta: ConfigDelta,
        replicas: u32,
        challenges: (BTreeMap<String, String>, BTreeMap<Hostname, Certificate>),
        whole_wanted: bool,
    ) -> Option<Published> {
        for tenant in delta.tenants.set.values_mut() {
            share_limit(tenant, replicas);
        }
        delta.acme_http01 = MapDelta::between(&self.current.acme_http01, &challenges.0);
        delta.acme_tls_alpn01 = MapDelta::between(&self.current.acme_tls_alpn01, &challenges.1);
        let changed = !delta.is_empty();
        if changed {
            self.current.patch(&mut delta);
            self.chain_hosts += delta.hosts.len() + delta.removed_hosts.len();
            self.chain.push(Arc::new(delta));
        }
        let stale_base = self
            .base
            .as_ref()
            .is_none_or(|b| b.config.version != self.current.version);
        let rebase = self.base.is_none()
            || self.chain.len() > MAX_CHAIN
            || self.chain_hosts > self.current.hosts.len() / 2
            || (whole_wanted && stale_base);
        if !changed && !rebase {
            return None;
        }
        if rebase && stale_base {
            self.base = Some(Arc::new(Base::new(self.current.clone())));
            self.chain.clear();
            self.chain_hosts = 0;
        }
        let base = self.base.clone()?;
        Some(Published {
            version: self.current.version.clone(),
            hosts: self.current.hosts.len(),
            base,
            chain: self.chain.clone(),
        })
    }
}

/// This replica's share of a tenant's limit; see [`per_replica`].
fn share_limit(tenant: &mut vestibule_config::model::Tenant, replicas: u32) {
    if replicas <= 1 {
        return;
    }
    let share = |v: u32| if v == 0 { 0 } else { (v / replicas).max(1) };
    if let Some(limit) = tenant.rate_limit.as_mut() {
        tenant.cluster_rate_limit = Some(*limit);
        limit.requests_per_second = share(limit.requests_per_second);
        limit.burst = share(limit.burst);
    }
}

/// This replica's share of every tenant's rate limit: each of `replicas`
/// gateways enforces `limit / replicas` (rounded down, at least 1 unless
/// the limit is 0) so the total across the fleet stays within the Tenant's
/// `rateLimit`. Applied by the operator, not the gateway, so every replica
/// gets the same bytes and the config stays content-addressed (the version
/// is re-sealed, and depends only on the input and `replicas`).
pub fn per_replica(mut config: GatewayConfig, replicas: u32) -> GatewayConfig {
    if replicas <= 1 {
        return config;
    }
    for tenant in config.tenants.values_mut() {
        share_limit(tenant, replicas);
    }
    config.seal()
}

/// Where the translation loop sends its results.
pub struct Outputs {
    /// The served config.
    pub published: watch::Sender<Option<Arc<Published>>>,
    /// What the status writer writes.
    pub statuses: watch::Sender<Option<Arc<StatusInput>>>,
    /// Whether `/v1` clients want whole configs.
    pub whole: Arc<WholeClients>,
}

/// Clients that take whole configs only (`/v1`, gateways of an older
/// release during an upgrade): while one was seen lately, every version is
/// published as a base of its own, as before deltas.
#[derive(Debug, Default)]
pub struct WholeClients {
    /// Unix seconds of the last `/v1` request.
    seen: std::sync::atomic::AtomicU64,
}

/// How long after the last `/v1` request whole configs stay the rule.
const WHOLE_FOR: u64 = 600;

impl WholeClients {
    pub fn seen_now(&self) {
        self.seen
            .store(unix_now(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn wanted(&self) -> bool {
        let seen = self.seen.load(std::sync::atomic::Ordering::Relaxed);
        seen != 0 && unix_now().saturating_sub(seen) < WHOLE_FOR
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the status writer needs from one translation.
#[derive(Debug, PartialEq)]
pub struct StatusInput {
    /// Counts translations, so every translation wakes the writer.
    pub translation: u64,
    /// Every object's status (shared with the translator).
    pub statuses: Vec<Arc<ObjectStatus>>,
    /// The objects this translation may have changed the status of;
    /// `None`: all of them (a full translation, or the periodic pass that
    /// corrects drift in the cluster).
    pub touched: Option<Vec<ObjectRef>>,
    /// The `--publish-service` addresses; `None` without the flag.
    pub load_balancer: Option<Vec<IngressLoadBalancerIngress>>,
}

/// Every status is reconciled at least this often (drift in the cluster:
/// a status edited by hand, a write lost), and after a full translation.
const STATUS_RESYNC: Duration = Duration::from_secs(60);

/// The ACME issuer as the translation loop sees it.
pub struct Acme {
    pub handle: vestibule_acme::Handle,
    /// Only the leader orders certificates.
    pub leader: watch::Receiver<bool>,
}

pub async fn run(
    stores: Stores,
    settings: Settings,
    metrics: Arc<Metrics>,
    acme: Acme,
    out: Outputs,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let Outputs {
        published,
        statuses,
        whole,
    } = out;
    tokio::select! {
        ready = stores.ready() => if !ready {
            return Ok(());
        },
        _ = crate::stopped(&mut shutdown) => return Ok(()),
    }
    tracing::info!("watch caches synced");
    let mut translation = 0u64;
    let mut translator = Incremental::new(settings.translate.clone());
    let mut publisher = Publisher::default();
    let mut last_resync = Instant::now();
    let mut last_load_balancer = None;
    loop {
        translation += 1;
        let started = Instant::now();
        let mut snapshot = stores.snapshot();
        snapshot.acme_failures = acme.handle.failures();
        let update = translator.update(&snapshot);
        // Pending challenges travel to every gateway replica.
        let board = acme.handle.board();
        let challenges = (
            board.http01_all(),
            board
                .tls_alpn01_all()
                .into_iter()
                .filter_map(|(domain, (cert_pem, key_pem))| {
                    let domain = vestibule_config::Hostname::parse(&domain).ok()?;
                    Some((domain, Certificate { cert_pem, key_pem }))
                })
                .collect(),
        );
        let leading = *acme.leader.borrow();
        acme.handle.set_plan(if leading {
            translator.acme().clone()
        } else {
            Default::default()
        });
        let whole_wanted = whole.wanted();
        let next = publisher.publish(
            update.delta,
            settings.gateway_replicas,
            challenges,
            whole_wanted,
        );
        let elapsed = started.elapsed();
        metrics.translate_seconds.observe(elapsed.as_secs_f64());
        for (kind, n) in [
            ("IngressClass", snapshot.ingress_classes.len()),
            ("Ingress", snapshot.ingresses.len()),
            ("Service", snapshot.services.len()),
            ("EndpointSlice", snapshot.endpoint_slices.len()),
            ("Secret", snapshot.secrets.len()),
            ("Tenant", snapshot.tenants.len()),
            ("AcmeIssuer", snapshot.acme_issuers.len()),
        ] {
            metrics
                .objects_watched
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(p) = next {
            let delta_hosts = p
                .chain
                .last()
                .map_or(0, |d| d.hosts.len() + d.removed_hosts.len());
            tracing::info!(
                version = %p.version,
                hosts = p.hosts,
                full = update.full,
                delta_hosts,
                chain = p.chain.len(),
                translate_ms = elapsed.as_secs_f64() * 1000.0,
                "publishing config"
            );
            if published
                .borrow()
                .as_ref()
                .is_none_or(|old| old.version != p.version)
            {
                metrics.versions_published.inc();
            }
            published.send_replace(Some(Arc::new(p)));
        }
        let load_balancer = stores.publish_service.as_ref().map(|s| {
            s.state()
                .first()
                .map(|svc| load_balancer_of(svc))
                .unwrap_or_default()
        });
        let resync = update.full
            || last_resync.elapsed() >= STATUS_RESYNC
            || load_balancer != last_load_balancer;
        if resync {
            last_resync = Instant::now();
            last_load_balancer.clone_from(&load_balancer);
        }
        statuses.send_replace(Some(Arc::new(StatusInput {
            translation,
            statuses: translator.shared_statuses(),
            touched: (!resync).then_some(update.statuses),
            load_balancer,
        })));

        let finished = tokio::time::Instant::now();
        if !wait_for_changes(&stores.dirty, settings.debounce, finished, &mut shutdown).await {
            return Ok(());
        }
    }
}

/// Waits for a change, then for the debounce window; a change after a
/// quiet period (none since `last` for the quiet time) goes at once, so a
/// lone edit does not wait out the window while a burst is still coalesced.
/// False on shutdown.
async fn wait_for_changes(
    dirty: &Notify,
    debounce: Debounce,
    last: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = dirty.notified() => {}
        _ = crate::stopped(shutdown) => return false,
    }
    if last.elapsed() >= debounce.quiet {
        return true;
    }
    let deadline = tokio::time::Instant::now() + debounce.max;
    loop {
        let quiet_until = (tokio::time::Instant::now() + debounce.quiet).min(deadline);
        tokio::select! {
            _ = dirty.notified() => {
                if tokio::time::Instant::now() >= deadline {
                    return true;
                }
            }
            _ = tokio::time::sleep_until(quiet_until) => return true,
            _ = crate::stopped(shutdown) => return false,
        }
    }
}

/// The Ingress `status.loadBalancer.ingress` a Service's status implies:
/// its load balancer addresses, else its external IPs.
pub fn load_balancer_of(svc: &Service) -> Vec<IngressLoadBalancerIngress> {
    let from_lb: Vec<IngressLoadBalancerIngress> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .map(|i| IngressLoadBalancerIngress {
            ip: i.ip.clone(),
            hostname: i.hostname.clone(),
            ports: i.ports.as_ref().map(|ports| {
                ports
                    .iter()
                    .map(|p| IngressPortStatus {
                        port: p.port,
                        protocol: p.protocol.clone(),
                        error: p.error.clone(),
                    })
                    .collect()
            }),
        })
        .collect();
    let mut out = if from_lb.is_empty() {
        svc.spec
            .as_ref()
            .and_then(|s| s.external_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|ip| IngressLoadBalancerIngress {
                ip: Some(ip.clone()),
                ..Default::default()
            })
            .collect()
    } else {
        from_lb
    };
    out.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a wait takes for a change right after a translation (the
    /// last one `since` ago), with more changes every `changes_every`.
    async fn measure(changes_every: Option<Duration>, since: Duration) -> Duration {
        let dirty = Arc::new(Notify::new());
        let last = tokio::time::Instant::now() - since;
        let (_tx, mut shutdown) = watch::channel(false);
        let debounce = Debounce::default();
        dirty.notify_one();
        let start = Instant::now();
        let noise = changes_every.map(|every| {
            let dirty = dirty.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    dirty.notify_one();
                }
            })
        });
        assert!(wait_for_changes(&dirty, debounce, last, &mut shutdown).await);
        if let Some(n) = noise {
            n.abort();
        }
        start.elapsed()
    }

    #[tokio::test]
    async fn a_lone_change_after_a_quiet_period_goes_at_once() {
        let took = measure(None, Duration::from_secs(1)).await;
        assert!(took < Duration::from_millis(50), "{took:?}");
    }

    #[tokio::test]
    async fn translates_after_a_quiet_period() {
        let took = measure(None, Duration::ZERO).await;
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(400),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_stream_of_changes_waits_at_most_the_maximum() {
        let took = measure(Some(Duration::from_millis(30)), Duration::ZERO).await;
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(1000),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let dirty = Notify::new();
        let (tx, mut shutdown) = watch::channel(false);
        tx.send_replace(true);
        let last = tokio::time::Instant::now();
        assert!(!wait_for_changes(&dirty, Debounce::default(), last, &mut shutdown).await);
    }
}
