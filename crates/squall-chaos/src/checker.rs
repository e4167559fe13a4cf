//! The checker: reads what producers sent and confirmed and what consumers received and acked,
//! and counts what went wrong.
//!
//! Every workload message carries its producer, sequence, key, intended send time and a checksum of
//! its payload ([`Stamp`]). The workload records [`Event`]s as they happen; [`check`] turns the log
//! into [`Findings`]:
//! - **lost**: confirmed to the producer, never delivered to a group;
//! - **unconfirmed but delivered**: the producer saw an error or no answer, yet it arrived
//!   (informative: at-least-once producers then retry, which makes duplicates);
//! - **duplicates**: deliveries of a message a group had already acked (what an idempotent
//!   consumer must absorb), split into redelivered-after-ack (same stored copy) and stored twice
//!   (different stream sequence, e.g. a producer retry outside the dedup window);
//! - **reorders**: per group, producer and key, a first delivery of an older sequence after a newer one;
//! - **corrupt**: payload checksum mismatch;
//! - **lease anomalies**: two consumers holding one message at once;
//! - **early delays**: a delayed message delivered before its time;
//! - per-phase counts, a one-second timeline, recovery time after each fault, latency percentiles.
//!
//! Everything is counted, nothing is de-duplicated away.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use squall_core::{Message, Timestamp};

/// Header names of the stamp.
pub mod header {
    /// Producer id.
    pub const PRODUCER: &str = "chaos-producer";
    /// Producer sequence, from 1.
    pub const SEQUENCE: &str = "chaos-seq";
    /// Intended send time, ns since the epoch.
    pub const SENT: &str = "chaos-sent";
    /// CRC32C of the payload.
    pub const CHECKSUM: &str = "chaos-sum";
}

/// What identifies a workload message and lets a receiver verify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Stamp {
    /// Producer id.
    pub producer: u32,
    /// Producer sequence, from 1.
    pub seq: u64,
    /// Intended send time (open-loop schedule), for latency.
    pub sent: Timestamp,
    /// CRC32C of the payload as sent.
    pub checksum: u32,
}

impl Stamp {
    /// Writes the stamp into `msg`'s headers (the checksum is computed from its payload).
    pub fn apply(producer: u32, seq: u64, sent: Timestamp, msg: &mut Message) -> Stamp {
        let checksum = crc32c::crc32c(msg.payload());
        let h = msg.headers_mut();
        // Header names and decimal values are always valid.
        let _ = h.insert(header::PRODUCER, producer.to_string());
        let _ = h.insert(header::SEQUENCE, seq.to_string());
        let _ = h.insert(header::SENT, sent.as_nanos().to_string());
        let _ = h.insert(header::CHECKSUM, checksum.to_string());
        Stamp {
            producer,
            seq,
            sent,
            checksum,
        }
    }

    /// Reads the stamp of a received message and whether its payload still matches.
    /// `None`: not a workload message (or its stamp headers were damaged).
    pub fn read(msg: &Message) -> Option<(Stamp, bool)> {
        let h = msg.headers();
        let stamp = Stamp {
            producer: h.get(header::PRODUCER)?.parse().ok()?,
            seq: h.get(header::SEQUENCE)?.parse().ok()?,
            sent: Timestamp(h.get(header::SENT)?.parse().ok()?),
            checksum: h.get(header::CHECKSUM)?.parse().ok()?,
        };
        let intact = crc32c::crc32c(msg.payload()) == stamp.checksum;
        Some((stamp, intact))
    }
}

/// Identifies a message across the run.
pub type MsgKey = (u32, u64);

/// One thing that happened during a run, in time order per recorder.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A phase began.
    Phase {
        /// Name.
        name: String,
        /// When.
        at: Timestamp,
    },
    /// A fault was injected (`end: None`) or healed.
    Fault {
        /// Name.
        name: String,
        /// When it started.
        start: Timestamp,
        /// When it was healed.
        end: Option<Timestamp>,
    },
    /// A producer handed a message to the backend (first attempt).
    Sent {
        /// The message.
        stamp: Stamp,
        /// Its key.
        key: Option<String>,
        /// Delay asked for, if any.
        delay: Option<Duration>,
    },
    /// The backend confirmed it.
    Confirmed {
        /// Which.
        msg: MsgKey,
        /// When.
        at: Timestamp,
        /// Stream sequence.
        stream_seq: u64,
        /// The backend said it was a duplicate.
        duplicate: bool,
    },
    /// The producer gave up on it (after its retries).
    Failed {
        /// Which.
        msg: MsgKey,
        /// When.
        at: Timestamp,
        /// Last error.
        error: String,
    },
    /// A consumer received it.
    Received {
        /// Which.
        msg: MsgKey,
        /// Consumer id.
        consumer: u32,
        /// Group.
        group: String,
        /// When.
        at: Timestamp,
        /// Attempt number.
        attempt: u32,
        /// Stream sequence.
        stream_seq: u64,
        /// When the backend stored it.
        published_at: Timestamp,
        /// Lease deadline.
        deadline: Timestamp,
        /// Payload matched its checksum.
        intact: bool,
    },
    /// A consumer's ack was accepted (`ok`) or refused.
    Acked {
        /// Which.
        msg: MsgKey,
        /// Consumer id.
        consumer: u32,
        /// Group.
        group: String,
        /// When.
        at: Timestamp,
        /// Stream sequence acked.
        stream_seq: u64,
        /// Accepted.
        ok: bool,
    },
    /// A consumer received something that is not a workload message (corrupted stamp).
    Unreadable {
        /// Consumer id.
        consumer: u32,
        /// When.
        at: Timestamp,
    },
}

/// Counts per phase (by the phase in which a message was first sent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PhaseCounts {
    /// Phase name.
    pub name: String,
    /// Sent.
    pub sent: u64,
    /// Confirmed.
    pub confirmed: u64,
    /// Failed at the producer.
    pub failed: u64,
    /// Delivered to every group at least once.
    pub delivered: u64,
    /// Confirmed and never delivered.
    pub lost: u64,
}

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bucket {
    /// Seconds since the start.
    pub t: u64,
    /// Messages sent.
    pub sent: u64,
    /// Confirms.
    pub confirmed: u64,
    /// First deliveries.
    pub delivered: u64,
    /// Producer failures.
    pub errors: u64,
    /// Confirmed but not yet delivered, at the end of the second.
    pub lag: u64,
    /// 99th percentile end-to-end latency of deliveries in this second, ms.
    pub p99_ms: f64,
}

/// Recovery after one fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recovery {
    /// The fault.
    pub fault: String,
    /// When it was healed, seconds since the start.
    pub healed_at_s: f64,
    /// Time from healing until throughput and lag were back to baseline; `None`: never recovered.
    pub recovery: Option<Duration>,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Max.
    pub max_ms: f64,
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Findings {
    /// Messages sent.
    pub sent: u64,
    /// Confirmed.
    pub confirmed: u64,
    /// Failed at the producer.
    pub failed: u64,
    /// Confirmed and never delivered (to at least one group).
    pub lost: u64,
    /// A sample of lost messages (producer, sequence).
    pub lost_sample: Vec<MsgKey>,
    /// Delivered although not confirmed.
    pub unconfirmed_delivered: u64,
    /// Deliveries in total.
    pub deliveries: u64,
    /// Redeliveries before any ack (lease expiry, nack): expected under faults.
    pub redeliveries: u64,
    /// Deliveries of a message its group had already acked: what an idempotent consumer absorbs.
    pub duplicates: u64,
    /// Of which the same stored copy redelivered after its ack was accepted.
    pub redelivered_after_ack: u64,
    /// Of which a second stored copy (different stream sequence).
    pub stored_twice: u64,
    /// First deliveries out of order per group, producer and key.
    pub reorders: u64,
    /// A sample of reorders: (producer, sequence delivered, newer sequence delivered before it,
    /// seconds since the start).
    pub reorder_sample: Vec<(u32, u64, u64, f64)>,
    /// Payload checksum mismatches (and unreadable stamps).
    pub corrupt: u64,
    /// Two consumers holding one message at once.
    pub two_holders: u64,
    /// Delayed messages delivered early.
    pub delay_early: u64,
    /// Acks refused by the backend.
    pub acks_refused: u64,
    /// Per phase.
    pub phases: Vec<PhaseCounts>,
    /// Per second.
    pub timeline: Vec<Bucket>,
    /// After each healed fault.
    pub recoveries: Vec<Recovery>,
    /// Intended send → first delivery.
    pub end_to_end: Latency,
    /// Intended send → confirm.
    pub publish: Latency,
}

fn latency(h: &hdrhistogram::Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// A consumer's hold on a message: (consumer, from, until).
type Hold = (u32, Timestamp, Timestamp);

/// Per second of the run: its bucket and its latency histogram.
type PerSecond = BTreeMap<u64, (Bucket, hdrhistogram::Histogram<u64>)>;

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Checks a run. `groups`: the consumer groups every message should reach. `start`: when the
/// run began (timeline origin).
pub fn check(events: &[Event], groups: &[String], start: Timestamp) -> Findings {
    let mut f = Findings::default();
    let mut sent: HashMap<MsgKey, (Stamp, Option<String>, Option<Duration>, usize)> =
        HashMap::new();
    let mut confirmed: HashMap<MsgKey, (Timestamp, u64)> = HashMap::new();
    let mut failed: HashSet<MsgKey> = HashSet::new();
    let mut phases: Vec<(String, Timestamp)> = Vec::new();
    // (group, msg) -> first delivery time
    let mut first: HashMap<(String, MsgKey), Timestamp> = HashMap::new();
    // (group, msg) -> stream seqs acked
    let mut acked: HashMap<(String, MsgKey), HashSet<u64>> = HashMap::new();
    // (group, msg) -> holders: (consumer, from, until)
    let mut holds: HashMap<(String, MsgKey), Vec<Hold>> = HashMap::new();
    // (group, producer, key) -> highest seq first-delivered
    let mut order: HashMap<(String, u32, Option<String>), u64> = HashMap::new();
    let mut e2e = histogram();
    let mut publish = histogram();
    let mut faults: Vec<(String, Timestamp, Option<Timestamp>)> = Vec::new();
    let mut per_sec: PerSecond = BTreeMap::new();
    fn slot(
        per_sec: &mut PerSecond,
        start: Timestamp,
        t: Timestamp,
    ) -> &mut (Bucket, hdrhistogram::Histogram<u64>) {
        let s = t.saturating_since(start).as_secs();
        per_sec.entry(s).or_insert_with(|| {
            (
                Bucket {
                    t: s,
                    ..Default::default()
                },
                histogram(),
            )
        })
    }

    for e in events {
        match e {
            Event::Phase { name, at } => phases.push((name.clone(), *at)),
            Event::Fault { name, start, end } => faults.push((name.clone(), *start, *end)),
            Event::Sent { stamp, key, delay } => {
                let phase = phases.len().saturating_sub(1);
                sent.insert(
                    (stamp.producer, stamp.seq),
                    (*stamp, key.clone(), *delay, phase),
                );
                slot(&mut per_sec, start, stamp.sent).0.sent += 1;
            }
            Event::Confirmed {
                msg,
                at,
                stream_seq,
                ..
            } => {
                if confirmed.insert(*msg, (*at, *stream_seq)).is_none() {
                    slot(&mut per_sec, start, *at).0.confirmed += 1;
                    if let Some((s, ..)) = sent.get(msg) {
                        let _ =
                            publish.record(at.saturating_since(s.sent).as_micros().max(1) as u64);
                    }
                }
            }
            Event::Failed { msg, at, .. } => {
                failed.insert(*msg);
                slot(&mut per_sec, start, *at).0.errors += 1;
            }
            Event::Received {
                msg,
                consumer,
                group,
                at,
                stream_seq,
                published_at,
                deadline,
                intact,
                ..
            } => {
                f.deliveries += 1;
                if !intact {
                    f.corrupt += 1;
                }
                let gk = (group.clone(), *msg);
                if let Some((stamp, key, delay, _)) = sent.get(msg) {
                    if let Some(d) = delay
                        && *at < published_at.saturating_add(*d)
                    {
                        f.delay_early += 1;
                    }
                    if let Some(seqs) = acked.get(&gk) {
                        f.duplicates += 1;
                        if seqs.contains(stream_seq) {
                            f.redelivered_after_ack += 1;
                        } else {
                            f.stored_twice += 1;
                        }
                    } else if first.contains_key(&gk) {
                        f.redeliveries += 1;
                    }
                    if !first.contains_key(&gk) {
                        first.insert(gk.clone(), *at);
                        let lat = at.saturating_since(stamp.sent).as_micros().max(1) as u64;
                        let _ = e2e.record(lat);
                        let b = slot(&mut per_sec, start, *at);
                        b.0.delivered += 1;
                        let _ = b.1.record(lat);
                        let ok = order
                            .entry((group.clone(), stamp.producer, key.clone()))
                            .or_insert(0);
                        if stamp.seq < *ok {
                            f.reorders += 1;
                            if f.reorder_sample.len() < 20 {
                                f.reorder_sample.push((
                                    stamp.producer,
                                    stamp.seq,
                                    *ok,
                                    at.saturating_since(start).as_secs_f64(),
                                ));
                            }
                        } else {
                            *ok = stamp.seq;
                        }
                    }
                }
                let h = holds.entry(gk).or_default();
                for (other, from, until) in h.iter() {
                    if other != consumer && *from <= *at && *at < *until {
                        f.two_holders += 1;
                    }
                }
                h.push((*consumer, *at, *deadline));
            }
            Event::Acked {
                msg,
                consumer,
                group,
                at,
                stream_seq,
                ok,
            } => {
                if !ok {
                    f.acks_refused += 1;
                    continue;
                }
                let gk = (group.clone(), *msg);
                acked.entry(gk.clone()).or_default().insert(*stream_seq);
                if let Some(h) = holds.get_mut(&gk) {
                    for hold in h.iter_mut().filter(|h| h.0 == *consumer && h.1 <= *at) {
                        hold.2 = hold.2.min(*at);
                    }
                }
            }
            Event::Unreadable { .. } => f.corrupt += 1,
        }
    }

    f.sent = sent.len() as u64;
    f.confirmed = confirmed.len() as u64;
    f.failed = failed.iter().filter(|m| !confirmed.contains_key(m)).count() as u64;
    let mut phase_counts: Vec<PhaseCounts> = phases
        .iter()
        .map(|(name, _)| PhaseCounts {
            name: name.clone(),
            ..Default::default()
        })
        .collect();
    if phase_counts.is_empty() {
        phase_counts.push(PhaseCounts {
            name: "run".into(),
            ..Default::default()
        });
    }
    let mut lost: Vec<MsgKey> = Vec::new();
    for (msg, (_, _, _, phase)) in &sent {
        let last_phase = phase_counts.len() - 1;
        let pc = &mut phase_counts[(*phase).min(last_phase)];
        pc.sent += 1;
        let everywhere = groups
            .iter()
            .all(|g| first.contains_key(&(g.clone(), *msg)));
        let anywhere = groups
            .iter()
            .any(|g| first.contains_key(&(g.clone(), *msg)));
        if confirmed.contains_key(msg) {
            pc.confirmed += 1;
            if !everywhere {
                pc.lost += 1;
                lost.push(*msg);
            }
        } else {
            if failed.contains(msg) {
                pc.failed += 1;
            }
            if anywhere {
                f.unconfirmed_delivered += 1;
            }
        }
        if everywhere {
            pc.delivered += 1;
        }
    }
    lost.sort_unstable();
    f.lost = lost.len() as u64;
    f.lost_sample = lost.into_iter().take(20).collect();
    f.phases = phase_counts;

    // Timeline with lag (confirmed minus first-delivered to the first group, cumulative).
    let mut confirmed_total = 0u64;
    let mut delivered_total = 0u64;
    let last = per_sec.keys().next_back().copied().unwrap_or(0);
    for s in 0..=last {
        let (mut b, h) = per_sec.remove(&s).unwrap_or_else(|| {
            (
                Bucket {
                    t: s,
                    ..Default::default()
                },
                histogram(),
            )
        });
        confirmed_total += b.confirmed;
        delivered_total += b.delivered;
        b.lag = confirmed_total.saturating_sub(delivered_total / groups.len().max(1) as u64);
        b.p99_ms = if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(0.99) as f64 / 1000.0
        };
        f.timeline.push(b);
    }
    f.recoveries = recoveries(&f.timeline, &faults, &phases, start);
    f.end_to_end = latency(&e2e);
    f.publish = latency(&publish);
    f
}

/// Time after each healed fault until a second's deliveries are back to 80% of the baseline rate
/// (median of the first phase's seconds) and the lag is back under twice the baseline lag (and at
/// least 10 messages).
fn recoveries(
    timeline: &[Bucket],
    faults: &[(String, Timestamp, Option<Timestamp>)],
    phases: &[(String, Timestamp)],
    start: Timestamp,
) -> Vec<Recovery> {
    let baseline_end = phases
        .get(1)
        .map(|p| p.1.saturating_since(start).as_secs())
        .unwrap_or(u64::MAX);
    let first_fault = faults
        .iter()
        .map(|f| f.1.saturating_since(start).as_secs())
        .min()
        .unwrap_or(u64::MAX);
    let cut = baseline_end.min(first_fault);
    let mut base: Vec<&Bucket> = timeline.iter().filter(|b| b.t < cut && b.t > 0).collect();
    if base.is_empty() {
        base = timeline.iter().filter(|b| b.t < cut).collect();
    }
    let mut rates: Vec<u64> = base.iter().map(|b| b.delivered).collect();
    rates.sort_unstable();
    let base_rate = rates.get(rates.len() / 2).copied().unwrap_or(0);
    let base_lag = base.iter().map(|b| b.lag).max().unwrap_or(0);
    let offered_end = timeline.iter().rposition(|b| b.sent > 0).unwrap_or(0) as u64;
    faults
        .iter()
        .filter_map(|(name, _, end)| end.map(|e| (name, e)))
        .map(|(name, end)| {
            let healed = end.saturating_since(start);
            let from = healed.as_secs();
            let recovered = timeline.iter().filter(|b| b.t >= from).find(|b| {
                let rate_ok = b.delivered * 5 >= base_rate * 4 || b.t > offered_end;
                rate_ok && b.lag <= (base_lag * 2).max(10)
            });
            Recovery {
                fault: name.clone(),
                healed_at_s: healed.as_secs_f64(),
                recovery: recovered.map(|b| Duration::from_secs(b.t + 1).saturating_sub(healed)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
