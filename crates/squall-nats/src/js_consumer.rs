//! JetStream subscriptions: a pull consumer per subscription (fan-out) or per group, and the
//! task that pulls for it.
//!
//! | subscription | JetStream consumer |
//! |---|---|
//! | no group | an ephemeral pull consumer `squall-<uuid>`, deleted on close (or `fanout_expiry` after its process vanished) |
//! | group | a pull consumer named after the group, shared by its members |
//! | durable group | the same as a durable consumer (kept with no members and across server restarts) |
//! | non-durable group | removed by the server `group_expiry` after its last member left |
//! | pattern | the consumer's filter subject |
//! | start `New`/`First`/`Sequence`/`Time` | deliver policy `new`/`all`/`by_start_sequence`/`by_start_time` (only when the consumer is created: a group continues from its position) |
//! | `ack_wait` | `ack_wait` |
//! | `backoff` | JetStream `backoff`: the server redelivers `ack_wait + backoff[i]` after delivery `i + 1` |
//! | `max_in_flight` | pulls for at most that many unsettled deliveries per member; also `max_ack_pending` of a fan-out consumer (a group's consumer has none: its members' limits apply) |
//! | `max_deliveries` | counted by the adapter: the delivery after the last allowed one is dead-lettered, then terminated |
//!
//! A group's members share one consumer, so its policy is the group's: a member subscribing
//! with another `ack_wait`, `backoff` or `max_deliveries` updates it for all; a member with
//! another pattern, or durability, is refused with `Conflict`.
//!
//! The pulling task asks for as many messages as free slots (`max_in_flight` minus live leases),
//! one pull request at a time, each waiting up to `pull_expires` on the server; after a
//! reconnect it pulls again at once, into a new inbox (a restarted server forgets open pull
//! requests; one that kept them finds no interest in the old inbox). Closing a
//! consumer naks everything it holds at once (handed out or buffered), so other members get it
//! without waiting for `ack_wait`, and deletes a fan-out consumer (which ends its open pull
//! request). A group member's open pull request cannot be withdrawn: what it still brings is
//! nak'd by the pulling task as it arrives. Dropping a consumer without `close` naks only what
//! was never handed out; handed-out deliveries can still be settled, or their leases expire.
//!
//! NATS 2.9 can restart the delivery count of a redelivery that meets an expiring pull request
//! (seen here with 2.9.10); the count each consumer keeps of its own deliveries is used as a
//! floor, and a `pull_expires` longer than typical `ack_wait`s makes such meetings rare.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use squall_core::{
    Acker, Consumer, DeadLetterReason, Delivery, DeliveryInfo, Error, ErrorKind, LeaseId,
    MessageId, Result, StartPosition, Subscription, Timestamp,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::codec::{self, Received};
use crate::error;
use crate::lease::{Held, JsAcker, Shared, Table};
use crate::publish::{Js, Publishing};

const RUN: u8 = 0;
const DROPPED: u8 = 1;
const CLOSING: u8 = 2;

/// The `max_deliver` sent when a backoff is set (JetStream requires one longer than the
/// backoff list); squall counts deliveries itself.
const UNBOUNDED_WITH_BACKOFF: i64 = 1_000_000;

/// A JetStream subscription.
pub struct JsConsumer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Result<Delivery>>,
    stop: Arc<AtomicU8>,
    closed: bool,
}

fn consumer_config(p: &Publishing, sub: &Subscription) -> (String, pull::Config) {
    let c = &p.config;
    let policy = &sub.policy;
    let deliver_policy = match sub.start_position() {
        StartPosition::New => DeliverPolicy::New,
        StartPosition::First | StartPosition::Sequence(0) => DeliverPolicy::All,
        StartPosition::Sequence(n) => DeliverPolicy::ByStartSequence { start_sequence: n },
        StartPosition::Time(t) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_nanos()))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
    };
    let backoff: Vec<Duration> = policy
        .backoff
        .iter()
        .map(|b| policy.ack_wait + *b)
        .collect();
    let mut config = pull::Config {
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: policy.ack_wait,
        max_deliver: if backoff.is_empty() {
            -1
        } else {
            UNBOUNDED_WITH_BACKOFF.max(backoff.len() as i64 + 1)
        },
        backoff,
        filter_subject: sub.pattern.to_string(),
        ..Default::default()
    };
    let name = match (&sub.group, sub.durable) {
        (Some(g), true) => {
            config.durable_name = Some(g.clone());
            config.max_ack_pending = -1;
            g.clone()
        }
        (Some(g), false) => {
            config.name = Some(g.clone());
            config.inactive_threshold = c.group_expiry;
            config.max_ack_pending = -1;
            g.clone()
        }
        (None, _) => {
            let n = format!("squall-{}", uuid::Uuid::now_v7().simple());
            config.name = Some(n.clone());
            config.inactive_threshold = c.fanout_expiry;
            config.max_ack_pending = i64::try_from(policy.max_in_flight).unwrap_or(-1);
            n
        }
    };
    config.description = Some(format!("squall subscription to {}", sub.pattern));
    (name, config)
}

/// Creates the group's consumer, or joins it after checking it serves the same pattern and
/// durability (updating its policy if it differs).
async fn group_consumer(
    js: &Js,
    stream: &str,
    name: &str,
    mut want: pull::Config,
) -> Result<PullConsumer> {
    let existing = js
        .ctx
        .get_consumer_from_stream::<pull::Config, _, _>(name, stream)
        .await;
    match existing {
        Ok(c) => {
            let have = &c.cached_info().config;
            if have.filter_subject != want.filter_subject {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "group `{name}` on stream `{stream}` consumes `{}`, not `{}`: members of \
                         a group subscribe to one pattern",
                        have.filter_subject, want.filter_subject
                    ),
                ));
            }
            if have.durable_name.is_some() != want.durable_name.is_some() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "group `{name}` on stream `{stream}` exists as a {} group",
                        if have.durable_name.is_some() {
                            "durable"
                        } else {
                            "non-durable"
                        }
                    ),
                ));
            }
            let same = have.ack_wait == want.ack_wait
                && have.backoff == want.backoff
                && have.max_deliver == want.max_deliver
                && have.inactive_threshold == want.inactive_threshold;
            if same {
                return Ok(c);
            }
            // The start position only applies to a new group.
            want.deliver_policy = have.deliver_policy;
            want.max_ack_pending = have.max_ack_pending;
            create(js, stream, want).await
        }
        Err(e) => {
            let err = error::consumer(&format!("looking up group `{name}`"), e);
            if err.kind() != ErrorKind::NotFound {
                return Err(err);
            }
            create(js, stream, want).await
        }
    }
}

async fn create(js: &Js, stream: &str, config: pull::Config) -> Result<PullConsumer> {
    js.ctx
        .create_consumer_on_stream(config, stream)
        .await
        .map_err(|e| error::consumer(&format!("creating a consumer on stream `{stream}`"), e))
}

impl JsConsumer {
    pub(crate) async fn open(p: Arc<Publishing>, sub: Subscription) -> Result<JsConsumer> {
        if sub.policy.ordered_by_key {
            return Err(Error::unsupported(
                p.backend,
                "per-key ordering (ordered_by_key): JetStream cannot hold back one key across a group's members",
            ));
        }
        let js = p.js.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "JetStream subscription without JetStream",
            )
        })?;
        let bound = js
            .streams
            .for_pattern(&sub.pattern, sub.stream.as_deref())
            .await?;
        let (name, config) = consumer_config(&p, &sub);
        let consumer = match &sub.group {
            Some(_) => group_consumer(js, &bound.name, &name, config.clone()).await?,
            None => create(js, &bound.name, config.clone()).await?,
        };
        let ack_wait = sub.policy.ack_wait;
        let shared = Arc::new(Shared {
            publishing: p.clone(),
            stream: bound.name.clone(),
            consumer: name,
            group: sub.group.clone().map(Into::into),
            policy: sub.policy.clone(),
            table: Mutex::new(Table::default()),
            wake: tokio::sync::Notify::new(),
            margin: (ack_wait / 20).min(Duration::from_millis(250)),
        });
        let inbox = p.client.new_inbox();
        let inbox_sub = p.client.subscribe(inbox.clone()).await.map_err(|e| {
            Error::new(ErrorKind::Unavailable, "subscribing to a pull inbox").with_source(e)
        })?;
        let (tx, rx) = mpsc::channel(sub.policy.max_in_flight.clamp(1, 4096));
        let stop = Arc::new(AtomicU8::new(RUN));
        let fetch = Fetch {
            acker: Arc::new(JsAcker(shared.clone())),
            shared: shared.clone(),
            consumer,
            config,
            fan_out: sub.group.is_none(),
            tx,
            stop: stop.clone(),
            inbox,
            sub: inbox_sub,
            connections: p.connections.clone(),
            last_seq: 0,
            reported: false,
        };
        tokio::spawn(fetch.run());
        Ok(JsConsumer {
            shared,
            rx,
            stop,
            closed: false,
        })
    }

    /// The stream this consumer reads.
    pub fn stream(&self) -> &str {
        &self.shared.stream
    }

    /// The JetStream consumer's name.
    pub fn consumer_name(&self) -> &str {
        &self.shared.consumer
    }
}

#[async_trait]
impl Consumer for JsConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        if self.closed {
            return None;
        }
        loop {
            let d = match self.rx.recv().await? {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            let lease = d.lease();
            let live = {
                let mut t = self.shared.table.lock().expect("lease table");
                match t
                    .entries
                    .get_mut(&lease.sequence)
                    .filter(|e| e.nonce == lease.nonce)
                    .and_then(|e| e.held.as_mut())
                {
                    Some(h) if h.deadline > Instant::now() => {
                        h.handed_out = true;
                        true
                    }
                    _ => false,
                }
            };
            // A delivery whose lease ended while buffered is redelivered by the server.
            if live {
                return Some(Ok(d));
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.stop.store(CLOSING, Ordering::Release);
        self.shared.wake.notify_one();
        self.rx.close();
        // Everything held goes back at once; what an open pull request still brings is
        // released by the pulling task as it arrives.
        release_held(&self.shared, true).await;
        if self.shared.group.is_none()
            && let Some(js) = self.shared.publishing.js.as_ref()
        {
            // Deleting a fan-out consumer also ends its open pull request.
            if let Err(e) = js
                .ctx
                .delete_consumer_from_stream(&self.shared.consumer, &self.shared.stream)
                .await
            {
                let e = error::consumer(
                    &format!("deleting fan-out consumer `{}`", self.shared.consumer),
                    e,
                );
                if e.kind() != ErrorKind::NotFound {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Drop for JsConsumer {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self
                .stop
                .compare_exchange(RUN, DROPPED, Ordering::AcqRel, Ordering::Acquire);
            self.shared.wake.notify_one();
        }
    }
}

/// The pulling task of one consumer.
struct Fetch {
    shared: Arc<Shared>,
    acker: Arc<dyn Acker>,
    consumer: PullConsumer,
    config: pull::Config,
    fan_out: bool,
    tx: mpsc::Sender<Result<Delivery>>,
    stop: Arc<AtomicU8>,
    inbox: String,
    sub: async_nats::Subscriber,
    /// The connection count seen when the open pull request was sent.
    connections: tokio::sync::watch::Receiver<u64>,
    last_seq: u64,
    reported: bool,
}

impl Fetch {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) != RUN || self.tx.is_closed()
    }

    fn max(&self) -> usize {
        self.shared.policy.max_in_flight
    }

    /// Reports `e` to the application once per outage.
    fn report(&mut self, e: Error) {
        tracing::warn!(consumer = %self.shared.consumer, error = %e, "JetStream consumer");
        if !self.reported {
            self.reported = true;
            let _ = self.tx.try_send(Err(e));
        }
    }

    async fn run(mut self) {
        let expires = self.shared.publishing.config.pull_expires;
        let mut backoff = Duration::from_millis(100);
        while !self.stopping() {
            let now = Instant::now();
            let (live, earliest) = {
                let mut t = self.shared.table.lock().expect("lease table");
                t.evict(self.max() * 4 + 256, now);
                (t.live(now), t.earliest(now))
            };
            let free = self.max().saturating_sub(live);
            if free == 0 {
                let until = earliest.unwrap_or(now + expires);
                tokio::select! {
                    _ = self.shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
            let batch = pull::BatchConfig {
                batch: free,
                expires: Some(expires),
                ..Default::default()
            };
            self.connections.mark_unchanged();
            if let Err(e) = self
                .consumer
                .request_batch(batch, self.inbox.clone().into())
                .await
            {
                self.report(
                    Error::new(ErrorKind::Unavailable, "pulling from JetStream").with_source(e),
                );
                self.pause(&mut backoff).await;
                continue;
            }
            match self
                .read(free, Instant::now() + expires + Duration::from_secs(1))
                .await
            {
                Pull::Ended => backoff = Duration::from_millis(100),
                Pull::Silent => {
                    self.check_consumer().await;
                    self.pause(&mut backoff).await;
                }
                Pull::Reconnected => {
                    self.renew_inbox().await;
                    backoff = Duration::from_millis(100);
                }
                Pull::Closed => break,
            }
        }
        self.finish().await;
    }

    async fn pause(&self, backoff: &mut Duration) {
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = self.shared.wake.notified() => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    }

    /// Reads the answers to one pull request of `n` messages.
    async fn read(&mut self, mut n: usize, until: Instant) -> Pull {
        while n > 0 {
            let m = tokio::select! {
                m = self.sub.next() => m,
                _ = tokio::time::sleep_until(until) => return Pull::Silent,
                Ok(()) = self.connections.changed() => return Pull::Reconnected,
            };
            let Some(m) = m else {
                return Pull::Closed;
            };
            match m.status {
                None | Some(async_nats::StatusCode::OK) => {
                    n -= 1;
                    self.reported = false;
                    self.receive(m).await;
                }
                Some(async_nats::StatusCode::IDLE_HEARTBEAT) => {}
                Some(async_nats::StatusCode::TIMEOUT) | Some(async_nats::StatusCode::NOT_FOUND) => {
                    return Pull::Ended;
                }
                Some(status) => {
                    let what = m.description.clone().unwrap_or_default();
                    if what.to_ascii_lowercase().contains("deleted") {
                        self.recreate().await;
                    } else {
                        self.report(Error::new(
                            ErrorKind::Unavailable,
                            format!("JetStream answered a pull with {status} {what}"),
                        ));
                    }
                    return Pull::Ended;
                }
            }
        }
        Pull::Ended
    }

    /// After a reconnect, pulls go to a new inbox. A restarted server has forgotten the open
    /// request (waiting for it would take up to `pull_expires`); a server that kept it finds
    /// no interest in the old inbox and drops it, so the two requests never bring more than
    /// `max_in_flight` between them. What the old inbox already holds is taken first;
    /// anything the server still sends there is redelivered after `ack_wait`.
    async fn renew_inbox(&mut self) {
        while let Some(Some(m)) = futures::FutureExt::now_or_never(self.sub.next()) {
            if matches!(m.status, None | Some(async_nats::StatusCode::OK)) {
                self.receive(m).await;
            }
        }
        let client = &self.shared.publishing.client;
        let inbox = client.new_inbox();
        match client.subscribe(inbox.clone()).await {
            Ok(sub) => {
                let mut old = std::mem::replace(&mut self.sub, sub);
                self.inbox = inbox;
                let _ = old.unsubscribe().await;
            }
            Err(e) => tracing::debug!(consumer = %self.shared.consumer, error = %e,
                "a new pull inbox after reconnecting; keeping the old one"),
        }
    }

    /// A pull went unanswered: the consumer may be gone (removed while disconnected).
    async fn check_consumer(&mut self) {
        match self.consumer.get_info().await {
            Ok(_) => {}
            Err(e) => {
                let e = error::consumer_info("checking the consumer", e);
                if e.kind() == ErrorKind::NotFound {
                    self.recreate().await;
                } else {
                    self.report(e);
                }
            }
        }
    }

    /// Creates the consumer again; a fan-out consumer resumes after the last message it saw.
    async fn recreate(&mut self) {
        if self.stopping() {
            return;
        }
        let mut config = self.config.clone();
        if self.fan_out && self.last_seq > 0 {
            config.deliver_policy = DeliverPolicy::ByStartSequence {
                start_sequence: self.last_seq + 1,
            };
        }
        let Some(js) = self.shared.publishing.js.as_ref() else {
            return;
        };
        match create(js, &self.shared.stream, config).await {
            Ok(c) => {
                tracing::info!(consumer = %self.shared.consumer, "JetStream consumer recreated");
                self.consumer = c;
            }
            Err(e) => self.report(e),
        }
    }

    async fn receive(&mut self, m: async_nats::Message) {
        let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else {
            return;
        };
        let Some(js) = self.shared.publishing.js.as_ref() else {
            return;
        };
        let jm = async_nats::jetstream::Message {
            message: m,
            context: js.ctx.clone(),
        };
        let (seq, delivered, published) = match jm.info() {
            Ok(i) => (
                i.stream_sequence,
                u32::try_from(i.delivered).unwrap_or(u32::MAX).max(1),
                Timestamp(u64::try_from(i.published.unix_timestamp_nanos()).unwrap_or(0)),
            ),
            Err(e) => {
                self.report(Error::new(
                    ErrorKind::Protocol,
                    format!("a JetStream message with an unreadable ack subject `{reply}`: {e}"),
                ));
                return;
            }
        };
        self.last_seq = self.last_seq.max(seq);
        let s = self.shared.clone();
        // NATS 2.9 can restart the delivery count of a redelivery that met an expiring pull
        // request; this consumer's own count of deliveries is a floor.
        let seen = s
            .table
            .lock()
            .expect("lease table")
            .entries
            .get(&seq)
            .map_or(0, |e| e.attempts.len());
        let delivered = delivered.max(u32::try_from(seen + 1).unwrap_or(u32::MAX));
        if self.stopping() {
            let _ = s
                .settle(&reply, Bytes::from_static(b"-NAK"), "releasing")
                .await;
            return;
        }
        let stream = s.stream.clone();
        let fallback = move || {
            MessageId::new(format!("{stream}-{seq}")).unwrap_or_else(|_| MessageId::generate())
        };
        let m = jm.message;
        let decoded = codec::decode(Received {
            subject: m.subject.as_str(),
            headers: m.headers.as_ref(),
            payload: m.payload.clone(),
            reply: None,
            fallback_id: &fallback,
            fallback_time: published,
        });
        let message = match decoded {
            Ok(msg) => msg,
            Err(e) => {
                let _ = s
                    .settle(&reply, Bytes::from_static(b"+TERM"), "terminating")
                    .await;
                self.report(Error::new(
                    e.kind(),
                    format!("{e} (stream `{}` sequence {seq}; terminated)", s.stream),
                ));
                return;
            }
        };
        let now = Instant::now();
        if let Some(ttl) = message.ttl()
            && published.saturating_add(ttl) <= Timestamp::now()
        {
            // Expired while it waited: discarded, never delivered.
            if s.settle(
                &reply,
                Bytes::from_static(b"+ACK"),
                "discarding an expired message",
            )
            .await
            .is_ok()
            {
                s.forget(seq, None);
            }
            return;
        }
        if let Some(max) = s.policy.max_deliveries
            && delivered > max
        {
            let attempts = s
                .table
                .lock()
                .expect("lease table")
                .entries
                .get(&seq)
                .map(|e| e.attempts.clone())
                .unwrap_or_default();
            let why = format!(
                "lease expired on delivery {} of at most {max}",
                delivered - 1
            );
            let r = s
                .dead_letter(
                    &message,
                    seq,
                    DeadLetterReason::MaxDeliveries,
                    why,
                    attempts,
                )
                .await;
            match r {
                Ok(()) => {
                    let _ = s
                        .settle(&reply, Bytes::from_static(b"+TERM"), "terminating")
                        .await;
                    s.forget(seq, None);
                }
                Err(e) => {
                    let delay = Bytes::from(format!("-NAK {{\"delay\":{}}}", 1_000_000_000u64));
                    let _ = s.settle(&reply, delay, "releasing").await;
                    self.report(e);
                }
            }
            return;
        }
        let lease_len = s.lease();
        let reply_for_release = reply.clone();
        let held = Held {
            deadline: now + lease_len,
            reply,
            attempt: delivered,
            message: message.clone(),
            handed_out: false,
        };
        let received = Timestamp::now();
        let nonce = {
            // Checked under the table lock: `close` sets the flag before it sweeps the table,
            // so a delivery is either swept by it or released here.
            let mut t = s.table.lock().expect("lease table");
            if self.stop.load(Ordering::Acquire) == RUN {
                Some(t.deliver(seq, held, received, now))
            } else {
                None
            }
        };
        let Some(nonce) = nonce else {
            let _ = s
                .settle(&reply_for_release, Bytes::from_static(b"-NAK"), "releasing")
                .await;
            return;
        };
        let info = DeliveryInfo {
            attempt: delivered,
            sequence: seq,
            published_at: published,
            deadline: received.saturating_add(lease_len),
            group: s.group.clone(),
            lease: LeaseId {
                sequence: seq,
                nonce,
            },
        };
        let d = Delivery::new(message, info, self.acker.clone());
        if self.tx.send(Ok(d)).await.is_err() {
            let _ = self
                .stop
                .compare_exchange(RUN, DROPPED, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Releases what the consumer still holds (a dropped consumer: what it had not handed
    /// out) and stops listening.
    async fn finish(mut self) {
        let closing = self.stop.load(Ordering::Acquire) == CLOSING;
        release_held(&self.shared, closing).await;
        let _ = self.sub.unsubscribe().await;
    }
}

/// Naks the deliveries held with a live lease (`all`: also those handed out) and ends their
/// leases, so other members (or a later subscriber) get them at once.
async fn release_held(shared: &Shared, all: bool) {
    let release: Vec<String> = {
        let mut t = shared.table.lock().expect("lease table");
        let now = Instant::now();
        let mut out = Vec::new();
        for e in t.entries.values_mut() {
            let take = e
                .held
                .as_ref()
                .is_some_and(|h| h.deadline > now && (all || !h.handed_out));
            if take && let Some(h) = e.held.take() {
                out.push(h.reply);
            }
        }
        out
    };
    let naks = release
        .iter()
        .map(|reply| shared.settle(reply, Bytes::from_static(b"-NAK"), "releasing"));
    for r in futures::future::join_all(naks).await {
        if let Err(e) = r {
            tracing::debug!(error = %e, "releasing a delivery");
        }
    }
    shared.wake.notify_one();
}

/// How one pull request ended.
enum Pull {
    /// The server ended it (fulfilled, expired, or refused).
    Ended,
    /// No answer in time.
    Silent,
    /// The connection was made again: the server may have forgotten the request.
    Reconnected,
    /// The connection is closed for good.
    Closed,
}
