//! [`check`]: a run's event log in, [`Findings`] out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use squall_core::Timestamp;

use super::recovery::recoveries;
use super::{Bucket, Event, Findings, Latency, MsgKey, PhaseCounts, Stamp};

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

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn p99_ms(h: &hdrhistogram::Histogram<u64>) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(0.99) as f64 / 1000.0
    }
}

/// A consumer's hold on a message: (consumer, from, until).
type Hold = (u32, Timestamp, Timestamp);

/// (group, message).
type GroupMsg = (String, MsgKey);

/// Per second of the run: its bucket and its latency histogram.
type PerSecond = BTreeMap<u64, (Bucket, hdrhistogram::Histogram<u64>)>;

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

/// What the producers said about one message.
struct SentInfo {
    stamp: Stamp,
    key: Option<String>,
    delay: Option<Duration>,
    /// Index of the phase it was sent in.
    phase: usize,
}

/// Checks a run whose subscriptions have no delivery limit. `groups`: the consumer groups every
/// message should reach. `start`: when the run began (timeline origin).
pub fn check(events: &[Event], groups: &[String], start: Timestamp) -> Findings {
    check_with(events, groups, None, start)
}

/// Checks a run; `max_deliveries` is the subscriptions' delivery limit, after which an unsettled
/// message must be dead-lettered.
pub fn check_with(
    events: &[Event],
    groups: &[String],
    max_deliveries: Option<u32>,
    start: Timestamp,
) -> Findings {
    let mut f = Findings::default();
    let mut sent: HashMap<MsgKey, SentInfo> = HashMap::new();
    let mut confirmed: HashMap<MsgKey, (Timestamp, u64)> = HashMap::new();
    let mut failed: HashSet<MsgKey> = HashSet::new();
    let mut phases: Vec<(String, Timestamp)> = Vec::new();
    let mut first: HashMap<GroupMsg, Timestamp> = HashMap::new();
    let mut acked: HashMap<GroupMsg, HashSet<u64>> = HashMap::new();
    // (group, message) -> (stream sequence, attempt) delivered
    let mut attempts: HashMap<GroupMsg, HashSet<(u64, u32)>> = HashMap::new();
    let mut holds: HashMap<GroupMsg, Vec<Hold>> = HashMap::new();
    // (group, producer, key) -> highest seq first-delivered
    let mut order: HashMap<(String, u32, Option<String>), u64> = HashMap::new();
    let mut rejected: HashSet<GroupMsg> = HashSet::new();
    // Received at the delivery limit and not settled since: must be dead-lettered.
    let mut at_limit: HashSet<GroupMsg> = HashSet::new();
    // (group, message) -> dead letters' own stream sequences
    let mut dead: HashMap<GroupMsg, HashSet<u64>> = HashMap::new();
    let mut e2e = histogram();
    let mut publish = histogram();
    let mut phase_e2e: Vec<hdrhistogram::Histogram<u64>> = Vec::new();
    let mut phase_received: Vec<u64> = Vec::new();
    let mut faults: Vec<(String, Timestamp, Option<Timestamp>)> = Vec::new();
    let mut per_sec: PerSecond = BTreeMap::new();

    for e in events {
        match e {
            Event::Phase { name, at } => {
                phases.push((name.clone(), *at));
                phase_e2e.push(histogram());
                phase_received.push(0);
            }
            Event::Fault { name, start, end } => faults.push((name.clone(), *start, *end)),
            Event::Sent {
                stamp,
                at,
                key,
                delay,
            } => {
                let info = SentInfo {
                    stamp: *stamp,
                    key: key.clone(),
                    delay: *delay,
                    phase: phases.len().saturating_sub(1),
                };
                sent.insert((stamp.producer, stamp.seq), info);
                slot(&mut per_sec, start, *at).0.sent += 1;
            }
            Event::Confirmed {
                msg,
                at,
                stream_seq,
                ..
            } => {
                if confirmed.insert(*msg, (*at, *stream_seq)).is_none() {
                    slot(&mut per_sec, start, *at).0.confirmed += 1;
                    if let Some(s) = sent.get(msg) {
                        let us = at.saturating_since(s.stamp.sent).as_micros().max(1);
                        let _ = publish.record(us as u64);
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
                attempt,
                stream_seq,
                published_at,
                deadline,
                intact,
            } => {
                f.deliveries += 1;
                if !intact {
                    f.corrupt += 1;
                }
                let gk = (group.clone(), *msg);
                if max_deliveries.is_some_and(|max| *attempt >= max) {
                    at_limit.insert(gk.clone());
                }
                if let Some(s) = sent.get(msg) {
                    if let Some(d) = s.delay
                        && *at < published_at.saturating_add(d)
                    {
                        f.delay_early += 1;
                    }
                    let again = !attempts
                        .entry(gk.clone())
                        .or_default()
                        .insert((*stream_seq, *attempt));
                    // One attempt handed over twice is that, whether or not the first copy's
                    // ack happened to complete before the second copy arrived.
                    if again {
                        f.duplicates += 1;
                        f.delivered_twice += 1;
                    } else if let Some(seqs) = acked.get(&gk) {
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
                        let lat = at.saturating_since(s.stamp.sent).as_micros().max(1) as u64;
                        let _ = e2e.record(lat);
                        if let Some(h) = phase_e2e.get_mut(s.phase) {
                            let _ = h.record(lat);
                        }
                        if let Some(n) = phase_received.last_mut() {
                            *n += 1;
                        }
                        let b = slot(&mut per_sec, start, *at);
                        b.0.delivered += 1;
                        let _ = b.1.record(lat);
                        let ok = order
                            .entry((group.clone(), s.stamp.producer, s.key.clone()))
                            .or_insert(0);
                        if s.stamp.seq < *ok {
                            f.reorders += 1;
                            if f.reorder_sample.len() < 20 {
                                f.reorder_sample.push((
                                    s.stamp.producer,
                                    s.stamp.seq,
                                    *ok,
                                    at.saturating_since(start).as_secs_f64(),
                                ));
                            }
                        } else {
                            *ok = s.stamp.seq;
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
            }
            | Event::Rejected {
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
                at_limit.remove(&gk);
                if matches!(e, Event::Rejected { .. }) {
                    rejected.insert(gk.clone());
                } else {
                    acked.entry(gk.clone()).or_default().insert(*stream_seq);
                }
                if let Some(h) = holds.get_mut(&gk) {
                    for hold in h.iter_mut().filter(|h| h.0 == *consumer && h.1 <= *at) {
                        hold.2 = hold.2.min(*at);
                    }
                }
            }
            Event::DeadLettered {
                msg,
                group,
                dlq_seq,
                ..
            } => {
                dead.entry((group.clone(), *msg))
                    .or_default()
                    .insert(*dlq_seq);
            }
            Event::Unreadable { .. } => f.corrupt += 1,
        }
    }

    f.sent = sent.len() as u64;
    f.confirmed = confirmed.len() as u64;
    f.failed = failed.iter().filter(|m| !confirmed.contains_key(m)).count() as u64;
    f.unaccounted = sent
        .keys()
        .filter(|m| !confirmed.contains_key(m) && !failed.contains(m))
        .count() as u64;

    // Dead letters: every reject and every message left unsettled at its delivery limit, once.
    f.rejected = rejected.len() as u64;
    f.dead_lettered = dead.len() as u64;
    f.dlq_duplicates = dead.values().map(|s| s.len() as u64 - 1).sum();
    let mut missing: Vec<&GroupMsg> = rejected
        .union(&at_limit)
        .filter(|gk| !dead.contains_key(*gk))
        .collect();
    missing.sort_unstable();
    f.dlq_missing = missing.len() as u64;
    f.dlq_missing_sample = missing
        .into_iter()
        .take(20)
        .map(|(g, (p, s))| (g.clone(), *p, *s))
        .collect();

    f.phases = phase_counts(
        &phases,
        &sent,
        &confirmed,
        &failed,
        groups,
        |g, m| {
            let gk = (g.to_string(), *m);
            first.contains_key(&gk) || dead.contains_key(&gk)
        },
        &mut f,
    );
    for (i, pc) in f.phases.iter_mut().enumerate() {
        pc.received = phase_received.get(i).copied().unwrap_or(0);
        pc.p99_ms = phase_e2e.get(i).map_or(0.0, p99_ms);
    }
    if phases.is_empty()
        && let Some(pc) = f.phases.first_mut()
    {
        pc.received = first.len() as u64;
        pc.p99_ms = p99_ms(&e2e);
    }

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
        b.p99_ms = p99_ms(&h);
        f.timeline.push(b);
    }
    f.recoveries = recoveries(&f.timeline, &faults, &phases, start);
    f.end_to_end = latency(&e2e);
    f.publish = latency(&publish);
    f
}

/// Counts per phase by the phase each message was sent in; fills `f.lost` and its sample.
/// `reached(group, msg)`: delivered to that group, or dead-lettered by it.
fn phase_counts(
    phases: &[(String, Timestamp)],
    sent: &HashMap<MsgKey, SentInfo>,
    confirmed: &HashMap<MsgKey, (Timestamp, u64)>,
    failed: &HashSet<MsgKey>,
    groups: &[String],
    reached: impl Fn(&str, &MsgKey) -> bool,
    f: &mut Findings,
) -> Vec<PhaseCounts> {
    let mut counts: Vec<PhaseCounts> = phases
        .iter()
        .map(|(name, _)| PhaseCounts {
            name: name.clone(),
            ..Default::default()
        })
        .collect();
    if counts.is_empty() {
        counts.push(PhaseCounts {
            name: "run".into(),
            ..Default::default()
        });
    }
    let last_phase = counts.len() - 1;
    let mut lost: Vec<MsgKey> = Vec::new();
    for (msg, s) in sent {
        let pc = &mut counts[s.phase.min(last_phase)];
        pc.sent += 1;
        let everywhere = groups.iter().all(|g| reached(g, msg));
        let anywhere = groups.iter().any(|g| reached(g, msg));
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
    for pc in &mut counts {
        pc.delivered_fraction = if pc.sent == 0 {
            1.0
        } else {
            pc.delivered as f64 / pc.sent as f64
        };
    }
    lost.sort_unstable();
    f.lost = lost.len() as u64;
    f.lost_sample = lost.into_iter().take(20).collect();
    counts
}
