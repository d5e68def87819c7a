//! `limit-rps`, `limit-rpm`, `limit-burst-multiplier`, `limit-connections`
//! and `limit-whitelist`: per client address limits on a route.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::values::cidrs;
use crate::model::{ClientConcurrency, ClientRate, RatePeriod};

/// ingress-nginx's `limit-burst-multiplier` default.
const BURST_MULTIPLIER: u32 = 5;

/// The per-client limits the annotations ask for.
pub(super) fn read(
    known: &BTreeMap<&str, &str>,
    invalid: &mut dyn FnMut(&str, &str, &str),
) -> (Option<ClientRate>, Option<ClientConcurrency>) {
    let mut number = |name: &str| -> Option<u32> {
        let v = known.get(name)?;
        let n = v.trim().parse::<u32>().ok().filter(|n| *n > 0);
        if n.is_none() {
            invalid(name, v, "a whole number above 0; no limit is set");
        }
        n
    };
    let rps = number("limit-rps");
    let rpm = number("limit-rpm");
    let multiplier = number("limit-burst-multiplier").unwrap_or(BURST_MULTIPLIER);
    let connections = number("limit-connections");
    let exempt: Vec<IpNet> = match known.get("limit-whitelist") {
        None => Vec::new(),
        Some(v) => {
            cidrs(v).unwrap_or_else(|| {
                // Unreadable: no one is exempt (the safe side of a limit).
                invalid(
                    "limit-whitelist",
                    v,
                    "a comma-separated list of CIDRs; no one is exempt",
                );
                Vec::new()
            })
        }
    };
    // ingress-nginx applies limit-rps when both are set.
    let rate = match (rps, rpm) {
        (Some(n), _) => Some((n, RatePeriod::Second)),
        (None, Some(n)) => Some((n, RatePeriod::Minute)),
        (None, None) => None,
    }
    .map(|(requests, per)| ClientRate {
        requests,
        per,
        burst: requests.saturating_mul(multiplier),
        exempt: exempt.clone(),
    });
    let concurrency = connections.map(|max| ClientConcurrency { max, exempt });
    (rate, concurrency)
}
