//! The issuer's metrics, registered in the process's registry. Labels are
//! bounded: results and issuer names, never domains.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    /// Orders finished, by `result` (issued, failed) and `kind` (new, renewal).
    pub orders: IntCounterVec,
    /// Seconds from an order's start to its certificate.
    pub issue_seconds: Histogram,
    /// Orders under way.
    pub in_flight: IntGauge,
    /// Issued certificates that expire within 7 days.
    pub expiring_7d: IntGauge,
    /// Handshakes that asked for a domain's first certificate.
    pub on_demand: IntCounterVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            orders: IntCounterVec::new(
                Opts::new("vestibule_acme_orders_total", "ACME orders finished, by result and kind"),
                &["result", "kind"],
            )?,
            issue_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "vestibule_acme_issue_seconds",
                    "Time from the start of an ACME order to its certificate",
                )
                .buckets(vec![0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            )?,
            in_flight: IntGauge::new("vestibule_acme_orders_in_flight", "ACME orders under way")?,
            expiring_7d: IntGauge::new(
                "vestibule_acme_certificates_expiring_7d",
                "ACME certificates that expire within 7 days",
            )?,
            on_demand: IntCounterVec::new(
                Opts::new(
                    "vestibule_acme_on_demand_total",
                    "Handshakes for a domain without its certificate yet, by outcome (ordered, waiting, not_planned)",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.orders.clone()))?;
        registry.register(Box::new(m.issue_seconds.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.expiring_7d.clone()))?;
        registry.register(Box::new(m.on_demand.clone()))?;
        Ok(m)
    }
}
