//! Leader election over a coordination.k8s.io/v1 Lease. Writes carry the
//! Lease's resourceVersion, so of two replicas racing for it the API server
//! lets exactly one win (the other gets 409). Expiry is judged by how long
//! this replica has seen the record unchanged, not by comparing clocks
//! across machines, as client-go does.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::Error;

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's holder identity (the pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the leader renews (about duration / 3).
    pub renew_every: Duration,
    /// The leader steps down when no renewal succeeded for this long, before
    /// the others may consider the Lease expired.
    pub renew_deadline: Duration,
    /// How often a follower checks the Lease.
    pub retry_every: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: String, identity: String) -> Self {
        Self::with_duration(namespace, identity, Duration::from_secs(15))
    }

    /// Derives the renew interval, deadline and retry interval from the duration.
    pub fn with_duration(namespace: String, identity: String, duration: Duration) -> Self {
        LeaseSettings {
            namespace,
            name: "vestibule-operator".into(),
            identity,
            duration,
            renew_every: duration / 3,
            renew_deadline: duration * 2 / 3,
            retry_every: duration / 3,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs_f64().ceil() as u64)
            .unwrap_or(i32::MAX)
            .max(1)
    }
}

/// What this replica last saw of the Lease record, and since when.
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    since: Instant,
}

/// What to do with the Lease as it stands.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Take,
    /// Someone else holds a valid Lease.
    Follow,
}

fn decide(
    spec: &LeaseSpec,
    me: &str,
    observed: &Observed,
    now: Instant,
    ours: Duration,
) -> Decision {
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Take,
        Some(_) => {
            let valid_for = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(ours);
            if now.duration_since(observed.since) >= valid_for {
                Decision::Take
            } else {
                Decision::Follow
            }
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
}

impl Elector {
    /// One round: Ok(true) when we hold the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let s = &self.settings;
        let Some(mut lease) = self.api.get_opt(&s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(s.identity.clone()),
                    lease_duration_seconds: Some(s.duration_seconds()),
                    acquire_time: Some(now_micro()),
                    renew_time: Some(now_micro()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let now = Instant::now();
        let seen = (spec.holder_identity.clone(), spec.renew_time.clone());
        let observed = match self.observed.take() {
            Some(o) if (o.holder.clone(), o.renew_time.clone()) == seen => o,
            _ => Observed {
                holder: seen.0,
                renew_time: seen.1,
                since: now,
            },
        };
        let decision = decide(&spec, &s.identity, &observed, now, s.duration);
        self.observed = Some(observed);
        let mut spec = spec;
        match decision {
            Decision::Follow => return Ok(false),
            Decision::Renew => spec.renew_time = Some(now_micro()),
            Decision::Take => {
                tracing::info!(
                    previous = spec.holder_identity.as_deref().unwrap_or(""),
                    "taking over the Lease"
                );
                spec.holder_identity = Some(s.identity.clone());
                spec.acquire_time = Some(now_micro());
                spec.renew_time = Some(now_micro());
                spec.lease_duration_seconds = Some(s.duration_seconds());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        lease.spec = Some(spec);
        // metadata.resourceVersion is still the one we read: a concurrent
        // writer makes this a 409.
        conflict_is_false(
            self.api
                .replace(&s.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Gives the Lease up on shutdown so another replica takes over at once.
    async fn release(&mut self) {
        let s = &self.settings;
        let result = async {
            let Some(mut lease) = self.api.get_opt(&s.name).await? else {
                return Ok(());
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.renew_time = Some(now_micro());
            self.api
                .replace(&s.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        .await;
        match result {
            Ok(()) => tracing::info!("released the Lease"),
            Err(e) => tracing::warn!(error = %e, "cannot release the Lease; it will expire"),
        }
    }
}

fn conflict_is_false<T>(r: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() || s.code == 409 => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Runs the election until shutdown, publishing leadership on `leader`.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings: settings.clone(),
        observed: None,
    };
    let mut last_renewed: Option<Instant> = None;
    let set = |is_leader: bool| {
        if *leader.borrow() != is_leader {
            if is_leader {
                tracing::info!(identity = %settings.identity, lease = %settings.name, "became leader");
            } else {
                tracing::warn!(identity = %settings.identity, lease = %settings.name, "stepped down");
            }
            metrics.leader.set(i64::from(is_leader));
            leader.send_replace(is_leader);
        }
    };
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(true) => {
                last_renewed = Some(Instant::now());
                set(true);
            }
            Ok(false) => {
                last_renewed = None;
                set(false);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Lease request failed");
                // Step down before anyone else may consider the Lease expired.
                if last_renewed.is_none_or(|t| t.elapsed() >= settings.renew_deadline) {
                    last_renewed = None;
                    set(false);
                }
            }
        }
        let wait = if *leader.borrow() {
            settings.renew_every
        } else {
            settings.retry_every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    if *leader.borrow() {
        set(false);
        elector.release().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, secs: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: secs,
            ..Default::default()
        }
    }

    fn observed(since: Instant) -> Observed {
        Observed {
            holder: None,
            renew_time: None,
            since,
        }
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let o = observed(t0);
        assert_eq!(
            decide(&spec(Some("me"), Some(15)), "me", &o, t0, d),
            Decision::Renew
        );
        assert_eq!(
            decide(&spec(None, Some(15)), "me", &o, t0, d),
            Decision::Take
        );
        assert_eq!(
            decide(&spec(Some(""), Some(15)), "me", &o, t0, d),
            Decision::Take
        );
        let other = spec(Some("other"), Some(2));
        assert_eq!(
            decide(&other, "me", &o, t0 + Duration::from_secs(1), d),
            Decision::Follow
        );
        assert_eq!(
            decide(&other, "me", &o, t0 + Duration::from_secs(2), d),
            Decision::Take
        );
        // Without a duration in the record, ours applies.
        let other = spec(Some("other"), None);
        assert_eq!(
            decide(&other, "me", &o, t0 + Duration::from_secs(14), d),
            Decision::Follow
        );
        assert_eq!(
            decide(&other, "me", &o, t0 + Duration::from_secs(15), d),
            Decision::Take
        );
    }

    #[test]
    fn durations_derive_from_the_lease_duration() {
        let s = LeaseSettings::with_duration("ns".into(), "a".into(), Duration::from_millis(1500));
        assert_eq!(s.duration_seconds(), 2);
        assert_eq!(s.renew_every, Duration::from_millis(500));
        assert_eq!(s.renew_deadline, Duration::from_millis(1000));
    }
}
