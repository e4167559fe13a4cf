//! The bookkeeping of one consumer, free of I/O: the records it holds per partition, their
//! leases, redelivery timers, and the rule that offsets are committed only up to the first
//! record not yet settled.
//!
//! Each partition keeps the records fetched and not yet committed in offset order. A record is
//! *queued* (waiting to be handed out), *leased* (held by the application until its deadline),
//! *waiting* (nacked or expired, due again later), *settling* (being dead-lettered) or *acked*.
//! Acked records at the front of a partition are dropped and the partition's commit position
//! becomes the next record still held (or, with none, one past the last offset seen): acking
//! offset 5 before 4 commits nothing past 4, and once 4 is acked both go.
//!
//! The number of records handed out and not yet committed (the *window*) never exceeds the
//! subscription's `max_in_flight`; records fetched ahead (up to `prefetch` more) wait queued.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use squall_core::{
    DeadLetter, DeadLetterReason, DeliveryPolicy, Error, ErrorKind, Message, Result, Timestamp,
};
use tokio::time::Instant;

/// A topic partition.
pub(crate) type Tp = (Arc<str>, i32);

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Queued,
    Leased { nonce: u64, deadline: Instant },
    Waiting,
    Settling,
    Acked,
}

/// One fetched record.
#[derive(Debug)]
pub(crate) struct Entry {
    pub message: Message,
    pub published_at: Timestamp,
    /// Deliveries so far, by this consumer and (where known) earlier owners.
    pub attempt: u32,
    pub attempts_at: Vec<Timestamp>,
    pub handed_out: bool,
    pub stage: Stage,
}

/// One assigned partition.
#[derive(Debug, Default)]
pub(crate) struct Part {
    entries: BTreeMap<i64, Entry>,
    /// One past the highest offset seen (a lower bound before the first record).
    next_offset: i64,
    /// The position last committed (or started at).
    committed: i64,
    /// Where the partition started.
    initial: i64,
    /// Whether it resumed from a committed offset.
    pub resumed: bool,
    /// Records below this offset are skipped (a sequence start).
    pub min_offset: i64,
    /// Records stamped before this (milliseconds) are skipped (a time start).
    pub min_ts_ms: Option<i64>,
    /// Deliveries of offsets by earlier owners.
    prior: HashMap<i64, u32>,
    /// Unsettled offsets per key (with `ordered_by_key`).
    keys: HashMap<Arc<str>, BTreeSet<i64>>,
}

impl Part {
    /// A partition starting at `start` (a lower bound of the first offset).
    pub(crate) fn new(start: i64, prior: BTreeMap<i64, u32>) -> Part {
        Part {
            next_offset: start.max(0),
            committed: start.max(0),
            initial: start.max(0),
            prior: prior.into_iter().collect(),
            ..Part::default()
        }
    }

    /// The offset to commit: the first record still held, else one past the last seen.
    pub(crate) fn position(&self) -> i64 {
        self.entries
            .first_key_value()
            .map(|(o, _)| *o)
            .unwrap_or(self.next_offset)
    }

    /// Deliveries of every held offset handed out (acked ones too: without a commit past
    /// them they are delivered again), and of earlier owners' offsets not fetched again yet:
    /// what the next owner should know.
    pub(crate) fn attempts(&self) -> BTreeMap<i64, u32> {
        let pos = self.position();
        let mut out: BTreeMap<i64, u32> = self
            .prior
            .iter()
            .filter(|(o, _)| **o >= pos)
            .map(|(o, a)| (*o, *a))
            .collect();
        for (o, e) in &self.entries {
            if e.handed_out {
                out.insert(*o, e.attempt);
            }
        }
        out
    }
}

/// What [`State::offer`] did with a record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Accepted,
    /// Already seen, not assigned, or its partition is paused: nothing changed.
    Ignored,
    /// Filtered out by the start position or the pattern; counted as done.
    Skipped,
    /// No room: pause the partition and fetch again from this offset later.
    Overflow(i64),
}

/// A record to dead-letter.
#[derive(Debug)]
pub(crate) struct Job {
    pub tp: Tp,
    pub offset: i64,
    pub message: Message,
    pub envelope: DeadLetter,
}

/// The effects of settling a delivery that the caller carries out after unlocking.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    pub dead_letters: Vec<Job>,
    /// A partition's commit position moved.
    pub commit: bool,
    /// Partitions to resume fetching.
    pub resume: Vec<Tp>,
}

/// What a handed-out record becomes.
pub(crate) struct Taken {
    /// No lease was timed before this one (the timer task has nothing scheduled).
    pub first_timer: bool,
    pub offset: i64,
    pub message: Message,
    pub published_at: Timestamp,
    pub attempt: u32,
    pub nonce: u64,
    pub deadline: Timestamp,
}

/// How a settle that dead-letters ends.
pub(crate) enum Finish {
    /// Published: the record is done.
    Done,
    /// Publishing failed: deliver it again.
    Requeue,
    /// A reject failed: the caller keeps its lease.
    Restore { nonce: u64, deadline: Instant },
}

/// The subscription's settings the bookkeeping needs.
pub(crate) struct Rules {
    pub policy: DeliveryPolicy,
    pub group: Option<Arc<str>>,
    /// `max_in_flight + prefetch`.
    pub buffer: usize,
    /// Whether positions are committed (in a group).
    pub commits: bool,
}

/// All of one consumer's bookkeeping.
#[derive(Default)]
pub(crate) struct State {
    pub parts: HashMap<Tp, Part>,
    ready: VecDeque<(Tp, i64)>,
    waiting: BTreeMap<(Instant, u64), (Tp, i64)>,
    deadlines: BTreeSet<(Instant, u64)>,
    leases: HashMap<u64, (Tp, i64)>,
    total: usize,
    window: usize,
    pub errors: VecDeque<Error>,
    pub closed: bool,
    pub paused: HashSet<Tp>,
    pub dirty: HashSet<Tp>,
    /// Assignments received (a group subscription waits for the first).
    pub assignments: u64,
    seq: u64,
}

const MAX_ERRORS: usize = 16;
const MAX_ATTEMPT_TIMES: usize = 64;

impl State {
    /// Queues an error for `next()`, dropping the oldest beyond a few.
    pub(crate) fn report(&mut self, e: Error) {
        if self.errors.len() >= MAX_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(e);
    }

    /// Records held, and records handed out and not committed.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.total, self.window)
    }

    /// Adds partition `tp`.
    pub(crate) fn assign(&mut self, tp: Tp, part: Part) {
        if let Some(old) = self.parts.insert(tp.clone(), part) {
            self.drop_part(&tp, old);
        }
        self.assignments += 1;
    }

    /// Removes partition `tp`: its deliveries' leases end. Returns its commit position, the
    /// attempt counts for the next owner, and whether the position is worth committing (it
    /// moved, or it is a committed one with attempts to hand on; a fresh partition that never
    /// moved keeps the group without a position, so the next owner applies its start).
    pub(crate) fn revoke(&mut self, tp: &Tp) -> Option<(i64, BTreeMap<i64, u32>, bool)> {
        let part = self.parts.remove(tp)?;
        let (position, attempts) = (part.position(), part.attempts());
        let commit = position > part.initial || (part.resumed && !attempts.is_empty());
        self.drop_part(tp, part);
        Some((position, attempts, commit))
    }

    fn drop_part(&mut self, tp: &Tp, part: Part) {
        for e in part.entries.values() {
            if let Stage::Leased { nonce, deadline } = e.stage {
                self.leases.remove(&nonce);
                self.deadlines.remove(&(deadline, nonce));
            }
            self.total -= 1;
            if e.handed_out {
                self.window -= 1;
            }
        }
        self.paused.remove(tp);
        self.dirty.remove(tp);
    }

    /// Ends every lease (the consumer is closing): later settles fail with `LeaseExpired`.
    pub(crate) fn drop_leases(&mut self) {
        self.leases.clear();
        self.deadlines.clear();
    }

    /// Takes a fetched record. `keep` is false for records the subscription filters out.
    pub(crate) fn offer(
        &mut self,
        rules: &Rules,
        tp: &Tp,
        offset: i64,
        timestamp_ms: Option<i64>,
        record: Option<(Message, Timestamp)>,
    ) -> Offer {
        if self.closed || self.paused.contains(tp) {
            return Offer::Ignored;
        }
        let total = self.total;
        let Some(part) = self.parts.get_mut(tp) else {
            return Offer::Ignored;
        };
        if offset < part.next_offset {
            return Offer::Ignored;
        }
        if total >= rules.buffer {
            self.paused.insert(tp.clone());
            return Offer::Overflow(offset);
        }
        let before = part.position();
        part.next_offset = offset + 1;
        let too_early = part
            .min_ts_ms
            .is_some_and(|min| timestamp_ms.is_some_and(|t| t < min));
        let Some((message, published_at)) =
            record.filter(|_| offset >= part.min_offset && !too_early)
        else {
            part.prior.remove(&offset);
            if rules.commits && part.position() > before {
                self.dirty.insert(tp.clone());
            }
            return Offer::Skipped;
        };
        if rules.policy.ordered_by_key
            && let Some(k) = message.key()
        {
            part.keys.entry(k.into()).or_default().insert(offset);
        }
        part.entries.insert(
            offset,
            Entry {
                message,
                published_at,
                attempt: 0,
                attempts_at: Vec::new(),
                handed_out: false,
                stage: Stage::Queued,
            },
        );
        self.total += 1;
        self.ready.push_back((tp.clone(), offset));
        Offer::Accepted
    }

    /// Hands out the next record that may go: in arrival order, a fresh record only while the
    /// window has room, a keyed record (with `ordered_by_key`) only when it is its key's first
    /// unsettled record.
    pub(crate) fn take(&mut self, rules: &Rules, nonce: u64) -> Option<Taken> {
        let mut skipped = Vec::new();
        let mut chosen = None;
        while let Some((tp, off)) = self.ready.pop_front() {
            let Some(part) = self.parts.get(&tp) else {
                continue;
            };
            let Some(e) = part.entries.get(&off) else {
                continue;
            };
            if e.stage != Stage::Queued {
                continue;
            }
            if !e.handed_out && self.window >= rules.policy.max_in_flight {
                skipped.push((tp, off));
                continue;
            }
            if rules.policy.ordered_by_key
                && let Some(k) = e.message.key()
                && part.keys.get(k).and_then(|s| s.first()) != Some(&off)
            {
                skipped.push((tp, off));
                continue;
            }
            chosen = Some((tp, off));
            break;
        }
        for s in skipped.into_iter().rev() {
            self.ready.push_front(s);
        }
        let (tp, off) = chosen?;
        let now = Instant::now();
        let deadline = now + rules.policy.ack_wait;
        let part = self.parts.get_mut(&tp).expect("chosen partition");
        let e = part.entries.get_mut(&off).expect("chosen entry");
        if !e.handed_out {
            e.handed_out = true;
            e.attempt = part.prior.remove(&off).unwrap_or(0);
            self.window += 1;
        }
        e.attempt += 1;
        if e.attempts_at.len() >= MAX_ATTEMPT_TIMES {
            e.attempts_at.remove(0);
        }
        e.attempts_at.push(Timestamp::now());
        e.stage = Stage::Leased { nonce, deadline };
        self.leases.insert(nonce, (tp.clone(), off));
        let first_timer = self.deadlines.is_empty() && self.waiting.is_empty();
        self.deadlines.insert((deadline, nonce));
        Some(Taken {
            first_timer,
            offset: off,
            message: e.message.clone(),
            published_at: e.published_at,
            attempt: e.attempt,
            nonce,
            deadline: Timestamp::now().saturating_add(rules.policy.ack_wait),
        })
    }

    /// The live lease `nonce`, ended if its deadline passed (the effects then say what became
    /// of the record).
    fn lease(&mut self, rules: &Rules, nonce: u64, fx: &mut Effects) -> Result<(Tp, i64)> {
        let expired = || {
            Error::new(
                ErrorKind::LeaseExpired,
                "the lease ended (expired, or the consumer closed or lost the partition)",
            )
        };
        let (tp, off) = self.leases.get(&nonce).cloned().ok_or_else(expired)?;
        let stage = self
            .parts
            .get(&tp)
            .and_then(|p| p.entries.get(&off))
            .map(|e| e.stage);
        match stage {
            Some(Stage::Leased { nonce: n, deadline }) if n == nonce => {
                if Instant::now() > deadline {
                    self.leases.remove(&nonce);
                    self.deadlines.remove(&(deadline, nonce));
                    self.expire(rules, &tp, off, "lease expired", fx);
                    return Err(expired());
                }
                Ok((tp, off))
            }
            _ => {
                self.leases.remove(&nonce);
                Err(expired())
            }
        }
    }

    fn unlease(&mut self, nonce: u64, tp: &Tp, off: i64) {
        self.leases.remove(&nonce);
        if let Some(Stage::Leased { deadline, .. }) = self.stage(tp, off) {
            self.deadlines.remove(&(deadline, nonce));
        }
    }

    fn stage(&self, tp: &Tp, off: i64) -> Option<Stage> {
        self.parts.get(tp)?.entries.get(&off).map(|e| e.stage)
    }

    fn set_stage(&mut self, tp: &Tp, off: i64, stage: Stage) {
        if let Some(e) = self.parts.get_mut(tp).and_then(|p| p.entries.get_mut(&off)) {
            e.stage = stage;
        }
    }

    /// Acks lease `nonce`.
    pub(crate) fn ack(&mut self, rules: &Rules, nonce: u64, fx: &mut Effects) -> Result<()> {
        let (tp, off) = self.lease(rules, nonce, fx)?;
        self.unlease(nonce, &tp, off);
        self.done(rules, &tp, off, fx);
        Ok(())
    }

    /// Marks a record done and drops the acked front of its partition.
    fn done(&mut self, rules: &Rules, tp: &Tp, off: i64, fx: &mut Effects) {
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        let before = part.position();
        if let Some(e) = part.entries.get_mut(&off) {
            e.stage = Stage::Acked;
            if let Some(k) = e.message.key()
                && let Some(set) = part.keys.get_mut(k)
            {
                set.remove(&off);
                if set.is_empty() {
                    part.keys.remove(k);
                }
            }
        }
        while let Some(entry) = part.entries.first_entry() {
            if entry.get().stage != Stage::Acked {
                break;
            }
            let e = entry.remove();
            self.total -= 1;
            if e.handed_out {
                self.window -= 1;
            }
        }
        if rules.commits && part.position() > before {
            self.dirty.insert(tp.clone());
            fx.commit = true;
        }
        if !self.paused.is_empty() && self.total <= rules.buffer / 2 {
            fx.resume.extend(self.paused.drain());
        }
    }

    /// Nacks lease `nonce`: due again after `delay`, or dead-lettered on its last allowed
    /// delivery.
    pub(crate) fn nack(
        &mut self,
        rules: &Rules,
        nonce: u64,
        delay: Duration,
        fx: &mut Effects,
    ) -> Result<()> {
        let (tp, off) = self.lease(rules, nonce, fx)?;
        self.unlease(nonce, &tp, off);
        self.retry(
            rules,
            &tp,
            off,
            delay,
            "nacked on its last allowed delivery",
            fx,
        );
        Ok(())
    }

    fn retry(
        &mut self,
        rules: &Rules,
        tp: &Tp,
        off: i64,
        delay: Duration,
        why: &str,
        fx: &mut Effects,
    ) {
        let attempt = self
            .parts
            .get(tp)
            .and_then(|p| p.entries.get(&off))
            .map_or(0, |e| e.attempt);
        if rules
            .policy
            .max_deliveries
            .is_some_and(|max| attempt >= max)
        {
            if let Some(job) = self.settle(rules, tp, off, DeadLetterReason::MaxDeliveries, why) {
                fx.dead_letters.push(job);
            }
            return;
        }
        if delay.is_zero() {
            self.set_stage(tp, off, Stage::Queued);
            self.ready.push_back((tp.clone(), off));
        } else {
            self.set_stage(tp, off, Stage::Waiting);
            self.seq += 1;
            self.waiting
                .insert((Instant::now() + delay, self.seq), (tp.clone(), off));
        }
    }

    fn expire(&mut self, rules: &Rules, tp: &Tp, off: i64, why: &str, fx: &mut Effects) {
        let attempt = self
            .parts
            .get(tp)
            .and_then(|p| p.entries.get(&off))
            .map_or(0, |e| e.attempt);
        let delay = rules.policy.backoff_for(attempt);
        self.retry(rules, tp, off, delay, why, fx);
    }

    /// Moves a record to settling and builds its dead letter.
    fn settle(
        &mut self,
        rules: &Rules,
        tp: &Tp,
        off: i64,
        reason: DeadLetterReason,
        error: &str,
    ) -> Option<Job> {
        let e = self.parts.get_mut(tp)?.entries.get_mut(&off)?;
        e.stage = Stage::Settling;
        let envelope = DeadLetter::new(
            &e.message,
            reason,
            error,
            Some(tp.0.to_string()),
            u64::try_from(off).map(|o| o + 1).unwrap_or(0),
            rules.group.as_deref().map(str::to_string),
            e.attempts_at.clone(),
        );
        Some(Job {
            tp: tp.clone(),
            offset: off,
            message: e.message.clone(),
            envelope,
        })
    }

    /// Starts rejecting lease `nonce`: the record is settling until [`State::finish`].
    pub(crate) fn reject(
        &mut self,
        rules: &Rules,
        nonce: u64,
        reason: &str,
        fx: &mut Effects,
    ) -> Result<(Job, Instant)> {
        let (tp, off) = self.lease(rules, nonce, fx)?;
        let Some(Stage::Leased { deadline, .. }) = self.stage(&tp, off) else {
            return Err(Error::new(ErrorKind::LeaseExpired, "the lease ended"));
        };
        self.unlease(nonce, &tp, off);
        let job = self
            .settle(rules, &tp, off, DeadLetterReason::Rejected, reason)
            .ok_or_else(|| Error::new(ErrorKind::LeaseExpired, "the lease ended"))?;
        Ok((job, deadline))
    }

    /// Ends a dead-lettering started by a nack, an expiry or a reject.
    pub(crate) fn finish(
        &mut self,
        rules: &Rules,
        tp: &Tp,
        off: i64,
        how: Finish,
        fx: &mut Effects,
    ) {
        if self.stage(tp, off) != Some(Stage::Settling) {
            return;
        }
        match how {
            Finish::Done => self.done(rules, tp, off, fx),
            Finish::Requeue => {
                self.set_stage(tp, off, Stage::Queued);
                self.ready.push_back((tp.clone(), off));
            }
            Finish::Restore { nonce, deadline } => {
                self.set_stage(tp, off, Stage::Leased { nonce, deadline });
                self.leases.insert(nonce, (tp.clone(), off));
                self.deadlines.insert((deadline, nonce));
            }
        }
    }

    /// Extends lease `nonce` to `by` from now.
    pub(crate) fn extend(
        &mut self,
        rules: &Rules,
        nonce: u64,
        by: Duration,
        fx: &mut Effects,
    ) -> Result<Timestamp> {
        let (tp, off) = self.lease(rules, nonce, fx)?;
        let Some(Stage::Leased { deadline, .. }) = self.stage(&tp, off) else {
            return Err(Error::new(ErrorKind::LeaseExpired, "the lease ended"));
        };
        let new = Instant::now() + by;
        self.deadlines.remove(&(deadline, nonce));
        self.deadlines.insert((new, nonce));
        self.set_stage(
            &tp,
            off,
            Stage::Leased {
                nonce,
                deadline: new,
            },
        );
        Ok(Timestamp::now().saturating_add(by))
    }

    /// Ends expired leases and makes due records ready; returns whether something became
    /// ready and when to look again.
    pub(crate) fn tick(&mut self, rules: &Rules, fx: &mut Effects) -> (bool, Option<Instant>) {
        let now = Instant::now();
        let mut woke = false;
        while let Some(&(deadline, nonce)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some((tp, off)) = self.leases.remove(&nonce) else {
                continue;
            };
            if self.stage(&tp, off) == Some(Stage::Leased { nonce, deadline }) {
                self.expire(rules, &tp, off, "lease expired", fx);
                woke = true;
            }
        }
        while let Some((&(due, seq), _)) = self.waiting.first_key_value() {
            if due > now {
                break;
            }
            let (tp, off) = self.waiting.remove(&(due, seq)).expect("first waiting");
            if self.stage(&tp, off) == Some(Stage::Waiting) {
                self.set_stage(&tp, off, Stage::Queued);
                self.ready.push_back((tp, off));
                woke = true;
            }
        }
        let next = [
            self.deadlines.first().map(|d| d.0),
            self.waiting.first_key_value().map(|(k, _)| k.0),
        ]
        .into_iter()
        .flatten()
        .min();
        (woke, next)
    }

    /// The partitions whose commit position moved since their last commit, with the position
    /// and the attempt counts to leave for the next owner; marks them committed.
    pub(crate) fn take_commits(&mut self) -> Vec<(Tp, i64, BTreeMap<i64, u32>)> {
        let mut out = Vec::new();
        for tp in self.dirty.drain() {
            if let Some(part) = self.parts.get_mut(&tp) {
                let pos = part.position();
                if pos > part.committed {
                    part.committed = pos;
                    out.push((tp, pos, part.attempts()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
