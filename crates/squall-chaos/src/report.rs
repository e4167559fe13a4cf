//! The report of a run: verdict per criterion, terminal summary, JSON, and a self-contained HTML
//! timeline (throughput, latency, lag, errors over time, fault windows shaded).
//!
//! Every report starts with the seed and the exact command that replays the run.

use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::Findings;

mod criteria;

pub use criteria::{Criteria, PhaseCriteria, Verdict};

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
    /// What the run changed to fit the backend (see [`crate::workload::Workload::fit`]), and
    /// other remarks on how to read the figures.
    pub notes: Vec<String>,
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
    /// Message-level injections by rule (`rule: fault@point` → count).
    pub injections: std::collections::BTreeMap<String, u64>,
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
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let _ = writeln!(
            s,
            "sent {}  confirmed {}  failed {}  lost {}  duplicates {} (after ack {}, stored twice {}, delivered twice {})  redeliveries {}  reorders {}  corrupt {}  two holders {}",
            f.sent,
            f.confirmed,
            f.failed,
            f.lost,
            f.duplicates,
            f.redelivered_after_ack,
            f.stored_twice,
            f.delivered_twice,
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
        if !self.injections.is_empty() {
            let list: Vec<String> = self
                .injections
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            let _ = writeln!(s, "injected: {}", list.join("; "));
        }
        if f.failed > 0 || f.unaccounted > 0 || f.unconfirmed_delivered > 0 {
            let _ = writeln!(
                s,
                "unconfirmed: {} failed at the producer ({} of them delivered anyway), {} unaccounted",
                f.failed, f.unconfirmed_delivered, f.unaccounted
            );
        }
        if f.rejected > 0 || f.dead_lettered > 0 || f.dlq_missing > 0 {
            let _ = writeln!(
                s,
                "dead letters: {} rejected, {} in the dead-letter queue, {} missing, {} extra copies",
                f.rejected, f.dead_lettered, f.dlq_missing, f.dlq_duplicates
            );
        }
        for p in &f.phases {
            let _ = writeln!(
                s,
                "  phase {:<18} sent {:>7}  confirmed {:>7}  delivered {:>7} ({:>5.1}%)  failed {:>6}  lost {:>5}  received during {:>7}  p99 {:.0} ms",
                p.name,
                p.sent,
                p.confirmed,
                p.delivered,
                p.delivered_fraction * 100.0,
                p.failed,
                p.lost,
                p.received,
                p.p99_ms
            );
        }
        for r in &f.recoveries {
            let rec = match (&r.note, r.recovery) {
                (Some(n), _) => n.clone(),
                (None, Some(d)) => format!("recovered in {:.1}s", d.as_secs_f64()),
                (None, None) => "never recovered".into(),
            };
            let healed = r
                .healed_at_s
                .map_or("-".to_string(), |h| format!("{h:.1}s"));
            let _ = writeln!(
                s,
                "  fault {} ({:.1}s → {healed}): {rec}",
                r.fault, r.started_at_s
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
