//! Config deltas: the entries one version adds, changes and removes against
//! another, so a one-host change costs one host on the wire and in the
//! gateway whatever the size of the config. Certificates are keyed by
//! content id: a delta carries a certificate only when its id is new.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::digest::{self, Kind, Sum};
use super::*;

/// The `/v2/config` media types: a whole config, or a delta (its `base`
/// and `version` in the body). The operator sends them, gateways read them.
pub const WHOLE_MEDIA_TYPE: &str = "application/vnd.vestibule.config+json";
pub const DELTA_MEDIA_TYPE: &str = "application/vnd.vestibule.config-delta+json";

/// Entries of one map set (added or changed) and removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapDelta<K: Ord, V> {
    #[serde(default = "BTreeMap::new", skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<K, V>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<K>,
}

impl<K: Ord, V> Default for MapDelta<K, V> {
    fn default() -> Self {
        MapDelta {
            set: BTreeMap::new(),
            removed: Vec::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> MapDelta<K, V> {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty()
    }

    /// What turns `old` into `new`.
    pub fn between(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Self {
        let mut delta = MapDelta::default();
        for (k, v) in new {
            if old.get(k) != Some(v) {
                delta.set.insert(k.clone(), v.clone());
            }
        }
        delta.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        delta
    }

    /// `self` then `next`, as one delta.
    fn then(&mut self, next: &MapDelta<K, V>) {
        for k in &next.removed {
            self.set.remove(k);
            if !self.removed.contains(k) {
                self.removed.push(k.clone());
            }
        }
        for (k, v) in &next.set {
            self.removed.retain(|r| r != k);
            self.set.insert(k.clone(), v.clone());
        }
    }
}

impl<K: Ord + Clone + Serialize, V: Clone + Serialize> MapDelta<K, V> {
    /// Applies to `map`, moving `sum` by each entry replaced, added or removed.
    fn apply(&self, kind: Kind, map: &mut BTreeMap<K, V>, sum: &mut Sum) {
        for k in &self.removed {
            if let Some(old) = map.remove(k) {
                sum.remove(kind, k, &old);
            }
        }
        for (k, v) in &self.set {
            if let Some(old) = map.insert(k.clone(), v.clone()) {
                sum.remove(kind, k, &old);
            }
            sum.add(kind, k, v);
        }
    }
}

/// The default backend set or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum DefaultBackendChange {
    Set(Backend),
    Removed,
}

/// What turns the config of version `base` into the config of `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigDelta {
    pub base: ConfigVersion,
    pub version: ConfigVersion,
    /// Virtual hosts added or changed, sorted by pattern.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<VirtualHost>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_hosts: Vec<HostPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<DefaultBackendChange>,
    #[serde(default, skip_serializing_if = "MapDelta::is_empty")]
    pub pools: MapDelta<PoolId, Pool>,
    #[serde(default, skip_serializing_if = "MapDelta::is_empty")]
    pub upstream_protocols: MapDelta<PoolId, UpstreamProtocol>,
    #[serde(default, skip_serializing_if = "MapDelta::is_empty")]
    pub certificates: MapDelta<CertId, Certificate>,
    #[serde(default, skip_serializing_if = "MapDelta::is_empty")]
    pub tenants: MapDelta<TenantId, Tenant>,
    #[serde(default, skip_serializing_if = "MapDelta::is_empty")]
    pub acme_http01: MapDelta<String, String>,
    #[serde(default, skip_serializing_if = "MapDelta::is_empty")]
    pub acme_tls_alpn01: MapDelta<Hostname, Certificate>,
}

/// Why a delta was not applied; the caller asks for a full config.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta from {base} does not apply to version {have}")]
    StaleBase {
        base: ConfigVersion,
        have: ConfigVersion,
    },
    #[error("state after the delta is {got}, the operator's is {expected}")]
    Mismatch {
        expected: ConfigVersion,
        got: ConfigVersion,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl ConfigDelta {
    /// Nothing changes (only the versions, if at all).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.removed_hosts.is_empty()
            && self.default_backend.is_none()
            && self.pools.is_empty()
            && self.upstream_protocols.is_empty()
            && self.certificates.is_empty()
            && self.tenants.is_empty()
            && self.acme_http01.is_empty()
            && self.acme_tls_alpn01.is_empty()
    }

    /// The delta from `old` to `new`: the hosts compared by pattern (one
    /// pass over each), the maps by key.
    pub fn between(old: &GatewayConfig, new: &GatewayConfig) -> Self {
        let before: HashMap<&HostPattern, &VirtualHost> =
            old.hosts.iter().map(|h| (&h.host, h)).collect();
        let mut hosts: Vec<VirtualHost> = new
            .hosts
            .iter()
            .filter(|h| before.get(&h.host) != Some(h))
            .cloned()
            .collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let after: std::collections::HashSet<&HostPattern> =
            new.hosts.iter().map(|h| &h.host).collect();
        let mut removed_hosts: Vec<HostPattern> = old
            .hosts
            .iter()
            .filter(|h| !after.contains(&h.host))
            .map(|h| h.host.clone())
            .collect();
        removed_hosts.sort();
        let default_backend = match (&old.default_backend, &new.default_backend) {
            (a, b) if a == b => None,
            (_, Some(b)) => Some(DefaultBackendChange::Set(b.clone())),
            (_, None) => Some(DefaultBackendChange::Removed),
        };
        ConfigDelta {
            base: old.effective_version(),
            version: new.effective_version(),
            hosts,
            removed_hosts,
            default_backend,
            pools: MapDelta::between(&old.pools, &new.pools),
            upstream_protocols: MapDelta::between(&old.upstream_protocols, &new.upstream_protocols),
            certificates: MapDelta::between(&old.certificates, &new.certificates),
            tenants: MapDelta::between(&old.tenants, &new.tenants),
            acme_http01: MapDelta::between(&old.acme_http01, &new.acme_http01),
            acme_tls_alpn01: MapDelta::between(&old.acme_tls_alpn01, &new.acme_tls_alpn01),
        }
    }

    /// `self` followed by `next` (whose base is `self.version`), as one
    /// delta from `self.base`.
    pub fn then(&mut self, next: &ConfigDelta) {
        let mut hosts: BTreeMap<HostPattern, VirtualHost> = std::mem::take(&mut self.hosts)
            .into_iter()
            .map(|h| (h.host.clone(), h))
            .collect();
        for p in &next.removed_hosts {
            hosts.remove(p);
            if !self.removed_hosts.contains(p) {
                self.removed_hosts.push(p.clone());
            }
        }
        for h in &next.hosts {
            self.removed_hosts.retain(|p| *p != h.host);
            hosts.insert(h.host.clone(), h.clone());
        }
        self.removed_hosts.sort();
        self.hosts = hosts.into_values().collect();
        if next.default_backend.is_some() {
            self.default_backend = next.default_backend.clone();
        }
        self.pools.then(&next.pools);
        self.upstream_protocols.then(&next.upstream_protocols);
        self.certificates.then(&next.certificates);
        self.tenants.then(&next.tenants);
        self.acme_http01.then(&next.acme_http01);
        self.acme_tls_alpn01.then(&next.acme_tls_alpn01);
        self.version = next.version.clone();
    }

    /// Host patterns this delta adds, changes or removes.
    pub fn touched_hosts(&self) -> impl Iterator<Item = &HostPattern> {
        self.hosts
            .iter()
            .map(|h| &h.host)
            .chain(self.removed_hosts.iter())
    }
}

impl GatewayConfig {
    /// Applies `delta` in time proportional to it: checks that it starts
    /// from this version, that the hosts it sets refer to what exists, and
    /// that the result has the version the delta states. On an error the
    /// config is unusable as a base (its version is cleared): fetch a full one.
    pub fn apply(&mut self, delta: &ConfigDelta) -> Result<(), DeltaError> {
        if self.version.is_empty() || self.version != delta.base {
            return Err(DeltaError::StaleBase {
                base: delta.base.clone(),
                have: self.version.clone(),
            });
        }
        let result = self.apply_unchecked(delta);
        if result.is_err() {
            self.version = ConfigVersion::default();
        }
        result
    }

    /// Applies `delta` whatever its versions, and states them: its base is
    /// this config's version, its version the result's. For the producer
    /// of a delta (the incremental translator), which knows it applies.
    pub fn patch(&mut self, delta: &mut ConfigDelta) {
        delta.base = self.effective_version();
        self.version = self.apply_entries(delta).version();
        delta.version = self.version.clone();
    }

    fn apply_unchecked(&mut self, delta: &ConfigDelta) -> Result<(), DeltaError> {
        self.version = self.apply_entries(delta).version();
        if self.version != delta.version {
            return Err(DeltaError::Mismatch {
                expected: delta.version.clone(),
                got: self.version.clone(),
            });
        }
        // What validate() checks of a whole config, for what the delta sets.
        for h in &delta.hosts {
            self.check_host(h)?;
        }
        if let Some(DefaultBackendChange::Set(Backend::Pool(id))) = &delta.default_backend {
            if !self.pools.contains_key(id) {
                return Err(ConfigError::Reference(format!("unknown pool {id}")).into());
            }
        }
        for (id, protocol) in &delta.upstream_protocols.set {
            self.check_upstream_protocol(id, protocol)?;
        }
        for (token, key_authorization) in &delta.acme_http01.set {
            super::check_http01(token, key_authorization)?;
        }
        for (domain, cert) in &delta.acme_tls_alpn01.set {
            super::check_tls_alpn01(domain, cert)?;
        }
        Ok(())
    }

    /// The entries of `delta` applied; the sum of the result.
    fn apply_entries(&mut self, delta: &ConfigDelta) -> Sum {
        let mut sum = Sum::of_version(&self.version).unwrap_or_else(|| digest::of_config(self));
        for p in &delta.removed_hosts {
            if let Ok(i) = self.hosts.binary_search_by(|h| h.host.cmp(p)) {
                let old = self.hosts.remove(i);
                sum.remove(Kind::Host, &old.host, &old);
            }
        }
        for h in &delta.hosts {
            match self.hosts.binary_search_by(|x| x.host.cmp(&h.host)) {
                Ok(i) => {
                    let old = std::mem::replace(&mut self.hosts[i], h.clone());
                    sum.remove(Kind::Host, &old.host, &old);
                }
                Err(i) => self.hosts.insert(i, h.clone()),
            }
            sum.add(Kind::Host, &h.host, h);
        }
        match &delta.default_backend {
            None => {}
            Some(change) => {
                if let Some(old) = self.default_backend.take() {
                    sum.remove(Kind::DefaultBackend, &(), &old);
                }
                if let DefaultBackendChange::Set(b) = change {
                    sum.add(Kind::DefaultBackend, &(), b);
                    self.default_backend = Some(b.clone());
                }
            }
        }
        delta.pools.apply(Kind::Pool, &mut self.pools, &mut sum);
        delta.upstream_protocols.apply(
            Kind::UpstreamProtocol,
            &mut self.upstream_protocols,
            &mut sum,
        );
        delta
            .certificates
            .apply(Kind::Certificate, &mut self.certificates, &mut sum);
        delta
            .tenants
            .apply(Kind::Tenant, &mut self.tenants, &mut sum);
        delta
            .acme_http01
            .apply(Kind::AcmeHttp01, &mut self.acme_http01, &mut sum);
        delta
            .acme_tls_alpn01
            .apply(Kind::AcmeTlsAlpn01, &mut self.acme_tls_alpn01, &mut sum);
        sum
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn host(name: &str, pool: &str) -> VirtualHost {
        VirtualHost {
            host: HostPattern::parse(name).unwrap(),
            tenant: None,
            tls: None,
            wildcard: WildcardDepth::OneLabel,
            plain_http: PlainHttp::default(),
            routes: vec![Route::to_pool(
                RouteName::new(name),
                PathMatch::prefix("/"),
                PoolId::new(pool),
            )],
        }
    }

    fn config(hosts: &[(&str, &str)]) -> GatewayConfig {
        let mut c = GatewayConfig::default();
        for (h, p) in hosts {
            c.hosts.push(host(h, p));
            c.pools.insert(PoolId::new(*p), Pool::Endpoints(Vec::new()));
        }
        c.hosts.sort_by(|a, b| a.host.cmp(&b.host));
        c.seal()
    }

    #[test]
    fn a_delta_turns_the_old_config_into_the_new_one_and_states_its_version() {
        let old = config(&[
            ("a.example", "p1"),
            ("b.example", "p1"),
            ("c.example", "p2"),
        ]);
        let new = config(&[
            ("a.example", "p1"),
            ("b.example", "p3"),
            ("d.example", "p3"),
        ]);
        let delta = ConfigDelta::between(&old, &new);
        let names: Vec<String> = delta.hosts.iter().map(|h| h.host.to_string()).collect();
        assert_eq!(names, ["b.example", "d.example"]);
        assert_eq!(
            delta.removed_hosts,
            [HostPattern::parse("c.example").unwrap()]
        );
        assert_eq!(delta.pools.removed, [PoolId::new("p2")]);
        let mut patched = old.clone();
        patched.apply(&delta).unwrap();
        assert_eq!(patched, new);
        // Through the wire and back.
        let wire: ConfigDelta =
            serde_json::from_str(&serde_json::to_string(&delta).unwrap()).unwrap();
        assert_eq!(wire, delta);
    }

    #[test]
    fn a_stale_or_wrong_delta_is_refused_and_the_config_is_not_a_base_any_more() {
        let old = config(&[("a.example", "p1")]);
        let new = config(&[("a.example", "p1"), ("b.example", "p1")]);
        let delta = ConfigDelta::between(&old, &new);
        let mut other = config(&[("x.example", "p1")]);
        assert!(matches!(
            other.apply(&delta),
            Err(DeltaError::StaleBase { .. })
        ));

        let mut forged = delta.clone();
        forged.version = config(&[("z.example", "p1")]).version;
        let mut patched = old.clone();
        assert!(matches!(
            patched.apply(&forged),
            Err(DeltaError::Mismatch { .. })
        ));
        assert!(patched.version.is_empty());
        assert!(matches!(
            patched.apply(&delta),
            Err(DeltaError::StaleBase { .. })
        ));

        // A host naming a pool the result lacks.
        let mut dangling = ConfigDelta::between(&old, &new);
        dangling.hosts[0].routes[0].backend = Backend::Pool(PoolId::new("nope"));
        let mut expected = old.clone();
        expected.hosts.push(dangling.hosts[0].clone());
        dangling.version = expected.content_version();
        let mut patched = old.clone();
        assert!(matches!(
            patched.apply(&dangling),
            Err(DeltaError::Invalid(_))
        ));
    }

    #[test]
    fn a_delta_gets_the_checks_of_a_whole_config() {
        let old = config(&[("a.example", "p1")]);
        let mut new = old.clone();
        new.acme_http01
            .insert("bad token/../x".to_string(), "k".to_string());
        let new = new.seal();
        let delta = ConfigDelta::between(&old, &new);
        let mut patched = old.clone();
        assert!(matches!(
            patched.apply(&delta),
            Err(DeltaError::Invalid(ConfigError::AcmeChallenge { .. }))
        ));
    }

    #[test]
    fn deltas_compose_into_the_delta_across_both() {
        let v1 = config(&[("a.example", "p1"), ("b.example", "p1")]);
        let v2 = config(&[("a.example", "p2"), ("c.example", "p1")]);
        let v3 = config(&[("b.example", "p1"), ("c.example", "p3")]);
        let mut chain = ConfigDelta::between(&v1, &v2);
        chain.then(&ConfigDelta::between(&v2, &v3));
        let mut patched = v1.clone();
        patched.apply(&chain).unwrap();
        assert_eq!(patched, v3);
        assert!(ConfigDelta::between(&v3, &v3).is_empty());
    }

    #[test]
    fn the_version_is_order_free_and_moves_with_each_entry() {
        let a = config(&[("a.example", "p1"), ("b.example", "p2")]);
        let b = config(&[("b.example", "p2"), ("a.example", "p1")]);
        assert_eq!(a.version, b.version);
        assert_eq!(a.version.as_str().len(), 32);
        assert_ne!(a.version, config(&[("a.example", "p1")]).version);
    }
}
