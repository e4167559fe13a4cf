//! The report of a run: verdict per criterion, terminal summary, JSON, and a self-contained HTML
//! timeline (throughput, latency, lag, errors over time, fault windows shaded).
//!
//! Every report starts with the seed and the exact command that replays the run.

use std::fmt::Write as _;
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
    /// Longest recovery after any healed fault.
    #[serde(with = "humantime_serde")]
    pub max_recovery: Option<Duration>,
    /// End-to-end p99 latency limit.
    #[serde(with = "humantime_serde")]
    pub p99_latency: Option<Duration>,
    /// Fewest messages that must be confirmed (a run that confirms nothing proves nothing).
    pub min_confirmed: Option<u64>,
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

impl Criteria {
    /// Judges `f`.
    pub fn judge(&self, f: &Findings) -> Vec<Verdict> {
        let mut out = Vec::new();
        let mut num = |name: &str, limit: Option<u64>, observed: u64| {
            if let Some(l) = limit {
                out.push(Verdict {
                    name: name.into(),
                    limit: format!("≤ {l}"),
                    observed: observed.to_string(),
                    pass: observed <= l,
                });
            }
        };
        num("lost (confirmed, never delivered)", self.max_lost, f.lost);
        num(
            "duplicates (delivered after ack)",
            self.max_duplicates,
            f.duplicates,
        );
        num("corrupt", self.max_corrupt, f.corrupt);
        if self.per_key_order {
            out.push(Verdict {
                name: "per-key order".into(),
                limit: "0 reorders".into(),
                observed: f.reorders.to_string(),
                pass: f.reorders == 0,
            });
        }
        if self.no_lease_anomalies {
            let n = f.two_holders + f.redelivered_after_ack;
            out.push(Verdict {
                name: "lease anomalies".into(),
                limit: "0".into(),
                observed: n.to_string(),
                pass: n == 0,
            });
        }
        if let Some(min) = self.min_confirmed {
            out.push(Verdict {
                name: "confirmed".into(),
                limit: format!("≥ {min}"),
                observed: f.confirmed.to_string(),
                pass: f.confirmed >= min,
            });
        }
        if let Some(max) = self.max_recovery {
            let worst = f
                .recoveries
                .iter()
                .map(|r| r.recovery)
                .max_by_key(|r| r.map_or(Duration::MAX, |d| d));
            let (observed, pass) = match worst {
                None => ("no fault healed".to_string(), true),
                Some(None) => ("never recovered".to_string(), false),
                Some(Some(d)) => (format!("{:.1}s", d.as_secs_f64()), d <= max),
            };
            out.push(Verdict {
                name: "recovery time".into(),
                limit: format!("≤ {:.1}s", max.as_secs_f64()),
                observed,
                pass,
            });
        }
        if let Some(max) = self.p99_latency {
            let p99 = f.end_to_end.p99_ms;
            out.push(Verdict {
                name: "p99 end-to-end latency".into(),
                limit: format!("≤ {} ms", max.as_millis()),
                observed: format!("{p99:.1} ms"),
                pass: p99 <= max.as_secs_f64() * 1000.0,
            });
        }
        out
    }
}

/// A fault window for the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Label.
    pub name: String,
    /// Seconds since the start.
    pub from_s: f64,
    /// Seconds since the start (end of run if never healed).
    pub to_s: f64,
}

/// Everything about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The seed of every random choice.
    pub seed: u64,
    /// The command that replays this run.
    pub replay: String,
    /// What was tested.
    pub target: String,
    /// Run length.
    pub duration_s: f64,
    /// Overall verdict.
    pub pass: bool,
    /// Per criterion.
    pub verdicts: Vec<Verdict>,
    /// Fault windows.
    pub faults: Vec<Window>,
    /// Phase windows.
    pub phases: Vec<Window>,
    /// The checker's counts.
    pub findings: Findings,
}

impl Report {
    /// Exit code for CI: 0 when every criterion passed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.pass { 0 } else { 1 }
    }

    /// The terminal summary.
    pub fn summary(&self) -> String {
        let f = &self.findings;
        let mut s = String::new();
        let _ = writeln!(s, "seed {}  replay: {}", self.seed, self.replay);
        let _ = writeln!(
            s,
            "scenario {} against {} ({:.1}s)",
            self.scenario, self.target, self.duration_s
        );
        let _ = writeln!(
            s,
            "sent {}  confirmed {}  failed {}  lost {}  duplicates {} (after ack {}, stored twice {})  redeliveries {}  reorders {}  corrupt {}  two holders {}",
            f.sent,
            f.confirmed,
            f.failed,
            f.lost,
            f.duplicates,
            f.redelivered_after_ack,
            f.stored_twice,
            f.redeliveries,
            f.reorders,
            f.corrupt,
            f.two_holders
        );
        let _ = writeln!(
            s,
            "latency end-to-end p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms;  publish p50 {:.1} ms  p99 {:.1} ms",
            f.end_to_end.p50_ms,
            f.end_to_end.p99_ms,
            f.end_to_end.max_ms,
            f.publish.p50_ms,
            f.publish.p99_ms
        );
        for p in &f.phases {
            let _ = writeln!(
                s,
                "  phase {:<12} sent {:>7}  confirmed {:>7}  delivered {:>7}  failed {:>6}  lost {:>5}",
                p.name, p.sent, p.confirmed, p.delivered, p.failed, p.lost
            );
        }
        for r in &f.recoveries {
            let rec = r
                .recovery
                .map_or("never".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
            let _ = writeln!(
                s,
                "  recovery after {} (healed at {:.1}s): {rec}",
                r.fault, r.healed_at_s
            );
        }
        for v in &self.verdicts {
            let _ = writeln!(
                s,
                "  [{}] {:<36} limit {:<12} observed {}",
                if v.pass { "PASS" } else { "FAIL" },
                v.name,
                v.limit,
                v.observed
            );
        }
        let _ = writeln!(s, "verdict: {}", if self.pass { "PASS" } else { "FAIL" });
        s
    }

    /// The report as JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// A self-contained HTML page.
    pub fn html(&self) -> String {
        crate::html::render(self)
    }
}
