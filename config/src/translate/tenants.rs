//! Tenant domain ownership: which Tenant owns a host, in age order, so the
//! older of two Tenants keeps a contested domain and Ingresses outside a
//! Tenant's namespaces cannot route its hosts.

use std::collections::{BTreeSet, HashMap};

use crate::hostname::HostPattern;
use crate::model::TenantId;
use crate::tenant::Tenant;

/// A Tenant that passed validation, with the domains it keeps.
pub struct AcceptedTenant<'a> {
    pub id: TenantId,
    pub object: &'a Tenant,
    pub domains: Vec<HostPattern>,
    pub namespaces: BTreeSet<&'a str>,
}

/// Domain -> owning tenant (index into the accepted list).
#[derive(Default)]
pub struct Ownership {
    exact: HashMap<String, usize>,
    /// `*.suffix` domains by suffix.
    wildcard: HashMap<String, usize>,
    /// Parents of exact domains, so a later `*.parent` claim is seen to overlap.
    exact_parents: HashMap<String, usize>,
}

impl Ownership {
    /// The tenant that owns every host `pattern` can match, if any.
    pub fn owner(&self, pattern: &HostPattern) -> Option<usize> {
        match pattern {
            HostPattern::Exact(h) => self
                .exact
                .get(h.as_str())
                .or_else(|| h.parent().and_then(|p| self.wildcard.get(p)))
                .copied(),
            HostPattern::Wildcard(s) => self.wildcard.get(s.as_str()).copied(),
            HostPattern::Any => None,
        }
    }

    /// The tenant whose domains overlap `pattern` (same domain, or one
    /// matching the other), if any.
    pub fn overlapping(&self, pattern: &HostPattern) -> Option<usize> {
        self.owner(pattern).or_else(|| match pattern {
            HostPattern::Wildcard(s) => self.exact_parents.get(s.as_str()).copied(),
            _ => None,
        })
    }

    pub fn claim(&mut self, pattern: &HostPattern, tenant: usize) {
        match pattern {
            HostPattern::Exact(h) => {
                self.exact.insert(h.as_str().to_string(), tenant);
                if let Some(p) = h.parent() {
                    self.exact_parents.entry(p.to_string()).or_insert(tenant);
                }
            }
            HostPattern::Wildcard(s) => {
                self.wildcard.insert(s.as_str().to_string(), tenant);
            }
            HostPattern::Any => {}
        }
    }
}
