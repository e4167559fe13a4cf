//! The report: JSON types, aggregation of repetitions into rows, ratios, and the Markdown
//! summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::machine::{CpuUse, MachineInfo};
use crate::runner::RepRaw;
use crate::spec::{Case, Mode, Shape, Target, Workload};

/// Median, min and max over repetitions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// Median (of an even count: the mean of the middle two).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Of `v`; `None` when empty.
    pub fn of(v: &[f64]) -> Option<Spread> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

/// Latency percentiles in microseconds, from the histogram of all repetitions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// 50th percentile.
    pub p50: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From a nanosecond histogram; `None` when empty.
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Percentiles {
            count: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// Whether a row was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured.
    Ok,
    /// Not run; `reason` says why.
    Skipped,
    /// Run, and it failed; `reason` has the error.
    Failed,
}

/// One repetition, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Rep {
    /// Messages published.
    pub sent: u64,
    /// Measured deliveries.
    pub delivered: u64,
    /// Pipeline rate.
    pub msgs_per_sec: f64,
    /// Confirmed publish rate.
    pub publish_msgs_per_sec: f64,
    /// Publish-ack latency of this repetition.
    pub publish_ack_us: Option<Percentiles>,
    /// End-to-end latency of this repetition.
    pub e2e_us: Option<Percentiles>,
    /// CPU.
    pub cpu: CpuUse,
    /// fsyncs of message data.
    pub fsyncs: Option<u64>,
    /// Broker restart time (W7).
    pub restart_secs: Option<f64>,
}

/// One row: a case on a target.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Workload.
    pub workload: Workload,
    /// What it measures.
    pub title: &'static str,
    /// Variant within the workload.
    pub variant: String,
    /// Target.
    pub target: Target,
    /// Measured, skipped or failed.
    pub status: Status,
    /// Why it was skipped, or the error.
    pub reason: Option<String>,
    /// The durability label of the configuration (`none`, `page-cache`, `fsync-batched`,
    /// `fsync-per-message`).
    pub durability: Option<&'static str>,
    /// The durability the workload asked for.
    pub requested_durability: String,
    /// The target's configuration in words.
    pub config: Option<String>,
    /// The broker's version.
    pub version: Option<String>,
    /// Payload bytes.
    pub size: usize,
    /// Publish window (unconfirmed messages per producer).
    pub window: usize,
    /// Offered rate, if fixed.
    pub rate: Option<u64>,
    /// Wiring.
    pub shape: Shape,
    /// Phase details.
    pub mode: Mode,
    /// Messages per second through the pipeline: published messages over the time from the
    /// first intended send to the last delivery (W7: the drain after the restart; W9: the
    /// redeliveries).
    pub msgs_per_sec: Option<Spread>,
    /// Deliveries per second over all receivers (fan-out and groups: `msgs_per_sec` × receivers).
    pub deliveries_per_sec: Option<Spread>,
    /// Confirmed publishes per second.
    pub publish_msgs_per_sec: Option<Spread>,
    /// Publish-ack latency over all repetitions (`None`: no confirms, e.g. core NATS).
    pub publish_ack_us: Option<Percentiles>,
    /// End-to-end latency over all repetitions.
    pub e2e_us: Option<Percentiles>,
    /// CPU seconds of the broker process per repetition (`None`: same process, see client).
    pub broker_cpu_secs: Option<Spread>,
    /// CPU seconds of the load generator's process per repetition.
    pub client_cpu_secs: Option<Spread>,
    /// Broker + client CPU microseconds per message (median repetition).
    pub cpu_us_per_msg: Option<f64>,
    /// fsyncs of message data per repetition, where observable.
    pub fsyncs: Option<Spread>,
    /// Messages per fsync (median repetition), where observable.
    pub msgs_per_fsync: Option<f64>,
    /// W7: seconds to restart the broker.
    pub restart_secs: Option<Spread>,
    /// Cores used by other processes in the sample before the row.
    pub other_cores_before: Option<f64>,
    /// Most cores used by others (and kernel threads) during a measured phase.
    pub other_cores_during: Option<f64>,
    /// Every repetition.
    pub repetitions: Vec<Rep>,
    /// What a reader must know.
    pub notes: Vec<String>,
}

impl Row {
    /// A row that was not measured.
    pub fn unmeasured(case: &Case, target: Target, status: Status, reason: String) -> Row {
        Row {
            workload: case.workload,
            title: case.workload.title(),
            variant: case.variant.clone(),
            target,
            status,
            reason: Some(reason),
            durability: None,
            requested_durability: case.durability.to_string(),
            config: None,
            version: None,
            size: case.size,
            window: case.window,
            rate: case.rate,
            shape: case.shape,
            mode: case.mode,
            msgs_per_sec: None,
            deliveries_per_sec: None,
            publish_msgs_per_sec: None,
            publish_ack_us: None,
            e2e_us: None,
            broker_cpu_secs: None,
            client_cpu_secs: None,
            cpu_us_per_msg: None,
            fsyncs: None,
            msgs_per_fsync: None,
            restart_secs: None,
            other_cores_before: None,
            other_cores_during: None,
            repetitions: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Aggregates measured repetitions.
    pub fn measured(
        case: &Case,
        target: Target,
        setup: &crate::drivers::Setup,
        other_before: f64,
        reps: Vec<RepRaw>,
    ) -> Row {
        let mut row = Row::unmeasured(case, target, Status::Ok, String::new());
        row.reason = None;
        row.durability = Some(setup.label.as_str());
        row.config = Some(setup.config.clone());
        row.version = Some(setup.version.clone());
        row.other_cores_before = Some(other_before);
        let mut ack = crate::load::histogram();
        let mut e2e = crate::load::histogram();
        let mut any_ack = false;
        for r in &reps {
            if let Some(h) = &r.ack {
                any_ack = true;
                let _ = ack.add(h);
            }
            let _ = e2e.add(&r.e2e);
            for n in &r.notes {
                if !row.notes.contains(n) {
                    row.notes.push(n.clone());
                }
            }
        }
        let col = |f: &dyn Fn(&RepRaw) -> Option<f64>| -> Option<Spread> {
            let v: Vec<f64> = reps.iter().filter_map(f).collect();
            (v.len() == reps.len()).then(|| Spread::of(&v)).flatten()
        };
        let k = case.shape.deliveries(1) as f64;
        row.msgs_per_sec = col(&|r| Some(r.msgs_per_sec));
        row.deliveries_per_sec = col(&|r| Some(r.msgs_per_sec * k));
        row.publish_msgs_per_sec = col(&|r| Some(r.publish_msgs_per_sec));
        row.broker_cpu_secs = col(&|r| r.cpu.broker_secs);
        row.client_cpu_secs = col(&|r| Some(r.cpu.client_secs));
        row.fsyncs = col(&|r| r.fsyncs.map(|f| f as f64));
        row.restart_secs = col(&|r| r.restart_secs);
        row.publish_ack_us = if any_ack { Percentiles::of(&ack) } else { None };
        row.e2e_us = Percentiles::of(&e2e);
        row.other_cores_during = reps.iter().map(|r| r.cpu.other_cores).reduce(f64::max);
        // The median repetition by throughput, for the per-message figures.
        let mut by_rate: Vec<&RepRaw> = reps.iter().collect();
        by_rate.sort_by(|a, b| a.msgs_per_sec.total_cmp(&b.msgs_per_sec));
        if let Some(m) = by_rate.get(by_rate.len() / 2) {
            let cpu = m.cpu.client_secs + m.cpu.broker_secs.unwrap_or(0.0);
            if m.sent > 0 {
                row.cpu_us_per_msg = Some(cpu * 1e6 / m.sent as f64);
            }
            row.msgs_per_fsync = m
                .fsyncs
                .filter(|f| *f > 0)
                .map(|f| m.sent as f64 / f as f64);
        }
        row.repetitions = reps
            .into_iter()
            .map(|r| Rep {
                sent: r.sent,
                delivered: r.delivered,
                msgs_per_sec: r.msgs_per_sec,
                publish_msgs_per_sec: r.publish_msgs_per_sec,
                publish_ack_us: r.ack.as_ref().and_then(Percentiles::of),
                e2e_us: Percentiles::of(&r.e2e),
                cpu: r.cpu,
                fsyncs: r.fsyncs,
                restart_secs: r.restart_secs,
            })
            .collect();
        if target == Target::SquallEmbedded {
            row.notes
                .push("in-process: the broker's CPU is in client_cpu_secs (one process)".into());
        }
        row
    }
}

/// squall against one peer on one case.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Workload.
    pub workload: Workload,
    /// Variant.
    pub variant: String,
    /// The squall target.
    pub squall: Target,
    /// Its durability label.
    pub squall_durability: &'static str,
    /// The peer.
    pub peer: Target,
    /// Its durability label.
    pub peer_durability: &'static str,
    /// squall msgs/s ÷ peer msgs/s (medians): above 1, squall is faster.
    pub throughput: f64,
    /// squall e2e p99 ÷ peer e2e p99: below 1, squall's tail is shorter.
    pub e2e_p99: Option<f64>,
}

/// Ratios of every measured squall row to every measured peer row of the same case.
pub fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for s in rows
        .iter()
        .filter(|r| r.target.is_squall() && r.status == Status::Ok)
    {
        for p in rows.iter().filter(|r| {
            !r.target.is_squall()
                && r.status == Status::Ok
                && r.workload == s.workload
                && r.variant == s.variant
        }) {
            let (Some(a), Some(b)) = (s.msgs_per_sec, p.msgs_per_sec) else {
                continue;
            };
            if b.median <= 0.0 {
                continue;
            }
            let e2e = match (s.e2e_us, p.e2e_us) {
                (Some(x), Some(y)) if y.p99 > 0.0 => Some(x.p99 / y.p99),
                _ => None,
            };
            out.push(Ratio {
                workload: s.workload,
                variant: s.variant.clone(),
                squall: s.target,
                squall_durability: s.durability.unwrap_or("?"),
                peer: p.target,
                peer_durability: p.durability.unwrap_or("?"),
                throughput: a.median / b.median,
                e2e_p99: e2e,
            });
        }
    }
    out
}

/// Whether the machine was quiet.
#[derive(Debug, Clone, Serialize)]
pub struct Busy {
    /// Any row's pre-run sample was above the threshold (only possible with `allow_busy`).
    pub busy: bool,
    /// `--allow-busy` was given.
    pub allowed: bool,
    /// The threshold, in cores used by other processes.
    pub threshold_cores: f64,
    /// The highest pre-row sample.
    pub max_other_cores: f64,
    /// What every output says when `busy`.
    pub note: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `squall bench`.
    pub tool: &'static str,
    /// squall's version.
    pub squall_version: &'static str,
    /// The command that produced it, if the caller said.
    pub command: Option<String>,
    /// Start, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Wall seconds the run took.
    pub wall_secs: f64,
    /// Quick mode: a harness check, not figures.
    pub quick: bool,
    /// The options.
    pub parameters: serde_json::Value,
    /// The machine.
    pub machine: MachineInfo,
    /// The busy-machine verdict.
    pub busy: Busy,
    /// Broker versions by target.
    pub versions: BTreeMap<String, String>,
    /// Where each peer came from.
    pub peers: BTreeMap<String, String>,
    /// Every row, skipped and failed ones included.
    pub rows: Vec<Row>,
    /// squall ÷ peer per case.
    pub ratios: Vec<Ratio>,
}

fn fmt_rate(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!("{} ({}–{})", human(s.median), human(s.min), human(s.max)),
        None => "–".into(),
    }
}

/// 123456 → `123k`, 1234 → `1.23k`.
pub fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e5 {
        format!("{:.0}k", x / 1e3)
    } else if x >= 1e3 {
        format!("{:.2}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn ms(us: f64) -> String {
    let m = us / 1000.0;
    if m >= 100.0 {
        format!("{m:.0}")
    } else if m >= 1.0 {
        format!("{m:.1}")
    } else {
        format!("{m:.2}")
    }
}

fn pcts(p: Option<Percentiles>) -> String {
    p.map_or("–".into(), |p| {
        format!("{} / {} / {}", ms(p.p50), ms(p.p99), ms(p.p999))
    })
}

/// The Markdown summary: verdict lines, the table of rows, the ratios.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!-- generated by `squall bench`; do not edit by hand -->"
    );
    if let Some(c) = &r.command {
        let _ = writeln!(s, "Command: `{c}`\n");
    }
    let _ = writeln!(
        s,
        "Machine: {} cores, {}, kernel {}, {} MiB; build: {}. squall {}; {}.\n",
        r.machine.cores,
        r.machine.cpu_model,
        r.machine.kernel,
        r.machine.memory_mib,
        r.machine.build,
        r.squall_version,
        r.versions
            .iter()
            .filter(|(k, _)| !k.starts_with("squall"))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if r.quick {
        let _ = writeln!(
            s,
            "**Quick mode: a harness check with tiny counts; not figures.**\n"
        );
    }
    if r.machine.build == "debug" {
        let _ = writeln!(s, "**Debug build: the figures say little about squall.**\n");
    }
    if let Some(n) = &r.busy.note {
        let _ = writeln!(s, "**{n}**\n");
    }
    let _ = writeln!(
        s,
        "| W | variant | target | durability | msgs/s median (min–max) | publish-ack ms p50 / p99 / p99.9 | e2e ms p50 / p99 / p99.9 | CPU s broker / client | µs CPU/msg | msgs/fsync |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for row in &r.rows {
        if row.status != Status::Ok {
            let _ = writeln!(
                s,
                "| {} | {} | {} | – | {}: {} | | | | | |",
                row.workload,
                row.variant,
                row.target,
                if row.status == Status::Skipped {
                    "not run"
                } else {
                    "failed"
                },
                row.reason
                    .as_deref()
                    .unwrap_or("")
                    .replace('|', "\\|")
                    .replace('\n', " ")
            );
            continue;
        }
        let cpu = format!(
            "{} / {}",
            row.broker_cpu_secs
                .map_or("–".into(), |c| format!("{:.2}", c.median)),
            row.client_cpu_secs
                .map_or("–".into(), |c| format!("{:.2}", c.median)),
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.workload,
            row.variant,
            row.target,
            row.durability.unwrap_or("?"),
            fmt_rate(row.msgs_per_sec),
            pcts(row.publish_ack_us),
            pcts(row.e2e_us),
            cpu,
            row.cpu_us_per_msg.map_or("–".into(), |c| format!("{c:.1}")),
            row.msgs_per_fsync.map_or("–".into(), |m| format!("{m:.1}")),
        );
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(
            s,
            "\n### Ratios squall ÷ peer (throughput medians; e2e p99)\n"
        );
        let _ = writeln!(
            s,
            "| W | variant | squall (durability) | peer (durability) | throughput ratio | e2e p99 ratio |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for q in &r.ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} ({}) | {} ({}) | {:.2}× | {} |",
                q.workload,
                q.variant,
                q.squall,
                q.squall_durability,
                q.peer,
                q.peer_durability,
                q.throughput,
                q.e2e_p99.map_or("–".into(), |x| format!("{x:.2}×")),
            );
        }
    }
    let notes: Vec<String> = r
        .rows
        .iter()
        .filter(|row| row.status == Status::Ok)
        .flat_map(|row| {
            row.notes
                .iter()
                .map(move |n| format!("{} {} {}: {n}", row.workload, row.variant, row.target))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes:\n");
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn percentiles_are_ordered_and_in_microseconds() {
        let mut h = crate::load::histogram();
        for i in 1..=1000u64 {
            h.record(i * 1000).unwrap();
        }
        let p = Percentiles::of(&h).unwrap();
        assert!(p.p50 <= p.p99 && p.p99 <= p.p999 && p.p999 <= p.max);
        assert!((p.p50 - 500.0).abs() < 2.0, "{}", p.p50);
    }
}
