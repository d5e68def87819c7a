//! Status write-back, by the leader only: Ingress `status.loadBalancer`
//! from the `--publish-service` Service, Tenant conditions and route counts,
//! and one Kubernetes Event per distinct problem of an Ingress.
//!
//! Writes are merge patches of the status subresource, sent only when the
//! cached object differs from what we want, so our own writes coming back
//! through the watch never cause another write.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition as K8sCondition, MicroTime, ObjectMeta, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector;
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio::sync::watch;
use vestibule_config::gateway_api::{Gateway, GatewayClass, HttpRoute};
use vestibule_config::issuer::{AcmeIssuer, AcmeIssuerStatus};
use vestibule_config::tenant::{Tenant, TenantStatus};
use vestibule_config::translate::{Condition, ObjectKind, ObjectRef, ObjectStatus, Reason};

use crate::metrics::Metrics;
use crate::publish::StatusInput;
use crate::watch::Stores;
use crate::Error;

/// `reportingController` of our Events.
pub const REPORTING_CONTROLLER: &str = "vestibule.dev/operator";
/// The API server rejects longer Event notes.
const EVENT_NOTE_MAX: usize = 1024;
/// And longer condition messages.
const CONDITION_MESSAGE_MAX: usize = 32 * 1024;

pub async fn run(
    client: Client,
    stores: Stores,
    identity: String,
    mut leader: watch::Receiver<bool>,
    mut input: watch::Receiver<Option<Arc<StatusInput>>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut writer = Writer {
        client,
        identity,
        metrics,
        written: HashMap::new(),
        emitted: HashSet::new(),
        failed: false,
    };
    // Consecutive reconciles with a failed write; they are retried with
    // backoff, not left for the next unrelated change.
    let mut failures = 0u32;
    loop {
        tokio::select! {
            r = leader.wait_for(|l| *l) => if r.is_err() { return Ok(()) },
            _ = crate::stopped(&mut shutdown) => return Ok(()),
        }
        // A new term: what an earlier term wrote may have been overwritten.
        writer.written.clear();
        writer.emitted.clear();
        // Every status once per term, then what each translation touched
        // (and all of them again when it says so).
        let mut all = true;
        while *leader.borrow_and_update() {
            let current = input.borrow_and_update().clone();
            if let Some(current) = current {
                writer.failed = false;
                let only = match (&current.touched, all || failures > 0) {
                    (Some(touched), false) => Some(touched.iter().collect::<HashSet<_>>()),
                    _ => None,
                };
                writer
                    .reconcile(&stores, &current, only.as_ref(), &leader)
                    .await;
                all = writer.failed;
                failures = if writer.failed { failures + 1 } else { 0 };
            }
            let retry = async {
                match failures {
                    0 => std::future::pending().await,
                    n => tokio::time::sleep(retry_backoff(n)).await,
                }
            };
            tokio::select! {
                r = input.changed() => if r.is_err() { return Ok(()) },
                r = leader.changed() => if r.is_err() { return Ok(()) },
                _ = retry => tracing::debug!(failures, "retrying failed status writes"),
                _ = crate::stopped(&mut shutdown) => return Ok(()),
            }
        }
    }
}

/// The wait before the `n`th retry of failed writes: 250 ms doubling, at
/// most 30 s.
fn retry_backoff(n: u32) -> std::time::Duration {
    std::time::Duration::from_millis(250)
        .saturating_mul(1 << n.saturating_sub(1).min(7))
        .min(std::time::Duration::from_secs(30))
}

/// Identifies an object in `written`.
type Key = (ObjectKind, String, String);

/// One distinct problem of one Ingress (by uid, so a re-created Ingress
/// gets its Events again).
#[derive(Clone, PartialEq, Eq, Hash)]
struct ProblemKey {
    uid: String,
    reason: String,
    message: String,
}

struct Writer {
    client: Client,
    identity: String,
    metrics: Arc<Metrics>,
    /// What we last patched per object, and the resourceVersion the patch
    /// was computed against: until the cache moves past that version the
    /// same patch is not sent again.
    written: HashMap<Key, (String, Value)>,
    /// Problems already reported with an Event, while they last.
    emitted: HashSet<ProblemKey>,
    /// A write of the current reconcile failed: retry it.
    failed: bool,
}

impl Writer {
    async fn reconcile(
        &mut self,
        stores: &Stores,
        input: &StatusInput,
        only: Option<&HashSet<&ObjectRef>>,
        leader: &watch::Receiver<bool>,
    ) {
        let mut problems = HashSet::new();
        for status in &input.statuses {
            if !*leader.borrow() {
                return;
            }
            if only.is_some_and(|o| !o.contains(&status.object)) {
                continue;
            }
            match status.object.kind {
                ObjectKind::Ingress => {
                    let ns = status.object.namespace.as_deref().unwrap_or("default");
                    let Some(ingress) = stores.ingress(ns, &status.object.name) else {
                        continue;
                    };
                    self.ingress_events(&ingress, status, &mut problems).await;
                    if let Some(lb) = &input.load_balancer {
                        self.ingress_status(&ingress, status, lb).await;
                    }
                }
                ObjectKind::Tenant => {
                    if let Some(tenant) = stores.tenant(&status.object.name) {
                        self.tenant_events(&tenant, status, &mut problems).await;
                        self.tenant_status(&tenant, status).await;
                    }
                }
                ObjectKind::AcmeIssuer => {
                    if let Some(issuer) = stores.acme_issuer(&status.object.name) {
                        self.issuer_status(&issuer, status).await;
                    }
                }
                ObjectKind::GatewayClass | ObjectKind::Gateway | ObjectKind::HttpRoute => {
                    let lb = input.load_balancer.as_deref();
                    self.gateway_api_status(stores, status, lb).await;
                }
            }
        }
        // A problem that went away may come back later: report it again
        // then (known only after a pass over every status).
        if only.is_none() {
            self.emitted.retain(|p| problems.contains(p));
        }
    }

    // === Ingress ===

    async fn ingress_status(
        &mut self,
        ingress: &Ingress,
        status: &ObjectStatus,
        lb: &[IngressLoadBalancerIngress],
    ) {
        let current: Vec<IngressLoadBalancerIngress> = ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default();
        let accepted = status
            .condition(vestibule_config::translate::ConditionType::Accepted)
            .is_some_and(|c| c.status);
        let desired: Vec<IngressLoadBalancerIngress> = if accepted {
            lb.to_vec()
        } else if current.as_slice() == lb {
            // We advertised our address earlier; we no longer serve it.
            Vec::new()
        } else {
            return;
        };
        if current == desired {
            return;
        }
        let ingress_list = if desired.is_empty() {
            Value::Null
        } else {
            json!(desired)
        };
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress_list}}});
        let ns = ingress.metadata.namespace.clone().unwrap_or_default();
        let name = ingress.metadata.name.clone().unwrap_or_default();
        let key = (ObjectKind::Ingress, ns.clone(), name.clone());
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), &ns);
        if self
            .patch_status(api, key, &ingress.metadata, patch, "Ingress")
            .await
        {
            tracing::info!(ingress = %format!("{ns}/{name}"), addresses = desired.len(), "Ingress status updated");
        }
    }

    async fn ingress_events(
        &mut self,
        ingress: &Ingress,
        status: &ObjectStatus,
        problems: &mut HashSet<ProblemKey>,
    ) {
        let regarding = ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("Ingress".into()),
            namespace: ingress.metadata.namespace.clone(),
            name: ingress.metadata.name.clone(),
            uid: ingress.metadata.uid.clone(),
            resource_version: ingress.metadata.resource_version.clone(),
            ..Default::default()
        };
        self.events(regarding, status.problems(), problems).await;
    }

    /// Warning Events about a Tenant: its problems, and a renewal that
    /// fails while the old certificate still serves.
    async fn tenant_events(
        &mut self,
        tenant: &Tenant,
        status: &ObjectStatus,
        problems: &mut HashSet<ProblemKey>,
    ) {
        let regarding = ObjectReference {
            api_version: Some("vestibule.dev/v1alpha1".into()),
            kind: Some("Tenant".into()),
            name: tenant.metadata.name.clone(),
            uid: tenant.metadata.uid.clone(),
            resource_version: tenant.metadata.resource_version.clone(),
            ..Default::default()
        };
        let renewal = status
            .conditions
            .iter()
            .filter(|c| c.reason == Reason::RenewalFailing);
        self.events(regarding, status.problems().chain(renewal), problems)
            .await;
    }

    /// One Event per (object, reason, message) not emitted yet.
    async fn events<'c>(
        &mut self,
        regarding: ObjectReference,
        conditions: impl Iterator<Item = &'c Condition>,
        problems: &mut HashSet<ProblemKey>,
    ) {
        let uid = regarding.uid.clone().unwrap_or_default();
        for c in conditions {
            let key = ProblemKey {
                uid: uid.clone(),
                reason: name_of(&c.reason),
                message: c.message.clone(),
            };
            problems.insert(key.clone());
            if self.emitted.contains(&key) {
                continue;
            }
            if self.emit(&regarding, c).await {
                self.emitted.insert(key);
            }
        }
    }

    /// Creates one Warning Event about `regarding` (in its namespace, or
    /// `default` for a cluster-scoped object); false if the API refused.
    async fn emit(&mut self, regarding: &ObjectReference, c: &Condition) -> bool {
        let ns = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = regarding.name.clone().unwrap_or_default();
        let kind = regarding.kind.clone().unwrap_or_default();
        let reason = name_of(&c.reason);
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            action: Some("Translate".into()),
            reason: Some(reason.clone()),
            note: Some(truncate(&c.message, EVENT_NOTE_MAX)),
            type_: Some("Warning".into()),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.identity.clone()),
            regarding: Some(regarding.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                self.metrics.events_emitted.inc();
                tracing::info!(%kind, object = %format!("{ns}/{name}"), %reason, "Event emitted");
                true
            }
            Err(e) => {
                tracing::warn!(%kind, object = %format!("{ns}/{name}"), %reason, error = %e, "cannot emit Event; will retry");
                self.failed = true;
                false
            }
        }
    }

    // === Tenant ===

    async fn tenant_status(&mut self, tenant: &Tenant, status: &ObjectStatus) {
        let current = tenant.status.clone().unwrap_or_default();
        let mut desired = tenant_status(
            &status.conditions,
            status.routes.unwrap_or(0),
            tenant.metadata.generation,
            &current,
            Timestamp::now(),
        );
        desired.certificates = status.certificates.clone();
        if tenant.status.as_ref() == Some(&desired) {
            return;
        }
        let patch = json!({"status": desired});
        let name = tenant.metadata.name.clone().unwrap_or_default();
        let key = (ObjectKind::Tenant, String::new(), name.clone());
        let api: Api<Tenant> = Api::all(self.client.clone());
        if self
            .patch_status(api, key, &tenant.metadata, patch, "Tenant")
            .await
        {
            tracing::info!(tenant = %name, routes = desired.routes, "Tenant status updated");
        }
    }

    // === AcmeIssuer ===

    async fn issuer_status(&mut self, issuer: &AcmeIssuer, status: &ObjectStatus) {
        let current = issuer.status.clone().unwrap_or_default();
        let as_tenant = TenantStatus {
            conditions: current.conditions,
            ..TenantStatus::default()
        };
        let desired = AcmeIssuerStatus {
            conditions: tenant_status(
                &status.conditions,
                0,
                issuer.metadata.generation,
                &as_tenant,
                Timestamp::now(),
            )
            .conditions,
        };
        if issuer.status.as_ref() == Some(&desired) {
            return;
        }
        let patch = json!({"status": desired});
        let name = issuer.metadata.name.clone().unwrap_or_default();
        let key = (ObjectKind::AcmeIssuer, String::new(), name.clone());
        let api: Api<AcmeIssuer> = Api::all(self.client.clone());
        if self
            .patch_status(api, key, &issuer.metadata, patch, "AcmeIssuer")
            .await
        {
            tracing::info!(issuer = %name, "AcmeIssuer status updated");
        }
    }

    // === Gateway API ===

    async fn gateway_api_status(
        &mut self,
        stores: &Stores,
        status: &ObjectStatus,
        lb: Option<&[IngressLoadBalancerIngress]>,
    ) {
        use crate::gateway_api::{class_status, gateway_status, route_status};
        let Some(g) = &stores.gateway_api else {
            return;
        };
        let (kind, ns, name) = (
            status.object.kind,
            status.object.namespace.clone().unwrap_or_default(),
            status.object.name.clone(),
        );
        let key = (kind, ns.clone(), name.clone());
        let now = Timestamp::now();
        match kind {
            ObjectKind::GatewayClass => {
                let Some(class) = g.classes.get(&reflector::ObjectRef::new(&name)) else {
                    return;
                };
                if let Some(patch) = class_status(&class, status, now) {
                    let api = Api::<GatewayClass>::all(self.client.clone());
                    self.patch_status(api, key, &class.metadata, patch, "GatewayClass")
                        .await;
                }
            }
            ObjectKind::Gateway => {
                let within = reflector::ObjectRef::new(&name).within(&ns);
                let Some(gw) = g.gateways.iter().find_map(|s| s.get(&within)) else {
                    return;
                };
                if let Some(patch) = gateway_status(&gw, status, lb, now) {
                    let api = Api::<Gateway>::namespaced(self.client.clone(), &ns);
                    self.patch_status(api, key, &gw.metadata, patch, "Gateway")
                        .await;
                }
            }
            ObjectKind::HttpRoute => {
                let within = reflector::ObjectRef::new(&name).within(&ns);
                let Some(route) = g.routes.iter().find_map(|s| s.get(&within)) else {
                    return;
                };
                if let Some(patch) = route_status(&route, status, now) {
                    let api = Api::<HttpRoute>::namespaced(self.client.clone(), &ns);
                    self.patch_status(api, key, &route.metadata, patch, "HTTPRoute")
                        .await;
                }
            }
            _ => {}
        }
    }

    // === write memo ===

    /// Merge-patches the status subresource unless the same patch was just
    /// written for this resourceVersion; true when it was written.
    async fn patch_status<K>(
        &mut self,
        api: Api<K>,
        key: Key,
        meta: &ObjectMeta,
        patch: Value,
        kind: &str,
    ) -> bool
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        if !self.should_write(&key, meta, &patch) {
            return false;
        }
        let name = meta.name.clone().unwrap_or_default();
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.metrics.status_writes.with_label_values(&[kind]).inc();
                self.remember(key, meta, patch);
                true
            }
            Err(e) => {
                let object = match &meta.namespace {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name,
                };
                tracing::warn!(kind, object = %object, error = %e, "cannot update status; will retry");
                self.failed = true;
                false
            }
        }
    }

    fn should_write(&self, key: &Key, meta: &ObjectMeta, patch: &Value) -> bool {
        let rv = meta.resource_version.clone().unwrap_or_default();
        self.written
            .get(key)
            .is_none_or(|(at, p)| *at != rv || p != patch)
    }

    fn remember(&mut self, key: Key, meta: &ObjectMeta, patch: Value) {
        let rv = meta.resource_version.clone().unwrap_or_default();
        self.written.insert(key, (rv, patch));
    }
}

/// The Tenant status the translator's conditions call for. Conditions are
/// unique by type (the first of a type gives its status and reason, later
/// ones add to the message); `lastTransitionTime` is kept while a
/// condition's status stays the same.
pub fn tenant_status(
    conditions: &[Condition],
    routes: u32,
    generation: Option<i64>,
    current: &TenantStatus,
    now: Timestamp,
) -> TenantStatus {
    let mut out: Vec<K8sCondition> = Vec::new();
    for c in conditions {
        let type_ = name_of(&c.type_);
        if let Some(existing) = out.iter_mut().find(|o| o.type_ == type_) {
            existing.message = truncate(
                &format!("{}; {}", existing.message, c.message),
                CONDITION_MESSAGE_MAX,
            );
            continue;
        }
        let status = if c.status { "True" } else { "False" }.to_string();
        let last_transition_time = current
            .conditions
            .iter()
            .find(|o| o.type_ == type_ && o.status == status)
            .map(|o| o.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(K8sCondition {
            type_,
            status,
            reason: name_of(&c.reason),
            message: truncate(&c.message, CONDITION_MESSAGE_MAX),
            observed_generation: generation,
            last_transition_time,
        });
    }
    TenantStatus {
        conditions: out,
        routes,
        certificates: Vec::new(),
    }
}

/// The serialized name of a unit enum variant (`Reason::HostNotAllowed` ->
/// "HostNotAllowed").
fn name_of<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => format!("{v:?}"),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use vestibule_config::translate::{ConditionType, Reason};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn keeps_transition_time_while_status_is_unchanged() {
        let conditions = vec![
            Condition::new(
                ConditionType::Accepted,
                true,
                Reason::Accepted,
                "serving 2 domain(s)".into(),
            ),
            Condition::new(
                ConditionType::DomainsConflict,
                false,
                Reason::NoConflict,
                "none".into(),
            ),
        ];
        let first = tenant_status(&conditions, 3, Some(1), &TenantStatus::default(), t(100));
        assert_eq!(first.routes, 3);
        assert_eq!(first.conditions[0].type_, "Accepted");
        assert_eq!(first.conditions[0].status, "True");
        assert_eq!(first.conditions[0].observed_generation, Some(1));
        assert_eq!(first.conditions[1].reason, "NoConflict");

        // Same statuses later: identical, so nothing is written.
        let again = tenant_status(&conditions, 3, Some(1), &first, t(200));
        assert_eq!(again, first);

        // A status flip moves only that condition's time.
        let mut flipped = conditions.clone();
        flipped[1] = Condition::new(
            ConditionType::DomainsConflict,
            true,
            Reason::DomainsConflict,
            "x".into(),
        );
        let next = tenant_status(&flipped, 3, Some(2), &first, t(300));
        assert_eq!(next.conditions[0].last_transition_time, Time(t(100)));
        assert_eq!(next.conditions[1].last_transition_time, Time(t(300)));
        assert_eq!(next.conditions[1].observed_generation, Some(2));
    }

    #[test]
    fn conditions_are_unique_by_type() {
        let conditions = vec![
            Condition::new(
                ConditionType::Accepted,
                true,
                Reason::Accepted,
                "serving 1 domain(s)".into(),
            ),
            Condition::new(
                ConditionType::Accepted,
                false,
                Reason::InvalidDomain,
                "domain \"a b\" is bad".into(),
            ),
        ];
        let s = tenant_status(&conditions, 0, None, &TenantStatus::default(), t(1));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].status, "True");
        assert!(s.conditions[0].message.contains("is bad"));
    }

    #[test]
    fn retries_back_off_to_thirty_seconds() {
        let ms = |n| super::retry_backoff(n).as_millis();
        assert_eq!([ms(1), ms(2), ms(3)], [250, 500, 1000]);
        assert_eq!(ms(9), 30_000);
        assert_eq!(ms(1000), 30_000);
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        let long = "é".repeat(20);
        let t = truncate(&long, 10);
        assert!(t.len() <= 10 && t.ends_with("..."));
    }
}
