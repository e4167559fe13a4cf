//! One consumer group's delivery state machine: leases, redelivery, delay, TTL, per-key order,
//! dead-lettering decisions.
//!
//! A [`Group`] is owned by its stream and only touched under the stream's lock. Every change goes
//! through [`ConsumerSnapshot::apply`] (so durable groups record exactly what they do) plus a few
//! indexes that make the hot paths logarithmic:
//! - `deadlines`: leased messages by lease deadline (expiry is found without scanning);
//! - `waiting`: examined messages by not-before time (delayed, nacked with delay, backoff);
//! - `due`: examined messages whose time has come, by sequence (redeliveries go first, in order);
//! - `key_seqs`: for per-key order, the outstanding sequences of each key.
//!
//! Work is bounded per call: the cursor advances at most [`SCAN_BUDGET`] records per `take`, and
//! stops while [`LOOKAHEAD`] examined messages already wait (key-blocked), so one hot key cannot
//! make the group hold an unbounded set in memory.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use squall_core::{
    DeadLetter, DeadLetterReason, DeliveryPolicy, Message, Pattern, Subject, Timestamp,
};

use crate::storage::{ConsumerOp, ConsumerSnapshot, StorageError, StoredMessage, StreamStore};

/// Records examined per `take` call before yielding.
pub(crate) const SCAN_BUDGET: usize = 4096;
/// Most examined-but-waiting messages before the cursor stops advancing.
pub(crate) const LOOKAHEAD: usize = 1024;

/// What a group persists as its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupConfig {
    pub pattern: Pattern,
    pub durable: bool,
    pub ack_wait: std::time::Duration,
    pub max_deliveries: Option<u32>,
    pub dead_letter: Option<Subject>,
    pub backoff: Vec<std::time::Duration>,
    pub max_in_flight: usize,
    pub ordered_by_key: bool,
}

impl GroupConfig {
    pub(crate) fn new(pattern: Pattern, durable: bool, p: &DeliveryPolicy) -> Self {
        GroupConfig {
            pattern,
            durable,
            ack_wait: p.ack_wait,
            max_deliveries: p.max_deliveries,
            dead_letter: p.dead_letter.clone(),
            backoff: p.backoff.clone(),
            max_in_flight: p.max_in_flight,
            ordered_by_key: p.ordered_by_key,
        }
    }

    pub(crate) fn policy(&self) -> DeliveryPolicy {
        DeliveryPolicy {
            ack_wait: self.ack_wait,
            max_deliveries: self.max_deliveries,
            dead_letter: self.dead_letter.clone(),
            backoff: self.backoff.clone(),
            max_in_flight: self.max_in_flight,
            ordered_by_key: self.ordered_by_key,
        }
    }
}

/// Counters reported in group statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GroupCounters {
    /// Deliveries made (first deliveries and redeliveries).
    pub delivered: u64,
    /// Of which redeliveries.
    pub redelivered: u64,
    /// Acks.
    pub acked: u64,
    /// Nacks.
    pub nacked: u64,
    /// Leases that expired.
    pub lease_expired: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Messages whose TTL passed before delivery.
    pub expired: u64,
}

/// A dead letter to publish once the stream lock is released.
#[derive(Debug)]
pub(crate) struct DeadLetterJob {
    pub group: Arc<str>,
    pub seq: u64,
    pub to: Subject,
    pub message: Message,
    pub reason: DeadLetterReason,
}

/// A lease granted by [`Group::take`].
#[derive(Debug)]
pub(crate) struct Granted {
    pub stored: StoredMessage,
    pub attempt: u32,
    pub nonce: u64,
    pub deadline: Timestamp,
}

/// Why a settle call was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeaseProblem {
    /// Not held under that nonce (already settled, redelivered, released).
    NotHeld,
    /// Held, but its deadline passed.
    Expired,
}

pub(crate) struct Group {
    pub name: Arc<str>,
    pub config: GroupConfig,
    /// A private consumer of one fan-out subscription (removed with it).
    pub ephemeral: bool,
    pub snap: ConsumerSnapshot,
    deadlines: BTreeSet<(Timestamp, u64)>,
    waiting: BTreeSet<(Timestamp, u64)>,
    due: BTreeSet<u64>,
    keys: HashMap<u64, Arc<str>>,
    key_seqs: HashMap<Arc<str>, BTreeSet<u64>>,
    holders: HashMap<u64, u64>,
    /// Member id -> (deliveries it holds, the most it may hold). The limit is the member's own
    /// (flow control, like a prefetch count); the rest of the policy is the group's.
    pub members: HashMap<u64, (usize, usize)>,
    dying: HashSet<u64>,
    ops: Vec<ConsumerOp>,
    pub counters: GroupCounters,
    metrics: GroupMetrics,
    /// Whether the slow-consumer event was sent for the current episode.
    pub slow_reported: bool,
    /// Since when the group has had no member (`None` while it has some).
    pub idle_since: Option<Timestamp>,
}

impl Group {
    pub(crate) fn new(name: Arc<str>, config: GroupConfig, ephemeral: bool, cursor: u64) -> Self {
        let cfg = serde_json::to_vec(&config).expect("group config serialises");
        let mut g = Group::empty(
            name,
            config,
            ephemeral,
            ConsumerSnapshot::new(Vec::new(), cursor),
        );
        g.record(ConsumerOp::Config(cfg));
        g.record(ConsumerOp::Cursor { to: cursor });
        g
    }

    fn empty(name: Arc<str>, config: GroupConfig, ephemeral: bool, snap: ConsumerSnapshot) -> Self {
        Group {
            metrics: GroupMetrics::new(if ephemeral { "_fanout" } else { &name }),
            name,
            config,
            ephemeral,
            snap,
            deadlines: BTreeSet::new(),
            waiting: BTreeSet::new(),
            due: BTreeSet::new(),
            keys: HashMap::new(),
            key_seqs: HashMap::new(),
            holders: HashMap::new(),
            members: HashMap::new(),
            dying: HashSet::new(),
            ops: Vec::new(),
            counters: GroupCounters::default(),
            slow_reported: false,
            idle_since: None,
        }
    }

    /// Rebuilds a durable group from recorded progress; keys are read back from the store.
    ///
    /// Leases recorded as held stay held until their deadlines: a holder of the previous run may
    /// still be processing, and releasing early would make two holders of one message. Recovery
    /// of those messages (and, with per-key order, their keys) is therefore bounded by `ack_wait`.
    ///
    /// Progress past the end of the log (its tail was lost: a power loss in `buffered` mode, or a
    /// damaged tail cut off by recovery) is rewound, and the rewind recorded, so the messages that
    /// take those sequences next are delivered rather than taken for settled.
    pub(crate) fn restore(
        name: Arc<str>,
        snap: ConsumerSnapshot,
        store: &dyn StreamStore,
        now: Timestamp,
    ) -> Result<Self, String> {
        let config: GroupConfig = serde_json::from_slice(&snap.config)
            .map_err(|e| format!("group `{name}`: unreadable configuration: {e}"))?;
        let mut g = Group::empty(name, config, false, snap);
        let end = store.bounds().last + 1;
        if g.snap.cursor > end {
            let forgotten = g.snap.pending.range(end..).count() + g.snap.ready.range(end..).count();
            tracing::warn!(
                group = %g.name,
                cursor = g.snap.cursor,
                first_lost = end,
                forgotten,
                "consumer progress ran past the end of the log (its tail was lost); examining again from the first lost sequence"
            );
            g.record(ConsumerOp::Rewind { to: end });
            g.flush_ops(store)
                .map_err(|e| format!("group `{}`: cannot record the rewind: {e}", g.name))?;
        }
        for (&seq, p) in &g.snap.pending {
            g.deadlines.insert((p.deadline, seq));
        }
        for (&seq, r) in &g.snap.ready {
            g.waiting.insert((r.not_before, seq));
        }
        if g.config.ordered_by_key {
            let seqs: Vec<u64> = g
                .snap
                .pending
                .keys()
                .chain(g.snap.ready.keys())
                .copied()
                .collect();
            for seq in seqs {
                if let Ok(Some(m)) = store.read(seq) {
                    g.track_key(seq, &m.message);
                }
            }
        }
        g.idle_since = Some(now);
        Ok(g)
    }

    pub(crate) fn max_nonce(&self) -> u64 {
        self.snap
            .pending
            .values()
            .map(|p| p.nonce)
            .max()
            .unwrap_or(0)
    }

    fn record(&mut self, op: ConsumerOp) {
        self.snap.apply(&op);
        if self.config.durable && !self.ephemeral {
            self.ops.push(op);
        }
    }

    /// Hands recorded ops to the store (durable groups only).
    pub(crate) fn flush_ops(&mut self, store: &dyn StreamStore) -> Result<(), StorageError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let r = store.record_consumer(&self.name, &self.ops);
        self.ops.clear();
        r
    }

    fn track_key(&mut self, seq: u64, m: &Message) {
        if !self.config.ordered_by_key {
            return;
        }
        if let Some(k) = m.key() {
            let k: Arc<str> = self
                .key_seqs
                .get_key_value(k)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| k.into());
            self.key_seqs.entry(k.clone()).or_default().insert(seq);
            self.keys.insert(seq, k);
        }
    }

    fn untrack_key(&mut self, seq: u64) {
        if let Some(k) = self.keys.remove(&seq)
            && let Some(set) = self.key_seqs.get_mut(&k)
        {
            set.remove(&seq);
            if set.is_empty() {
                self.key_seqs.remove(&k);
            }
        }
    }

    /// Whether `seq` is the oldest outstanding message of its key (always true without a key or
    /// without per-key order).
    fn is_key_head(&self, seq: u64) -> bool {
        match self.keys.get(&seq) {
            Some(k) => self.key_seqs.get(k).and_then(|s| s.first()) == Some(&seq),
            None => true,
        }
    }

    fn key_is_busy(&self, m: &Message) -> bool {
        self.config.ordered_by_key && m.key().is_some_and(|k| self.key_seqs.contains_key(k))
    }

    fn release_holder(&mut self, seq: u64) {
        if let Some(member) = self.holders.remove(&seq)
            && let Some((n, _)) = self.members.get_mut(&member)
        {
            *n = n.saturating_sub(1);
        }
    }

    fn do_ready(&mut self, seq: u64, not_before: Timestamp, m: &Message) {
        self.track_key(seq, m);
        self.waiting.insert((not_before, seq));
        self.record(ConsumerOp::Ready { seq, not_before });
    }

    fn do_deliver(
        &mut self,
        seq: u64,
        member: u64,
        nonce: u64,
        now: Timestamp,
    ) -> (u32, Timestamp) {
        if let Some(r) = self.snap.ready.get(&seq) {
            self.waiting.remove(&(r.not_before, seq));
        }
        self.due.remove(&seq);
        let deadline = now.saturating_add(self.config.ack_wait);
        self.record(ConsumerOp::Deliver {
            seq,
            nonce,
            at: now,
            deadline,
        });
        self.deadlines.insert((deadline, seq));
        self.holders.insert(seq, member);
        if let Some((n, _)) = self.members.get_mut(&member) {
            *n += 1;
        }
        let attempt = self.snap.pending[&seq].attempts;
        self.counters.delivered += 1;
        self.metrics.delivered.increment(1);
        if attempt > 1 {
            self.counters.redelivered += 1;
            self.metrics.redelivered.increment(1);
        }
        (attempt, deadline)
    }

    fn do_requeue(&mut self, seq: u64, not_before: Timestamp) {
        if let Some(p) = self.snap.pending.get(&seq) {
            self.deadlines.remove(&(p.deadline, seq));
        }
        self.release_holder(seq);
        self.dying.remove(&seq);
        self.record(ConsumerOp::Requeue { seq, not_before });
        self.waiting.insert((not_before, seq));
    }

    fn do_settle(&mut self, seq: u64) {
        if let Some(p) = self.snap.pending.get(&seq) {
            self.deadlines.remove(&(p.deadline, seq));
        }
        if let Some(r) = self.snap.ready.get(&seq) {
            self.waiting.remove(&(r.not_before, seq));
        }
        self.due.remove(&seq);
        self.release_holder(seq);
        self.dying.remove(&seq);
        self.untrack_key(seq);
        self.record(ConsumerOp::Settle { seq });
    }

    /// Checks that `nonce` holds `seq` and the lease is live. An expired lease found here is
    /// processed (requeued or dead-lettered) before reporting.
    fn check_lease(
        &mut self,
        seq: u64,
        nonce: u64,
        now: Timestamp,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), LeaseProblem> {
        match self.snap.pending.get(&seq) {
            Some(p) if p.nonce == nonce && !self.dying.contains(&seq) => {
                if p.deadline <= now {
                    self.expire_leases(now, ctx);
                    Err(LeaseProblem::Expired)
                } else {
                    Ok(())
                }
            }
            _ => Err(LeaseProblem::NotHeld),
        }
    }

    pub(crate) fn ack(
        &mut self,
        seq: u64,
        nonce: u64,
        now: Timestamp,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), LeaseProblem> {
        self.check_lease(seq, nonce, now, ctx)?;
        self.do_settle(seq);
        self.counters.acked += 1;
        self.metrics.acked.increment(1);
        Ok(())
    }

    pub(crate) fn nack(
        &mut self,
        seq: u64,
        nonce: u64,
        delay: std::time::Duration,
        now: Timestamp,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), LeaseProblem> {
        self.check_lease(seq, nonce, now, ctx)?;
        self.counters.nacked += 1;
        self.metrics.nacked.increment(1);
        let attempts = self.snap.pending[&seq].attempts;
        if self
            .config
            .max_deliveries
            .is_some_and(|max| attempts >= max)
        {
            self.start_dead_letter(
                seq,
                DeadLetterReason::MaxDeliveries,
                "nacked on the last allowed delivery",
                now,
                ctx,
            );
        } else {
            self.do_requeue(seq, now.saturating_add(delay));
        }
        Ok(())
    }

    pub(crate) fn reject(
        &mut self,
        seq: u64,
        nonce: u64,
        reason: &str,
        now: Timestamp,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), LeaseProblem> {
        self.check_lease(seq, nonce, now, ctx)?;
        self.start_dead_letter(seq, DeadLetterReason::Rejected, reason, now, ctx);
        Ok(())
    }

    pub(crate) fn extend(
        &mut self,
        seq: u64,
        nonce: u64,
        by: std::time::Duration,
        now: Timestamp,
        ctx: &mut Ctx<'_>,
    ) -> Result<Timestamp, LeaseProblem> {
        self.check_lease(seq, nonce, now, ctx)?;
        let old = self.snap.pending[&seq].deadline;
        let deadline = now.saturating_add(by).max(old);
        self.deadlines.remove(&(old, seq));
        self.deadlines.insert((deadline, seq));
        self.record(ConsumerOp::Extend { seq, deadline });
        Ok(deadline)
    }

    /// Marks `seq` as on its way to the dead-letter subject: no longer deliverable or settleable.
    /// The caller publishes the job's message and then calls [`Group::finish_dead_letter`].
    fn start_dead_letter(
        &mut self,
        seq: u64,
        reason: DeadLetterReason,
        error: &str,
        now: Timestamp,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(p) = self.snap.pending.get(&seq) else {
            return;
        };
        self.deadlines.remove(&(p.deadline, seq));
        let attempt_times = p.attempt_times.clone();
        self.release_holder(seq);
        let stored = match ctx.store.read(seq) {
            Ok(Some(m)) => m,
            _ => {
                // The message is gone (retention) or unreadable: nothing to dead-letter.
                self.do_settle(seq);
                return;
            }
        };
        let policy = self.config.policy();
        let to = match policy.dead_letter_subject(stored.message.subject()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(group = %self.name, seq, "no valid dead-letter subject: {e}; message settled");
                self.do_settle(seq);
                return;
            }
        };
        let envelope = DeadLetter {
            reason,
            error: error.to_string(),
            error_chain: Vec::new(),
            handler: None,
            origin_id: stored.message.id().to_string(),
            origin_subject: stored.message.subject().clone(),
            origin_stream: Some(ctx.stream.to_string()),
            origin_sequence: seq,
            group: (!self.ephemeral).then(|| self.name.to_string()),
            attempts: attempt_times,
            dead_lettered_at: now,
        };
        match envelope.wrap(&stored.message, to.clone()) {
            Ok(message) => {
                self.dying.insert(seq);
                ctx.jobs.push(DeadLetterJob {
                    group: self.name.clone(),
                    seq,
                    to,
                    message,
                    reason,
                });
            }
            Err(e) => {
                tracing::error!(group = %self.name, seq, "cannot build dead letter: {e}; message settled");
                self.do_settle(seq);
            }
        }
    }

    /// Completes a dead letter: settled if it was published, back to waiting if not.
    pub(crate) fn finish_dead_letter(&mut self, seq: u64, published: bool, now: Timestamp) {
        if !self.dying.contains(&seq) {
            return;
        }
        if published {
            self.do_settle(seq);
            self.counters.dead_lettered += 1;
        } else {
            self.do_requeue(seq, now.saturating_add(std::time::Duration::from_secs(1)));
        }
    }

    /// Processes every lease whose deadline has passed.
    pub(crate) fn expire_leases(&mut self, now: Timestamp, ctx: &mut Ctx<'_>) {
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let attempts = self.snap.pending.get(&seq).map_or(0, |p| p.attempts);
            self.counters.lease_expired += 1;
            ctx.expired_leases.push((self.name.clone(), seq, attempts));
            if self
                .config
                .max_deliveries
                .is_some_and(|max| attempts >= max)
            {
                // Reinsert so start_dead_letter finds and removes it consistently.
                self.deadlines.insert((deadline, seq));
                self.start_dead_letter(
                    seq,
                    DeadLetterReason::MaxDeliveries,
                    "lease expired on the last allowed delivery",
                    now,
                    ctx,
                );
            } else {
                let backoff = self.config.policy().backoff_for(attempts);
                // Reinsert so do_requeue removes it consistently.
                self.deadlines.insert((deadline, seq));
                self.do_requeue(seq, now.saturating_add(backoff));
            }
        }
    }

    fn promote_due(&mut self, now: Timestamp) {
        while let Some(&(nb, seq)) = self.waiting.first() {
            if nb > now {
                break;
            }
            self.waiting.pop_first();
            self.due.insert(seq);
        }
    }

    fn ttl_expired(stored: &StoredMessage, now: Timestamp) -> bool {
        stored
            .message
            .ttl()
            .is_some_and(|ttl| stored.published_at.saturating_add(ttl) <= now)
    }

    /// Leases the next deliverable message to `member`, if any and if the member has room.
    pub(crate) fn take(
        &mut self,
        member: u64,
        nonce: &mut dyn FnMut() -> u64,
        now: Timestamp,
        ctx: &mut Ctx<'_>,
    ) -> Result<Option<Granted>, StorageError> {
        self.expire_leases(now, ctx);
        if !ctx.jobs.is_empty() {
            // Dead letters first: until they are published their messages still hold their keys,
            // and the next choice must see them settled.
            return Ok(None);
        }
        let (held, max) = self.members.get(&member).copied().unwrap_or((0, 0));
        if held >= max {
            return Ok(None);
        }
        self.promote_due(now);
        let candidates: Vec<u64> = self.due.iter().copied().collect();
        for seq in candidates {
            if !self.is_key_head(seq) {
                continue;
            }
            let Some(stored) = ctx.store.read(seq)? else {
                self.do_settle(seq);
                continue;
            };
            if Self::ttl_expired(&stored, now) {
                self.do_settle(seq);
                self.counters.expired += 1;
                continue;
            }
            let n = nonce();
            let (attempt, deadline) = self.do_deliver(seq, member, n, now);
            return Ok(Some(Granted {
                stored,
                attempt,
                nonce: n,
                deadline,
            }));
        }
        let bounds = ctx.store.bounds();
        // Only what a crash can no longer take away: progress recorded on a record the log then
        // lost would make the group skip whatever message takes its sequence after a restart.
        let last = bounds.visible;
        let start = self.snap.cursor;
        let mut cursor = self.snap.cursor.max(bounds.first);
        let mut budget = SCAN_BUDGET;
        let mut granted = None;
        while cursor <= last && budget > 0 && self.due.len() + self.waiting.len() < LOOKAHEAD {
            budget -= 1;
            let seq = cursor;
            cursor += 1;
            let Some(stored) = ctx.store.read(seq)? else {
                continue;
            };
            if !self.config.pattern.matches(stored.message.subject()) {
                continue;
            }
            if Self::ttl_expired(&stored, now) {
                self.counters.expired += 1;
                continue;
            }
            if let Some(delay) = stored.message.delay() {
                let nb = stored.published_at.saturating_add(delay);
                if nb > now {
                    self.do_ready(seq, nb, &stored.message);
                    continue;
                }
            }
            if self.key_is_busy(&stored.message) {
                self.do_ready(seq, Timestamp(0), &stored.message);
                continue;
            }
            self.track_key(seq, &stored.message);
            let n = nonce();
            let (attempt, deadline) = self.do_deliver(seq, member, n, now);
            granted = Some(Granted {
                stored,
                attempt,
                nonce: n,
                deadline,
            });
            break;
        }
        if cursor > start && cursor > self.snap.cursor {
            self.record(ConsumerOp::Cursor { to: cursor });
        }
        // Stopped by the scan budget with records left: the caller should come straight back.
        // (Stopping at LOOKAHEAD is not that: it waits for settles.)
        ctx.more = granted.is_none() && budget == 0 && cursor <= last;
        Ok(granted)
    }

    /// When something may next become deliverable or expire without outside events.
    pub(crate) fn next_wake(&self) -> Option<Timestamp> {
        let d = self.deadlines.first().map(|x| x.0);
        let w = self.waiting.first().map(|x| x.0);
        match (d, w) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest lease deadline (what the sweeper must act on).
    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|x| x.0)
    }

    pub(crate) fn add_member(&mut self, member: u64, max_in_flight: usize) {
        self.members.insert(member, (0, max_in_flight));
        self.idle_since = None;
    }

    /// Removes a member, returning what it held to the queue at once.
    pub(crate) fn remove_member(&mut self, member: u64, now: Timestamp) {
        self.members.remove(&member);
        if self.members.is_empty() {
            self.idle_since = Some(now);
        }
        let held: Vec<u64> = self
            .holders
            .iter()
            .filter(|(_, m)| **m == member)
            .map(|(s, _)| *s)
            .collect();
        for seq in held {
            if !self.dying.contains(&seq) {
                self.do_requeue(seq, now);
            }
        }
    }

    /// Messages examined but not settled plus messages not yet examined (matching or not).
    pub(crate) fn lag(&self, last: u64) -> u64 {
        last.saturating_sub(self.snap.ack_floor())
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.snap.pending.len()
    }

    pub(crate) fn waiting_len(&self) -> usize {
        self.snap.ready.len()
    }
}

/// Per-call context: the store and what the call produced for the caller to act on after the
/// lock is released.
pub(crate) struct Ctx<'a> {
    pub stream: &'a str,
    pub store: &'a dyn StreamStore,
    pub jobs: Vec<DeadLetterJob>,
    pub expired_leases: Vec<(Arc<str>, u64, u32)>,
    /// `take` stopped on its scan budget with records left to examine.
    pub more: bool,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(stream: &'a str, store: &'a dyn StreamStore) -> Self {
        Ctx {
            stream,
            store,
            jobs: Vec::new(),
            expired_leases: Vec::new(),
            more: false,
        }
    }
}

/// Metric handles of one group, registered once (labels are allocated at creation, not per
/// delivery). Fan-out subscriptions share the group label `_fanout` to bound label cardinality.
struct GroupMetrics {
    delivered: metrics::Counter,
    redelivered: metrics::Counter,
    acked: metrics::Counter,
    nacked: metrics::Counter,
}

impl GroupMetrics {
    fn new(group: &str) -> Self {
        let g = group.to_string();
        GroupMetrics {
            delivered: metrics::counter!("squall_delivered_total", "group" => g.clone()),
            redelivered: metrics::counter!("squall_redelivered_total", "group" => g.clone()),
            acked: metrics::counter!("squall_acked_total", "group" => g.clone()),
            nacked: metrics::counter!("squall_nacked_total", "group" => g),
        }
    }
}
