//! The order a pool's endpoints are picked in: weighted round-robin over a
//! table built when the endpoints change, so a pick is one index and a
//! walk over ready flags (no hashing, no allocation, whatever the number
//! of pools or endpoints).

use std::sync::Arc;

use super::Endpoint;

/// The most slots a ring has (plus one per endpoint, after rounding).
const MAX_SLOTS: usize = 65_536;

/// A pool's endpoints in selection order.
#[derive(Default)]
pub(super) struct Ring {
    /// Each endpoint once (the walk past one that cannot take the request).
    endpoints: Box<[Arc<Endpoint>]>,
    /// Indices into `endpoints`, each `weight` times (weights divided by
    /// their greatest common divisor): pick `n` starts at slot `n`.
    slots: Box<[u32]>,
}

impl Ring {
    /// `endpoints` with their weights (0 counts as 1).
    pub(super) fn new(endpoints: Vec<(Arc<Endpoint>, usize)>) -> Ring {
        let gcd = endpoints
            .iter()
            .map(|(_, w)| (*w).max(1))
            .reduce(gcd)
            .unwrap_or(1);
        let total: usize = endpoints.iter().map(|(_, w)| (*w).max(1) / gcd).sum();
        // Bounded whatever weights a config carries (the translator keeps
        // them under 10,000 in all): scaled down, each endpoint keeps a slot.
        let scale = total.div_ceil(MAX_SLOTS).max(1);
        let mut slots = Vec::with_capacity(total.min(MAX_SLOTS + endpoints.len()));
        for (i, (_, w)) in endpoints.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            slots.extend(std::iter::repeat_n(i, ((*w).max(1) / gcd / scale).max(1)));
        }
        Ring {
            endpoints: endpoints.into_iter().map(|(ep, _)| ep).collect(),
            slots: slots.into(),
        }
    }

    pub(super) fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    #[cfg(test)]
    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Pick `n`: the endpoint of slot `n` if `accept` takes it, else the
    /// first after it (in endpoint order) that `accept` takes.
    #[inline]
    pub(super) fn pick(
        &self,
        n: usize,
        accept: impl Fn(&Endpoint) -> bool,
    ) -> Option<&Arc<Endpoint>> {
        let len = self.endpoints.len();
        if self.slots.is_empty() || len == 0 {
            return None;
        }
        let first = self.slots[n % self.slots.len()] as usize;
        (0..len)
            .map(|k| &self.endpoints[(first + k) % len])
            .find(|ep| accept(ep))
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
