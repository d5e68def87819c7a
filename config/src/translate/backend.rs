//! Service references -> pools: port lookup by number or name, ready
//! endpoints from EndpointSlices, ExternalName targets, and weighted tenant
//! backends that keep their traffic split whatever the endpoint counts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::hostname::Hostname;
use crate::model::{Endpoint, Pool, PoolId};
use crate::translate::status::Reason;

/// How an object names a Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl PortRef {
    /// `None` for an empty string: no port is named, and an empty name must
    /// not stand in for one (it would look up a port called "").
    pub fn from_int_or_string(v: &IntOrString) -> Option<Self> {
        match v {
            IntOrString::Int(n) => Some(PortRef::Number(*n)),
            IntOrString::String(s) if s.is_empty() => None,
            IntOrString::String(s) => Some(match s.parse() {
                Ok(n) => PortRef::Number(n),
                Err(_) => PortRef::Name(s.clone()),
            }),
        }
    }
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

/// A reference that could not be resolved. The route stays (it answers 503)
/// so traffic never falls through to a route the user did not pick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: Reason,
    pub message: String,
}

/// Services and EndpointSlices indexed for lookup by `namespace/name`.
pub struct ServiceIndex<'a> {
    services: BTreeMap<(&'a str, &'a str), &'a Service>,
    /// (namespace, service name) -> slices, sorted by slice name.
    slices: BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl<'a> ServiceIndex<'a> {
    pub fn new(services: &'a [Arc<Service>], slices: &'a [Arc<EndpointSlice>]) -> Self {
        let mut by_name = BTreeMap::new();
        for s in services {
            if let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) {
                by_name.entry((ns.as_str(), name.as_str())).or_insert(&**s);
            }
        }
        let mut by_service: BTreeMap<_, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in slices {
            let svc = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(svc)) = (&slice.metadata.namespace, svc) {
                by_service
                    .entry((ns.as_str(), svc.as_str()))
                    .or_default()
                    .push(&**slice);
            }
        }
        for list in by_service.values_mut() {
            list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        ServiceIndex {
            services: by_name,
            slices: by_service,
        }
    }

    /// Resolves `namespace/name:port` to a pool id and its targets. On error
    /// the id is still returned so the caller can install an empty pool.
    pub fn resolve(
        &self,
        namespace: &str,
        name: &str,
        port: &PortRef,
    ) -> (PoolId, Result<Pool, Unresolved>) {
        let unresolved_id = PoolId::new(format!("{namespace}/{name}:{port}"));
        let Some(service) = self.services.get(&(namespace, name)) else {
            return (
                unresolved_id,
                Err(Unresolved {
                    reason: Reason::ServiceNotFound,
                    message: format!("Service {namespace}/{name} not found"),
                }),
            );
        };
        let no_spec = Default::default();
        let spec: &ServiceSpec = service.spec.as_ref().unwrap_or(&no_spec);
        let ports = spec.ports.as_deref().unwrap_or_default();
        let service_port = ports.iter().find(|p| match port {
            PortRef::Number(n) => p.port == *n,
            PortRef::Name(s) => p.name.as_deref() == Some(s.as_str()),
        });
        let is_external = spec.type_.as_deref() == Some("ExternalName");

        if is_external {
            let number = match (service_port, port) {
                (Some(p), _) => Some(p.port),
                // ExternalName Services often list no ports; a number is enough.
                (None, PortRef::Number(n)) => Some(*n),
                (None, PortRef::Name(_)) => None,
            };
            let Some(number) = number
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
            else {
                return (unresolved_id, Err(port_not_found(namespace, name, port)));
            };
            let id = PoolId::new(format!("{namespace}/{name}:{number}"));
            let target = spec.external_name.as_deref().unwrap_or("");
            return match Hostname::parse(target) {
                Ok(host) => (id, Ok(Pool::ExternalName { host, port: number })),
                Err(e) => (
                    id,
                    Err(Unresolved {
                        reason: Reason::InvalidExternalName,
                        message: format!(
                            "Service {namespace}/{name}: spec.externalName {target:?}: {e}"
                        ),
                    }),
                ),
            };
        }

        let Some(service_port) = service_port else {
            return (unresolved_id, Err(port_not_found(namespace, name, port)));
        };
        let id = PoolId::new(format!("{namespace}/{name}:{}", service_port.port));
        let endpoints = self
            .ready_addresses(namespace, name, service_port)
            .into_iter()
            .map(|address| Endpoint { address, weight: 1 })
            .collect();
        (id, Ok(Pool::Endpoints(endpoints)))
    }

    /// Ready endpoint addresses of a Service port, across all its slices,
    /// deduplicated and sorted. The slice port is matched by the Service
    /// port's name, as kube-proxy does.
    fn ready_addresses(
        &self,
        namespace: &str,
        name: &str,
        service_port: &ServicePort,
    ) -> BTreeSet<SocketAddr> {
        let mut out = BTreeSet::new();
        let want_name = service_port.name.as_deref().unwrap_or("");
        let slices = self
            .slices
            .get(&(namespace, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let slice_port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == want_name)
                .and_then(|p| p.port)
                .or_else(|| match &service_port.target_port {
                    // Hand-written slices may list no ports; a numeric
                    // targetPort is then the only sensible answer.
                    Some(IntOrString::Int(n)) if slice.ports.as_ref().is_none_or(Vec::is_empty) => {
                        Some(*n)
                    }
                    _ => None,
                });
            let Some(port) = slice_port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for ep in &slice.endpoints {
                // `ready` unset means unknown, which consumers treat as ready.
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                if let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) {
                    out.insert(SocketAddr::new(ip, port));
                }
            }
        }
        out
    }
}

fn port_not_found(namespace: &str, name: &str, port: &PortRef) -> Unresolved {
    Unresolved {
        reason: Reason::ServicePortNotFound,
        message: format!("Service {namespace}/{name} has no port {port}"),
    }
}

/// Merges weighted endpoint groups into one pool so that each group gets its
/// share of requests whatever its endpoint count: a group of weight `w` with
/// `n` endpoints gives each endpoint `w * L / n` (L = lcm of the counts),
/// then all weights are divided by their gcd. Weights stay small because the
/// balancer expands them into a table.
pub fn merge_weighted(groups: &[(u32, Vec<SocketAddr>)]) -> Vec<Endpoint> {
    const MAX_TOTAL: u64 = 10_000;
    let live: Vec<_> = groups
        .iter()
        .filter(|(w, eps)| *w > 0 && !eps.is_empty())
        .collect();
    let lcm_all = live.iter().fold(1u64, |acc, (_, eps)| {
        lcm(acc, eps.len() as u64).min(1 << 20)
    });
    let mut weighted: BTreeMap<SocketAddr, u64> = BTreeMap::new();
    for (w, eps) in &live {
        let each = (u64::from(*w) * lcm_all / eps.len() as u64).max(1);
        for addr in eps {
            *weighted.entry(*addr).or_default() += each;
        }
    }
    let g = weighted.values().fold(0, |acc, w| gcd(acc, *w)).max(1);
    let total: u64 = weighted.values().map(|w| w / g).sum();
    // Keep the table bounded; rounding then costs at most a small fraction.
    let scale = if total > MAX_TOTAL {
        total.div_ceil(MAX_TOTAL)
    } else {
        1
    };
    weighted
        .into_iter()
        .map(|(address, w)| Endpoint {
            address,
            weight: u32::try_from((w / g / scale).max(1)).unwrap_or(u32::MAX),
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

// === impl Translator: this phase ===

use super::*;

impl<'a> Translator<'a> {
    pub(super) fn install_pool(
        &mut self,
        id: PoolId,
        pool: Result<Pool, Unresolved>,
        conditions: &mut Vec<Condition>,
    ) -> Backend {
        let pool = pool.unwrap_or_else(|u| {
            let c = Condition::new(ConditionType::ResolvedRefs, false, u.reason, u.message);
            if !conditions.contains(&c) {
                conditions.push(c);
            }
            Pool::Endpoints(Vec::new())
        });
        self.pools.entry(id.clone()).or_insert(pool);
        Backend::Pool(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8, base: u8) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, base, i], 80)))
            .collect()
    }

    #[test]
    fn weighted_split_holds_across_endpoint_counts() {
        let eps = merge_weighted(&[(90, addrs(3, 1)), (10, addrs(1, 2))]);
        let share = |base: u8| -> u32 {
            eps.iter()
                .filter(|e| matches!(e.address.ip(), IpAddr::V4(v) if v.octets()[2] == base))
                .map(|e| e.weight)
                .sum()
        };
        assert_eq!(share(1) * 10, share(2) * 90);
        assert_eq!(eps.iter().map(|e| e.weight).sum::<u32>(), 10);
    }

    #[test]
    fn empty_or_zero_weight_groups_get_nothing() {
        let eps = merge_weighted(&[(0, addrs(2, 1)), (5, vec![]), (1, addrs(1, 3))]);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].weight, 1);
    }

    #[test]
    fn table_stays_bounded() {
        let eps = merge_weighted(&[(1_000_000, addrs(7, 1)), (1, addrs(11, 2))]);
        let total: u32 = eps.iter().map(|e| e.weight).sum();
        assert!(total <= 10_000 + eps.len() as u32, "{total}");
    }
}
