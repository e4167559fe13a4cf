//! Publishing: `SendMessage` per publish, `SendMessageBatch` for batches, a bound on publishes
//! awaiting their confirm, `flush` and `close`.
//!
//! A publish encodes the message (refusing what SQS could not take before anything is sent),
//! lists the queues bound to its subject and sends a copy to each; the confirm is SQS's answer
//! (for several queues, all of them). On standard queues `send` hands the work to a task and
//! returns at once, so many publishes are in flight; on FIFO queues `send` waits for SQS, so one
//! caller's messages are stored in the order it sent them. At most `max_pending` publishes await
//! their confirm per handle; `send` waits for room beyond that.
//!
//! FIFO queues drop a message whose deduplication id (the squall id) they stored within the last
//! five minutes, without saying so. The publisher remembers the ids it published in that window
//! and acks a repeat as `duplicate` without sending it; a repeat published through another
//! handle is still dropped by SQS, but acked as new.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use squall_core::{Error, Message, PendingAck, PublishAck, Result, Subject};
use tokio::sync::Semaphore;

use crate::codec::{Encoded, encode};
use crate::queues::{Binding, Queues, Route};

/// SQS's deduplication window.
const DEDUP_WINDOW: Duration = Duration::from_secs(300);
/// Most ids remembered for the duplicate flag.
const DEDUP_MAX: usize = 100_000;

/// The publishing half of a backend handle.
pub(crate) struct Publisher {
    queues: Arc<Queues>,
    /// One permit per publish awaiting its confirm; `flush` takes them all.
    pending: Arc<Semaphore>,
    closed: AtomicBool,
    /// FIFO only: ids published within the deduplication window, with their acks.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    acks: HashMap<String, PublishAck>,
    order: VecDeque<(Instant, String)>,
}

impl Seen {
    fn get(&mut self, id: &str) -> Option<PublishAck> {
        while let Some((at, _)) = self.order.front() {
            if at.elapsed() < DEDUP_WINDOW && self.order.len() <= DEDUP_MAX {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.acks.remove(&old);
            }
        }
        self.acks.get(id).cloned()
    }

    fn insert(&mut self, id: &str, ack: &PublishAck) {
        if self.acks.insert(id.to_string(), ack.clone()).is_none() {
            self.order.push_back((Instant::now(), id.to_string()));
        }
    }
}

impl Publisher {
    pub fn new(queues: Arc<Queues>) -> Publisher {
        Publisher {
            pending: Arc::new(Semaphore::new(queues.config.max_pending)),
            queues,
            closed: AtomicBool::new(false),
            seen: Mutex::new(Seen::default()),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("the SQS publisher"));
        }
        Ok(())
    }

    fn mandatory(&self) -> Route {
        Route::Publish {
            mandatory: self.queues.config.mandatory,
        }
    }

    /// A repeat of an id this handle published within the window (FIFO only).
    fn repeat(&self, id: &str) -> Option<PublishAck> {
        if !self.queues.config.fifo {
            return None;
        }
        let mut ack = self.seen.lock().expect("seen lock").get(id)?;
        ack.duplicate = true;
        Some(ack)
    }

    fn remember(&self, id: &str, r: &Result<PublishAck>) {
        if self.queues.config.fifo
            && let Ok(ack) = r
        {
            self.seen.lock().expect("seen lock").insert(id, ack);
        }
    }

    pub async fn send(self: &Arc<Self>, msg: Message) -> Result<PendingAck> {
        self.check_open()?;
        let enc = encode(&msg, &self.queues.config)?;
        if let Some(ack) = self.repeat(msg.id().as_str()) {
            return Ok(PendingAck::ready(Ok(ack)));
        }
        let permit = self
            .pending
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::closed("the SQS publisher"))?;
        let subject = msg.subject().clone();
        if self.queues.config.fifo {
            let r = self.queues.deliver(&subject, &enc, self.mandatory()).await;
            self.remember(enc.id.as_str(), &r);
            drop(permit);
            return Ok(PendingAck::ready(r));
        }
        let me = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let r = me.queues.deliver(&subject, &enc, me.mandatory()).await;
            drop(permit);
            let _ = tx.send(r);
        });
        Ok(PendingAck::channel(rx))
    }

    /// Publishes `msgs` with `SendMessageBatch`: per subject, in chunks of at most 10 messages
    /// and `max_message_size` bytes, to every queue bound to the subject.
    pub async fn publish_batch(&self, msgs: Vec<Message>) -> Result<Vec<Result<PublishAck>>> {
        self.check_open()?;
        let n = msgs.len();
        let _permit = self
            .pending
            .acquire_many(n.clamp(1, self.queues.config.max_pending) as u32)
            .await
            .map_err(|_| Error::closed("the SQS publisher"))?;
        let mut results: Vec<Option<Result<PublishAck>>> = (0..n).map(|_| None).collect();
        // Encode, and group by subject keeping the order within each subject.
        let mut by_subject: Vec<(Subject, Vec<(usize, Encoded)>)> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            if let Some(ack) = self.repeat(m.id().as_str()) {
                results[i] = Some(Ok(ack));
                continue;
            }
            match encode(m, &self.queues.config) {
                Err(e) => results[i] = Some(Err(e)),
                Ok(enc) => match by_subject.iter_mut().find(|(s, _)| s == m.subject()) {
                    Some((_, v)) => v.push((i, enc)),
                    None => by_subject.push((m.subject().clone(), vec![(i, enc)])),
                },
            }
        }
        for (subject, encs) in by_subject {
            let outcome = self.batch_to_subject(&subject, &encs).await;
            for ((i, enc), r) in encs.iter().zip(outcome) {
                self.remember(enc.id.as_str(), &r);
                results[*i] = Some(r);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::closed("the SQS publisher"))))
            .collect())
    }

    async fn batch_to_subject(
        &self,
        subject: &Subject,
        encs: &[(usize, Encoded)],
    ) -> Vec<Result<PublishAck>> {
        let bindings = match self.queues.bindings(subject).await {
            Ok(b) => b,
            Err(e) => return encs.iter().map(|_| Err(e.clone())).collect(),
        };
        if bindings.is_empty() {
            // Same answer as a single publish.
            let mut out = Vec::with_capacity(encs.len());
            for (_, enc) in encs {
                out.push(self.queues.deliver(subject, enc, self.mandatory()).await);
            }
            return out;
        }
        let mut out: Vec<Result<()>> = encs.iter().map(|_| Ok(())).collect();
        let sends = bindings.iter().map(|b| self.batch_to_queue(b, encs));
        for (b, per_queue) in bindings.iter().zip(futures::future::join_all(sends).await) {
            for (slot, r) in out.iter_mut().zip(per_queue) {
                match r {
                    Err(e) if e.kind() == squall_core::ErrorKind::NotFound => {
                        tracing::debug!(queue = %b.name, "a bound queue vanished during a batch");
                        self.queues.invalidate(subject);
                    }
                    Err(e) if slot.is_ok() => *slot = Err(e),
                    _ => {}
                }
            }
        }
        let stream = (bindings.len() == 1).then(|| bindings[0].name.clone());
        out.into_iter()
            .map(|r| r.map(|()| self.queues.ack(stream.clone())))
            .collect()
    }

    /// Sends `encs` to one queue in chunks SQS accepts.
    async fn batch_to_queue(&self, b: &Binding, encs: &[(usize, Encoded)]) -> Vec<Result<()>> {
        let max = self.queues.config.max_message_size;
        let mut out = Vec::with_capacity(encs.len());
        let mut chunk: Vec<&Encoded> = Vec::new();
        let mut size = 0;
        for (_, enc) in encs {
            if !chunk.is_empty() && (chunk.len() == 10 || size + enc.size > max) {
                out.extend(self.queues.send_batch(b, &chunk).await);
                chunk.clear();
                size = 0;
            }
            size += enc.size;
            chunk.push(enc);
        }
        if !chunk.is_empty() {
            out.extend(self.queues.send_batch(b, &chunk).await);
        }
        out
    }

    /// Waits until every publish sent so far is confirmed or failed.
    pub async fn flush(&self) -> Result<()> {
        let all = self.queues.config.max_pending as u32;
        let _all = self
            .pending
            .acquire_many(all)
            .await
            .map_err(|_| Error::closed("the SQS publisher"))?;
        Ok(())
    }

    /// Refuses further sends, then flushes for at most `close_timeout`.
    pub async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let limit = self.queues.config.close_timeout;
        match tokio::time::timeout(limit, self.flush()).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                squall_core::ErrorKind::Timeout,
                format!(
                    "publishes were still unconfirmed {limit:?} after close (set `close_timeout`)"
                ),
            )),
        }
    }
}
