//! The Gateway API objects' statuses as the leader writes them:
//! GatewayClass and Gateway conditions, each listener's conditions and
//! attached routes, and an HTTPRoute's `parents` entries for our Gateways
//! (entries of other controllers are kept as they are). Pure: each
//! function gives the status patch, or `None` when the object already
//! says it.

use k8s_openapi::api::networking::v1::IngressLoadBalancerIngress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as K8sCondition;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use vestibule_config::gateway_api::{Gateway, GatewayClass, HttpRoute};
use vestibule_config::tenant::TenantStatus;
use vestibule_config::translate::{Condition, ObjectStatus, GATEWAY_CONTROLLER};

use crate::status::tenant_status;

const GROUP: &str = "gateway.networking.k8s.io";

/// Kubernetes conditions for `translated`, keeping the transition time of
/// those whose status did not change.
fn conditions(
    translated: &[Condition],
    generation: Option<i64>,
    current: &[K8sCondition],
    now: Timestamp,
) -> Vec<K8sCondition> {
    let current = TenantStatus {
        conditions: current.to_vec(),
        ..TenantStatus::default()
    };
    tenant_status(translated, 0, generation, &current, now).conditions
}

/// `Some(patch)` unless `current` already equals `desired`.
fn changed(current: Value, desired: Value) -> Option<Value> {
    (current != desired).then(|| json!({ "status": desired }))
}

pub fn class_status(class: &GatewayClass, st: &ObjectStatus, now: Timestamp) -> Option<Value> {
    let current = class
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let desired = conditions(&st.conditions, class.metadata.generation, &current, now);
    changed(
        json!({ "conditions": current }),
        json!({ "conditions": desired }),
    )
}

/// `lb`: the addresses of the gateway's LoadBalancer Service
/// (`--publish-service`), when known; they become `status.addresses`.
pub fn gateway_status(
    gw: &Gateway,
    st: &ObjectStatus,
    lb: Option<&[IngressLoadBalancerIngress]>,
    now: Timestamp,
) -> Option<Value> {
    let generation = gw.metadata.generation;
    let status = gw.status.clone().unwrap_or_default();
    let current_conditions = status.conditions.clone().unwrap_or_default();
    let current_listeners = status.listeners.clone().unwrap_or_default();
    let listeners: Vec<Value> = st
        .listeners
        .iter()
        .map(|l| {
            let current = current_listeners
                .iter()
                .find(|c| c.name == l.name)
                .map(|c| c.conditions.clone())
                .unwrap_or_default();
            json!({
                "name": l.name,
                "attachedRoutes": l.attached_routes,
                "supportedKinds": [{"group": GROUP, "kind": "HTTPRoute"}],
                "conditions": conditions(&l.conditions, generation, &current, now),
            })
        })
        .collect();
    let mut desired = json!({
        "conditions": conditions(&st.conditions, generation, &current_conditions, now),
        "listeners": listeners,
    });
    let mut current = json!({
        "conditions": current_conditions,
        "listeners": current_listeners,
    });
    if let Some(lb) = lb {
        let addresses: Vec<Value> = lb
            .iter()
            .filter_map(|a| match (&a.ip, &a.hostname) {
                (Some(ip), _) => Some(json!({"type": "IPAddress", "value": ip})),
                (None, Some(h)) => Some(json!({"type": "Hostname", "value": h})),
                (None, None) => None,
            })
            .collect();
        desired["addresses"] = json!(addresses);
        current["addresses"] = serde_json::to_value(status.addresses.clone().unwrap_or_default())
            .unwrap_or(Value::Null);
    }
    changed(current, desired)
}

pub fn route_status(route: &HttpRoute, st: &ObjectStatus, now: Timestamp) -> Option<Value> {
    let generation = route.metadata.generation;
    let current = route
        .status
        .as_ref()
        .map(|s| s.parents.clone())
        .unwrap_or_default();
    // Other controllers' entries stay; ours are replaced.
    let mut parents: Vec<Value> = current
        .iter()
        .filter(|p| p.controller_name != GATEWAY_CONTROLLER)
        .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
        .collect();
    for p in &st.parents {
        let (namespace, name) = p.gateway.split_once('/').unwrap_or(("", &p.gateway));
        let mut parent_ref =
            json!({"group": GROUP, "kind": "Gateway", "namespace": namespace, "name": name});
        if let Some(s) = &p.section_name {
            parent_ref["sectionName"] = json!(s);
        }
        if let Some(port) = p.port {
            parent_ref["port"] = json!(port);
        }
        let previous = current
            .iter()
            .find(|c| {
                c.controller_name == GATEWAY_CONTROLLER
                    && c.parent_ref.name == name
                    && c.parent_ref.namespace.as_deref().unwrap_or(namespace) == namespace
                    && c.parent_ref.section_name == p.section_name
                    && c.parent_ref.port == p.port
            })
            .map(|c| c.conditions.clone())
            .unwrap_or_default();
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": GATEWAY_CONTROLLER,
            "conditions": conditions(&p.conditions, generation, &previous, now),
        }));
    }
    let current = serde_json::to_value(&current).unwrap_or(Value::Null);
    changed(json!({ "parents": current }), json!({ "parents": parents }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vestibule_config::translate::status::ListenerStatus;
    use vestibule_config::translate::{ConditionType, ObjectKind, ObjectRef, Reason};

    fn translated() -> ObjectStatus {
        let accepted = Condition::new(ConditionType::Accepted, true, Reason::Accepted, "ok".into());
        let mut st = ObjectStatus::new(
            ObjectRef {
                kind: ObjectKind::Gateway,
                namespace: Some("shop".into()),
                name: "edge".into(),
            },
            vec![accepted.clone()],
        );
        st.listeners = vec![ListenerStatus {
            name: "http".into(),
            attached_routes: 2,
            conditions: vec![accepted],
        }];
        st
    }

    #[test]
    fn gateway_status_has_addresses_and_is_patched_only_when_it_changes() {
        let mut gw: Gateway = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "shop", "generation": 4},
            "spec": {"gatewayClassName": "vestibule", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}
        }))
        .unwrap();
        let lb = [
            IngressLoadBalancerIngress {
                ip: Some("203.0.113.7".into()),
                ..Default::default()
            },
            IngressLoadBalancerIngress {
                hostname: Some("lb.example.net".into()),
                ..Default::default()
            },
        ];
        let st = translated();
        let now = Timestamp::now();
        let patch = gateway_status(&gw, &st, Some(&lb), now).unwrap();
        let status = &patch["status"];
        assert_eq!(
            status["addresses"][0],
            json!({"type": "IPAddress", "value": "203.0.113.7"})
        );
        assert_eq!(
            status["addresses"][1],
            json!({"type": "Hostname", "value": "lb.example.net"})
        );
        assert_eq!(status["listeners"][0]["attachedRoutes"], 2);
        assert_eq!(status["conditions"][0]["observedGeneration"], 4);
        // Once the object says it, there is nothing to write, even later.
        gw.status = Some(serde_json::from_value(status.clone()).unwrap());
        let later = now + std::time::Duration::from_secs(60);
        assert_eq!(gateway_status(&gw, &st, Some(&lb), later), None);
        // A listener's route count changes: a patch again.
        let mut more = translated();
        more.listeners[0].attached_routes = 3;
        assert!(gateway_status(&gw, &more, Some(&lb), later).is_some());
    }
}
