//! Debounced translation: waits for the caches to settle (a quiet period,
//! bounded by a maximum delay), translates, and publishes a new config
//! version only when the output changed. Statuses go to the status writer
//! after every translation, so drift in the cluster is corrected too.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{IngressLoadBalancerIngress, IngressPortStatus};
use tokio::sync::{watch, Notify};
use vestibule_config::translate::ObjectStatus;
use vestibule_config::GatewayConfig;

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

/// A published config with its wire bodies, encoded once per version
/// rather than once per gateway.
#[derive(Debug)]
pub struct Published {
    pub config: Arc<GatewayConfig>,
    pub json: Bytes,
    pub gzip: Bytes,
}

impl Published {
    pub fn new(config: GatewayConfig) -> Result<Self, std::io::Error> {
        let json = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
        let mut gz = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::default());
        gz.write_all(&json)?;
        let gzip = gz.finish()?;
        Ok(Published {
            config: Arc::new(config),
            json: Bytes::from(json),
            gzip: Bytes::from(gzip),
        })
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
    let share = |v: u32| if v == 0 { 0 } else { (v / replicas).max(1) };
    let mut changed = false;
    for tenant in config.tenants.values_mut() {
        if let Some(limit) = tenant.rate_limit.as_mut() {
            tenant.cluster_rate_limit = Some(*limit);
            limit.requests_per_second = share(limit.requests_per_second);
            limit.burst = share(limit.burst);
            changed = true;
        }
    }
    if changed {
        config.seal()
    } else {
        config
    }
}

/// What the status writer needs from one translation.
#[derive(Debug, PartialEq)]
pub struct StatusInput {
    /// Counts translations, so every translation wakes the writer.
    pub translation: u64,
    pub statuses: Vec<ObjectStatus>,
    /// The `--publish-service` addresses; `None` without the flag.
    pub load_balancer: Option<Vec<IngressLoadBalancerIngress>>,
}

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
    published: watch::Sender<Option<Arc<Published>>>,
    statuses: watch::Sender<Option<Arc<StatusInput>>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    tokio::select! {
        ready = stores.ready() => if !ready {
            return Ok(());
        },
        _ = crate::stopped(&mut shutdown) => return Ok(()),
    }
    tracing::info!("watch caches synced");
    let mut translation = 0u64;
    loop {
        translation += 1;
        let started = Instant::now();
        let mut snapshot = stores.snapshot();
        snapshot.acme_failures = acme.handle.failures();
        let mut result = vestibule_config::translate(&snapshot, &settings.translate);
        // Pending challenges travel to every gateway replica.
        let board = acme.handle.board();
        let (http01, tls_alpn01) = (board.http01_all(), board.tls_alpn01_all());
        if !http01.is_empty() || !tls_alpn01.is_empty() {
            result.config.acme_http01 = http01;
            result.config.acme_tls_alpn01 = tls_alpn01
                .into_iter()
                .filter_map(|(domain, (cert_pem, key_pem))| {
                    let domain = vestibule_config::Hostname::parse(&domain).ok()?;
                    Some((
                        domain,
                        vestibule_config::model::Certificate { cert_pem, key_pem },
                    ))
                })
                .collect();
            result.config = result.config.seal();
        }
        result.config = per_replica(result.config, settings.gateway_replicas);
        let leading = *acme.leader.borrow();
        acme.handle.set_plan(if leading {
            std::mem::take(&mut result.acme)
        } else {
            Default::default()
        });
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

        let changed = published
            .borrow()
            .as_ref()
            .is_none_or(|p| p.config.version != result.config.version);
        if changed {
            match Published::new(result.config) {
                Ok(p) => {
                    tracing::info!(
                        version = %p.config.version,
                        hosts = p.config.hosts.len(),
                        pools = p.config.pools.len(),
                        bytes = p.json.len(),
                        gzip_bytes = p.gzip.len(),
                        translate_ms = elapsed.as_secs_f64() * 1000.0,
                        "publishing config"
                    );
                    metrics.versions_published.inc();
                    published.send_replace(Some(Arc::new(p)));
                }
                // Keep serving the previous version.
                Err(e) => tracing::error!(error = %e, "cannot encode the config"),
            }
        }
        let load_balancer = stores.publish_service.as_ref().map(|s| {
            s.state()
                .first()
                .map(|svc| load_balancer_of(svc))
                .unwrap_or_default()
        });
        statuses.send_replace(Some(Arc::new(StatusInput {
            translation,
            statuses: result.statuses,
            load_balancer,
        })));

        if !wait_for_changes(&stores.dirty, settings.debounce, &mut shutdown).await {
            return Ok(());
        }
    }
}

/// Waits for a change, then for the debounce window. False on shutdown.
async fn wait_for_changes(
    dirty: &Notify,
    debounce: Debounce,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = dirty.notified() => {}
        _ = crate::stopped(shutdown) => return false,
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

    async fn measure(changes_every: Option<Duration>) -> Duration {
        let dirty = Arc::new(Notify::new());
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
        assert!(wait_for_changes(&dirty, debounce, &mut shutdown).await);
        if let Some(n) = noise {
            n.abort();
        }
        start.elapsed()
    }

    #[tokio::test]
    async fn translates_after_a_quiet_period() {
        let took = measure(None).await;
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(400),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_stream_of_changes_waits_at_most_the_maximum() {
        let took = measure(Some(Duration::from_millis(30))).await;
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
        assert!(!wait_for_changes(&dirty, Debounce::default(), &mut shutdown).await);
    }
}
