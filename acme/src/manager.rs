//! The issuer's loop: it holds the translator's latest [`AcmePlan`], takes
//! on-demand requests from handshakes, and starts orders within the
//! [`Limits`] (one per domain at a time, global and per-tenant
//! concurrency, a per-tenant rate, backoff after failures). Finished
//! orders are stored, then `on_change` asks for a new translation, which
//! serves the certificate and brings the next plan.
//!
//! Only domains in the plan can be ordered, and the plan holds only
//! non-wildcard domains of Tenants with `tls.acme`: a client naming any
//! other server name never reaches a CA.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use vestibule_config::acme::{AcmePlan, IssuerPlan, PlannedDomain};
use vestibule_config::issuer::IssueWhen;
use vestibule_config::model::TenantId;
use vestibule_config::Hostname;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::account::Accounts;
use crate::board::Board;
use crate::metrics::Metrics;
use crate::order::{self, OrderError, Timeouts};
use crate::renewal_info;
use crate::schedule::{self, Bucket, Limits};
use crate::store::{Issued, Store};

/// On-demand requests waiting for the loop; more are dropped (the next
/// handshake asks again).
const DEMAND_QUEUE: usize = 1024;
/// The loop looks at the plan at least this often (renewals, buckets).
const TICK: Duration = Duration::from_secs(30);

/// What the rest of the process holds of the issuer.
#[derive(Clone)]
pub struct Handle {
    plan: Arc<watch::Sender<Arc<AcmePlan>>>,
    demand: mpsc::Sender<Box<str>>,
    failures: Arc<ArcSwap<BTreeMap<Hostname, String>>>,
    board: Arc<Board>,
}

impl Handle {
    /// The translator's latest plan.
    pub fn set_plan(&self, plan: AcmePlan) {
        self.plan.send_replace(Arc::new(plan));
    }

    /// A handshake named `domain` (normalized), which has no certificate
    /// yet. Never blocks.
    pub fn on_demand(&self, domain: &str) {
        let _ = self.demand.try_send(domain.into());
    }

    /// Domains whose last order failed, with the CA's problem: the
    /// translator puts them in the Tenant status.
    pub fn failures(&self) -> BTreeMap<Hostname, String> {
        BTreeMap::clone(&self.failures.load())
    }

    /// The pending challenges, for the listeners.
    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }

    /// Where the planned domains stand, for the admin endpoint (at most
    /// [`SUMMARY_NAMES`] names per list).
    pub fn summary(&self) -> Summary {
        let plan = self.plan.borrow().clone();
        let failures = self.failures.load();
        let pending: Vec<String> = plan
            .domains
            .iter()
            .filter(|(d, p)| p.certificate.is_none() && !failures.contains_key(*d))
            .map(|(d, _)| d.to_string())
            .collect();
        Summary {
            domains: plan.domains.len(),
            issued: plan
                .domains
                .values()
                .filter(|p| p.certificate.is_some())
                .count(),
            pending_count: pending.len(),
            pending: pending.into_iter().take(SUMMARY_NAMES).collect(),
            failed_count: failures.len(),
            failed: failures
                .iter()
                .take(SUMMARY_NAMES)
                .map(|(d, p)| (d.to_string(), p.clone()))
                .collect(),
        }
    }
}

/// Names listed per kind in a [`Summary`].
pub const SUMMARY_NAMES: usize = 100;

/// The issuer's view of its plan: counts, and the first names pending or
/// failing (with the CA's problem).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub domains: usize,
    pub issued: usize,
    pub pending_count: usize,
    pub pending: Vec<String>,
    pub failed_count: usize,
    pub failed: BTreeMap<String, String>,
}

/// Everything the issuer is built from.
pub struct Settings {
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Called after a certificate was stored or a failure recorded.
    pub on_change: Arc<dyn Fn() + Send + Sync>,
    /// Whether handshakes reach [`Handle::on_demand`] (the gateway's own
    /// issuer). Without them (the operator's), domains of on-demand issuers
    /// are ordered at onboarding.
    pub sees_handshakes: bool,
}

/// The issuer's handle and its loop, for the caller to spawn.
pub fn issuer(settings: Settings) -> (Handle, impl std::future::Future<Output = ()> + Send) {
    let (plan_tx, plan_rx) = watch::channel(Arc::new(AcmePlan::default()));
    let (demand_tx, demand_rx) = mpsc::channel(DEMAND_QUEUE);
    let handle = Handle {
        plan: Arc::new(plan_tx),
        demand: demand_tx,
        failures: Arc::default(),
        board: Arc::default(),
    };
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (ari_tx, ari_rx) = mpsc::unbounded_channel();
    let state = Loop {
        ari_tx,
        ari_rx: Some(ari_rx),
        accounts: Arc::new(Accounts::new(
            settings.store.clone(),
            settings.timeouts.request,
        )),
        settings,
        board: handle.board.clone(),
        failures: handle.failures.clone(),
        plan: Arc::new(AcmePlan::default()),
        domains: HashMap::new(),
        tenants: HashMap::new(),
        in_flight: 0,
        done_tx,
    };
    (handle.clone(), state.run(plan_rx, demand_rx, done_rx))
}

#[derive(Default)]
struct DomainState {
    /// When the CA's renewal information says to renew the current
    /// certificate, and when to ask again.
    ari_renew_at: Option<SystemTime>,
    ari_next: Option<SystemTime>,
    ari_in_flight: bool,
    /// A handshake asked for it.
    requested: bool,
    in_flight: bool,
    failures: u32,
    retry_at: Option<SystemTime>,
    /// Renewal time of a certificate this loop stored, until the plan
    /// shows it (the translation after `on_change`).
    stored_renew_at: Option<SystemTime>,
}

struct TenantState {
    in_flight: usize,
    bucket: Bucket,
}

/// A renewal-information answer.
struct AriDone {
    domain: Hostname,
    result: Result<renewal_info::Answer, String>,
}

/// A finished order.
struct Done {
    domain: Hostname,
    tenant: TenantId,
    renewal: bool,
    result: Result<SystemTime, OrderError>,
    took: Duration,
}

struct Loop {
    settings: Settings,
    accounts: Arc<Accounts>,
    board: Arc<Board>,
    failures: Arc<ArcSwap<BTreeMap<Hostname, String>>>,
    plan: Arc<AcmePlan>,
    domains: HashMap<Hostname, DomainState>,
    tenants: HashMap<TenantId, TenantState>,
    in_flight: usize,
    done_tx: mpsc::UnboundedSender<Done>,
    ari_tx: mpsc::UnboundedSender<AriDone>,
    ari_rx: Option<mpsc::UnboundedReceiver<AriDone>>,
}

impl Loop {
    async fn run(
        mut self,
        mut plan_rx: watch::Receiver<Arc<AcmePlan>>,
        mut demand_rx: mpsc::Receiver<Box<str>>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
    ) {
        let Some(mut ari_rx) = self.ari_rx.take() else {
            return;
        };
        loop {
            self.start_due(SystemTime::now());
            self.ask_renewal_info(SystemTime::now());
            let wake = self.next_wake(SystemTime::now());
            tokio::select! {
                changed = plan_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let plan = plan_rx.borrow_and_update().clone();
                    self.set_plan(plan);
                }
                Some(domain) = demand_rx.recv() => self.on_demand(&domain),
                Some(done) = done_rx.recv() => self.finish(done),
                Some(ari) = ari_rx.recv() => self.ari_answer(ari),
                _ = tokio::time::sleep(wake) => {}
            }
        }
    }

    fn set_plan(&mut self, plan: Arc<AcmePlan>) {
        self.domains
            .retain(|d, s| s.in_flight || plan.domains.contains_key(d));
        // A certificate this loop stored is in the plan now: the plan (and
        // the new certificate's renewal information) decide from here.
        for (domain, state) in self.domains.iter_mut() {
            let planned = plan.domains.get(domain);
            let shown = planned
                .and_then(|p| p.renew_at.as_deref())
                .and_then(schedule::parse_rfc3339);
            if state.stored_renew_at.is_some() && shown == state.stored_renew_at {
                state.stored_renew_at = None;
                state.ari_renew_at = None;
                state.ari_next = None;
            }
        }
        self.failures.rcu(|f| {
            f.iter()
                .filter(|(d, _)| plan.domains.contains_key(*d))
                .map(|(d, p)| (d.clone(), p.clone()))
                .collect::<BTreeMap<_, _>>()
        });
        let now = SystemTime::now();
        let soon = now + Duration::from_secs(7 * 86400);
        let expiring = plan
            .domains
            .values()
            .filter_map(|p| p.not_after.as_deref().and_then(schedule::parse_rfc3339))
            .filter(|t| *t < soon)
            .count();
        self.settings.metrics.expiring_7d.set(expiring as i64);
        self.plan = plan;
    }

    fn on_demand(&mut self, domain: &str) {
        let outcome = match Hostname::parse(domain) {
            Ok(d) => match self.plan.domains.get(&d) {
                Some(p) if p.certificate.is_none() => {
                    let state = self.domains.entry(d).or_default();
                    let waiting = state.in_flight || state.requested;
                    state.requested = true;
                    if waiting {
                        "waiting"
                    } else {
                        "ordered"
                    }
                }
                Some(_) => "waiting",
                None => "not_planned",
            },
            Err(_) => "not_planned",
        };
        self.settings
            .metrics
            .on_demand
            .with_label_values(&[outcome])
            .inc();
    }

    /// Whether `domain` needs an order now (limits aside).
    fn needed(
        &self,
        domain: &Hostname,
        planned: &PlannedDomain,
        issuer: &IssuerPlan,
        now: SystemTime,
    ) -> bool {
        let state = self.domains.get(domain);
        if state.is_some_and(|s| s.in_flight || s.retry_at.is_some_and(|t| t > now)) {
            return false;
        }
        if let Some(renew_at) = state.and_then(|s| s.stored_renew_at) {
            return renew_at <= now;
        }
        if state.and_then(|s| s.ari_renew_at).is_some_and(|t| t <= now) {
            return planned.certificate.is_some();
        }
        match &planned.certificate {
            None => {
                issuer.issue == IssueWhen::Onboarding
                    || !self.settings.sees_handshakes
                    || state.is_some_and(|s| s.requested)
            }
            Some(_) => planned
                .renew_at
                .as_deref()
                .and_then(schedule::parse_rfc3339)
                .is_some_and(|t| t <= now),
        }
    }

    fn start_due(&mut self, now: SystemTime) {
        let limits = self.settings.limits;
        let plan = self.plan.clone();
        for (domain, planned) in &plan.domains {
            if self.in_flight >= limits.concurrent {
                return;
            }
            let Some(issuer) = plan.issuers.get(&planned.issuer) else {
                continue;
            };
            if !self.needed(domain, planned, issuer, now) {
                continue;
            }
            let tenant = self
                .tenants
                .entry(planned.tenant.clone())
                .or_insert_with(|| TenantState {
                    in_flight: 0,
                    bucket: Bucket::full(&limits, now),
                });
            if tenant.in_flight >= limits.concurrent_per_tenant || !tenant.bucket.take(&limits, now)
            {
                continue;
            }
            tenant.in_flight += 1;
            self.in_flight += 1;
            self.settings.metrics.in_flight.set(self.in_flight as i64);
            let state = self.domains.entry(domain.clone()).or_default();
            state.in_flight = true;
            let renewal = planned.certificate.is_some() || state.stored_renew_at.is_some();
            tracing::info!(%domain, tenant = %planned.tenant, issuer = %planned.issuer, renewal, "ACME order started");
            self.spawn_order(
                domain.clone(),
                planned.tenant.clone(),
                issuer.clone(),
                renewal,
            );
        }
    }

    /// Asks the CA's renewal information for issued certificates that are
    /// due a check (a few at a time; answers come back as [`AriDone`]).
    fn ask_renewal_info(&mut self, now: SystemTime) {
        const AT_ONCE: usize = 8;
        let asking = self.domains.values().filter(|s| s.ari_in_flight).count();
        let plan = self.plan.clone();
        let due = plan
            .domains
            .iter()
            .filter_map(|(d, p)| Some((d, p, p.ari_id.as_ref()?, plan.issuers.get(&p.issuer)?)))
            .filter(|(d, ..)| {
                self.domains.get(*d).is_none_or(|s| {
                    !s.ari_in_flight
                        && !s.in_flight
                        && s.stored_renew_at.is_none()
                        && s.ari_next.is_none_or(|t| t <= now)
                })
            })
            .take(AT_ONCE.saturating_sub(asking))
            .map(|(d, _, id, issuer)| (d.clone(), id.clone(), issuer.clone()))
            .collect::<Vec<_>>();
        for (domain, id, issuer) in due {
            let state = self.domains.entry(domain.clone()).or_default();
            state.ari_in_flight = true;
            let (accounts, tx, timeout) = (
                self.accounts.clone(),
                self.ari_tx.clone(),
                self.settings.timeouts.request,
            );
            tokio::spawn(async move {
                let result = match accounts.get(&issuer).await {
                    Ok(account) => renewal_info::ask(&account, domain.as_str(), &id, timeout).await,
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(AriDone { domain, result });
            });
        }
    }

    fn ari_answer(&mut self, done: AriDone) {
        let now = SystemTime::now();
        let state = self.domains.entry(done.domain.clone()).or_default();
        state.ari_in_flight = false;
        match done.result {
            Ok(renewal_info::Answer::Window {
                renew_at,
                ask_again,
            }) => {
                if state.ari_renew_at != Some(renew_at) {
                    tracing::info!(domain = %done.domain, renew_at = %schedule::rfc3339(renew_at), "ACME renewal information");
                }
                state.ari_renew_at = Some(renew_at);
                state.ari_next = Some(now + ask_again);
            }
            // Ask again a day later: the CA may start publishing it.
            Ok(renewal_info::Answer::Unsupported) => {
                state.ari_next = Some(now + Duration::from_secs(24 * 3600))
            }
            Err(e) => {
                tracing::debug!(domain = %done.domain, error = %e, "no ACME renewal information");
                state.ari_next = Some(now + Duration::from_secs(3600));
            }
        }
    }

    fn spawn_order(&self, domain: Hostname, tenant: TenantId, issuer: IssuerPlan, renewal: bool) {
        let accounts = self.accounts.clone();
        let board = self.board.clone();
        let store = self.settings.store.clone();
        let timeouts = self.settings.timeouts;
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let result = async {
                let account = accounts.get(&issuer).await?;
                let cert =
                    order::issue(&account, &domain, issuer.challenge, &board, timeouts).await?;
                let (not_before, not_after, ari_id) = validity(&cert.chain_pem)?;
                let renew_at = schedule::renew_at(not_before, not_after);
                let issued = Issued {
                    domain: domain.clone(),
                    tenant: tenant.clone(),
                    chain_pem: cert.chain_pem,
                    key_pem: cert.key_pem,
                    order_url: cert.order_url,
                    not_after: schedule::rfc3339(not_after),
                    renew_at: schedule::rfc3339(renew_at),
                    ari_id,
                };
                store
                    .save(&issued)
                    .await
                    .map_err(|e| OrderError::Unreachable {
                        step: "store",
                        detail: e.to_string(),
                    })?;
                Ok(renew_at)
            }
            .await;
            let _ = done.send(Done {
                domain,
                tenant,
                renewal,
                result,
                took: start.elapsed(),
            });
        });
    }

    fn finish(&mut self, done: Done) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let metrics = &self.settings.metrics;
        metrics.in_flight.set(self.in_flight as i64);
        if let Some(t) = self.tenants.get_mut(&done.tenant) {
            t.in_flight = t.in_flight.saturating_sub(1);
        }
        let kind = if done.renewal { "renewal" } else { "new" };
        let state = self.domains.entry(done.domain.clone()).or_default();
        state.in_flight = false;
        match done.result {
            Ok(renew_at) => {
                metrics.orders.with_label_values(&["issued", kind]).inc();
                metrics.issue_seconds.observe(done.took.as_secs_f64());
                tracing::info!(domain = %done.domain, took_ms = done.took.as_millis() as u64, kind, "ACME certificate issued");
                *state = DomainState {
                    stored_renew_at: Some(renew_at),
                    ..DomainState::default()
                };
                self.failures.rcu(|f| {
                    let mut f = BTreeMap::clone(f);
                    f.remove(&done.domain);
                    f
                });
            }
            Err(e) => {
                metrics.orders.with_label_values(&["failed", kind]).inc();
                state.failures += 1;
                let wait = schedule::backoff(state.failures, &self.settings.limits);
                state.retry_at = Some(SystemTime::now() + wait);
                tracing::warn!(domain = %done.domain, error = %e, failures = state.failures, retry_in_s = wait.as_secs(), kind, "ACME order failed");
                let problem = e.to_string();
                self.failures.rcu(|f| {
                    let mut f = BTreeMap::clone(f);
                    f.insert(done.domain.clone(), problem.clone());
                    f
                });
            }
        }
        (self.settings.on_change)();
    }

    /// How long the loop may sleep: until the next retry or renewal, at
    /// most [`TICK`].
    fn next_wake(&self, now: SystemTime) -> Duration {
        let mut next = TICK;
        let mut consider = |t: SystemTime| {
            next = next.min(t.duration_since(now).unwrap_or_default());
        };
        for (domain, planned) in &self.plan.domains {
            let state = self.domains.get(domain);
            if let Some(t) = state.and_then(|s| s.ari_renew_at) {
                consider(t);
            }
            if let Some(t) = state.and_then(|s| s.ari_next) {
                consider(t);
            }
            if let Some(t) = state.and_then(|s| s.retry_at) {
                consider(t);
            } else if let Some(t) = state.and_then(|s| s.stored_renew_at).or_else(|| {
                planned
                    .renew_at
                    .as_deref()
                    .and_then(schedule::parse_rfc3339)
            }) {
                consider(t);
            }
        }
        next.max(Duration::from_millis(50))
    }
}

/// The leaf's notBefore, notAfter and renewal-information id.
fn validity(chain_pem: &str) -> Result<(SystemTime, SystemTime, Option<String>), OrderError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |detail: String| OrderError::Unreachable {
        step: "certificate",
        detail,
    };
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| bad("the CA sent no certificate".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&leaf).map_err(|e| bad(e.to_string()))?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
        renewal_info::certificate_id(&leaf),
    ))
}
