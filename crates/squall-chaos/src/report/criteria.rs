//! Success criteria and their verdicts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checker::Findings;

/// Success criteria of a scenario. Unset criteria are not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Criteria {
    /// Most confirmed messages allowed to be lost.
    pub max_lost: Option<u64>,
    /// Most deliveries of already-acked messages (what an idempotent consumer must absorb).
    pub max_duplicates: Option<u64>,
    /// Require per-key order (no reorders).
    pub per_key_order: bool,
    /// No corruption may reach a consumer undetected — and none may be delivered at all.
    pub max_corrupt: Option<u64>,
    /// No two consumers may hold one message at once.
    pub no_lease_anomalies: bool,
    /// Longest recovery after any healed fault window (windows another one took over from are
    /// measured at the end of the chain).
    #[serde(with = "humantime_serde")]
    pub max_recovery: Option<Duration>,
    /// End-to-end p99 latency limit.
    #[serde(with = "humantime_serde")]
    pub p99_latency: Option<Duration>,
    /// Fewest messages that must be confirmed (a run that confirms nothing proves nothing).
    pub min_confirmed: Option<u64>,
    /// Every message sent is accounted for: confirmed, or given up by its producer with an error.
    pub all_accounted: bool,
    /// Most messages the producers may give up on (after their retries).
    pub max_failed: Option<u64>,
    /// Most dead-letter misses (a rejected message, or one left unsettled at its last allowed
    /// delivery, not in the dead-letter queue).
    pub max_dlq_missing: Option<u64>,
    /// Most extra copies in the dead-letter queue.
    pub max_dlq_duplicates: Option<u64>,
    /// Per-phase criteria (`[[criteria.phase]]`).
    pub phase: Vec<PhaseCriteria>,
}

/// Criteria on the messages sent in one phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseCriteria {
    /// The phase.
    pub name: String,
    /// Least fraction (0 to 1) of the phase's messages delivered to every group.
    #[serde(default)]
    pub min_delivered: Option<f64>,
    /// Most fraction (0 to 1) of the phase's messages delivered (e.g. during a partition).
    #[serde(default)]
    pub max_delivered: Option<f64>,
    /// Fewest first deliveries that must happen during the phase, whenever their messages were
    /// sent (e.g. consumers keep draining a backlog while the producers are cut off). Scaled
    /// with the rest of a `--quick` run.
    #[serde(default)]
    pub min_received: Option<u64>,
    /// p99 end-to-end latency limit of the phase's messages.
    #[serde(default, with = "humantime_serde")]
    pub p99_latency: Option<Duration>,
}

/// One criterion's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Criterion.
    pub name: String,
    /// Limit, as text.
    pub limit: String,
    /// Observed, as text.
    pub observed: String,
    /// Met.
    pub pass: bool,
}

fn verdict(name: impl Into<String>, limit: String, observed: String, pass: bool) -> Verdict {
    Verdict {
        name: name.into(),
        limit,
        observed,
        pass,
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

impl Criteria {
    /// Judges `f`.
    pub fn judge(&self, f: &Findings) -> Vec<Verdict> {
        let mut out = Vec::new();
        let mut num = |name: &str, limit: Option<u64>, observed: u64| {
            if let Some(l) = limit {
                out.push(verdict(
                    name,
                    format!("≤ {l}"),
                    observed.to_string(),
                    observed <= l,
                ));
            }
        };
        num("lost (confirmed, never delivered)", self.max_lost, f.lost);
        num(
            "duplicates (after ack, or one delivery twice)",
            self.max_duplicates,
            f.duplicates,
        );
        num("corrupt", self.max_corrupt, f.corrupt);
        num("failed at the producer", self.max_failed, f.failed);
        num("dead-letter misses", self.max_dlq_missing, f.dlq_missing);
        num(
            "dead-letter duplicates",
            self.max_dlq_duplicates,
            f.dlq_duplicates,
        );
        if self.per_key_order {
            out.push(verdict(
                "per-key order",
                "0 reorders".into(),
                f.reorders.to_string(),
                f.reorders == 0,
            ));
        }
        if self.no_lease_anomalies {
            let n = f.two_holders + f.redelivered_after_ack;
            out.push(verdict(
                "lease anomalies",
                "0".into(),
                n.to_string(),
                n == 0,
            ));
        }
        if self.all_accounted {
            out.push(verdict(
                "accounted (confirmed or failed)",
                "0 unaccounted".into(),
                format!(
                    "{} unaccounted ({} failed, {} of them delivered anyway)",
                    f.unaccounted, f.failed, f.unconfirmed_delivered
                ),
                f.unaccounted == 0,
            ));
        }
        if let Some(min) = self.min_confirmed {
            out.push(verdict(
                "confirmed",
                format!("≥ {min}"),
                f.confirmed.to_string(),
                f.confirmed >= min,
            ));
        }
        if let Some(max) = self.max_recovery {
            out.push(recovery_verdict(f, max));
        }
        if let Some(max) = self.p99_latency {
            let p99 = f.end_to_end.p99_ms;
            out.push(verdict(
                "p99 end-to-end latency",
                format!("≤ {} ms", max.as_millis()),
                format!("{p99:.1} ms"),
                p99 <= max.as_secs_f64() * 1000.0,
            ));
        }
        for c in &self.phase {
            let Some(p) = f.phases.iter().find(|p| p.name == c.name) else {
                out.push(verdict(
                    format!("phase {}", c.name),
                    "exists".into(),
                    "no such phase in the run".into(),
                    false,
                ));
                continue;
            };
            let observed = format!("{} ({}/{})", pct(p.delivered_fraction), p.delivered, p.sent);
            if let Some(min) = c.min_delivered {
                out.push(verdict(
                    format!("phase {}: delivered", c.name),
                    format!("≥ {}", pct(min)),
                    observed.clone(),
                    p.delivered_fraction >= min,
                ));
            }
            if let Some(max) = c.max_delivered {
                out.push(verdict(
                    format!("phase {}: delivered", c.name),
                    format!("≤ {}", pct(max)),
                    observed.clone(),
                    p.delivered_fraction <= max,
                ));
            }
            if let Some(min) = c.min_received {
                out.push(verdict(
                    format!("phase {}: received during it", c.name),
                    format!("≥ {min}"),
                    p.received.to_string(),
                    p.received >= min,
                ));
            }
            if let Some(max) = c.p99_latency {
                out.push(verdict(
                    format!("phase {}: p99 latency", c.name),
                    format!("≤ {} ms", max.as_millis()),
                    format!("{:.1} ms", p.p99_ms),
                    p.p99_ms <= max.as_secs_f64() * 1000.0,
                ));
            }
        }
        out
    }
}

/// The worst recovery over the judged windows.
fn recovery_verdict(f: &Findings, max: Duration) -> Verdict {
    let judged: Vec<_> = f.recoveries.iter().filter(|r| r.judged()).collect();
    let never = judged.iter().find(|r| r.recovery.is_none());
    let worst = judged
        .iter()
        .filter_map(|r| r.recovery.map(|d| (d, r)))
        .max_by_key(|x| x.0);
    let (observed, pass) = match (never, worst) {
        (Some(r), _) => (format!("never recovered after {}", r.fault), false),
        (None, Some((d, r))) => (
            format!("{:.1}s after {}", d.as_secs_f64(), r.fault),
            d <= max,
        ),
        (None, None) => ("no fault healed".to_string(), true),
    };
    verdict(
        "recovery time",
        format!("≤ {:.1}s", max.as_secs_f64()),
        observed,
        pass,
    )
}
