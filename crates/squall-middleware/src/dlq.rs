//! Dead letters: the reason text the runtime writes, and the library functions behind
//! `squall dlq ls | show | redrive`.
//!
//! ## How the runtime dead-letters
//! When the [`crate::retry::RetryPolicy`] gives up (a permanent error, the last attempt, the
//! elapsed limit), the runtime settles the delivery with `reject(reason)`, where the reason
//! names the handler, the verdict and the error chain (see [`reason`]); the backend builds the
//! [`DeadLetter`] envelope (origin, group, attempt timestamps). On a backend without native dead
//! letters (`Capabilities::dead_letter == Missing`) the runtime builds the envelope itself —
//! structured `handler` and `error_chain` filled in, `attempts` holding the start of the last
//! attempt only (the runtime does not see earlier ones), the attempt count in the
//! `squall-attempt` header — publishes it with [`DeadLetter::wrap`] to the subscription's
//! dead-letter subject, and only then acks. Exactly once from the user's perspective: the
//! envelope's id is derived from the origin id, group and sequence, so if the ack is lost and
//! the message fails again, the copy is dropped by the backend's dedup window.
//!
//! [`DlqEntry::handler`] and [`DlqEntry::error_chain`] read the structured fields when present
//! and parse the reason text otherwise, so both paths read the same.
//!
//! ## Inspecting and redriving
//! The functions consume the dead-letter subjects as a durable group named after the pattern
//! (`squall-dlq-…`), so what [`redrive`] acked is not listed again while what [`list`] and
//! [`show`] only looked at stays. They stop when nothing arrives for [`SCAN_IDLE`].
//!
//! ```
//! use squall_broker::Broker;
//! use squall_core::{Message, Publisher, Subscriber, Subscription};
//! use squall_middleware::dlq;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let broker = Broker::in_memory()?;
//! let mut c = broker.subscribe(Subscription::new("jobs.>")?.group("w")?).await?;
//! broker.publish(Message::builder("jobs.resize")?.payload("img").build()).await?;
//! c.next().await.unwrap()?.reject("corrupt image").await?;
//!
//! let entries = dlq::list(&broker, "dlq.>", 10).await?;
//! assert_eq!(entries.len(), 1);
//! assert_eq!(entries[0].envelope.as_ref().unwrap().error, "corrupt image");
//! let report = dlq::redrive(&broker, "dlq.>", None, None, false).await?;
//! assert_eq!(report.redriven.len(), 1);
//! assert_eq!(c.next().await.unwrap()?.message().payload(), "img");
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

use std::time::Duration;

use squall_core::{
    Consumer, DeadLetter, Delivery, Error, ErrorKind, Message, Pattern, Publisher, Result, Subject,
    Subscriber, Subscription, Timestamp, headers,
};

use crate::error::HandlerError;
use crate::retry::GiveUp;

/// A scan stops when no dead letter arrives for this long.
pub const SCAN_IDLE: Duration = Duration::from_millis(500);
/// The most dead letters one scan holds at once (a dry run reports `truncated` beyond it).
pub const MAX_SCAN: usize = 10_000;

/// The reject reason the runtime writes:
///
/// ```text
/// handler `resize` gave up after 3 attempts
/// error: saving thumbnail
/// caused by: connection refused
/// ```
pub fn reason(handler: &str, attempt: u32, why: &GiveUp, err: &HandlerError) -> String {
    let verdict = match why {
        GiveUp::NotRetryable => format!("failed permanently on attempt {attempt}"),
        other => other.to_string(),
    };
    let mut s = format!("handler `{handler}` {verdict}");
    for (i, e) in err.chain().iter().enumerate() {
        s.push('\n');
        s.push_str(if i == 0 { "error: " } else { "caused by: " });
        s.push_str(&e.replace('\n', " "));
    }
    s
}

/// The handler named by a [`reason`] text.
pub fn parse_handler(reason: &str) -> Option<String> {
    let rest = reason.lines().next()?.strip_prefix("handler `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// The error chain of a [`reason`] text.
pub fn parse_chain(reason: &str) -> Vec<String> {
    reason
        .lines()
        .filter_map(|l| {
            l.strip_prefix("error: ")
                .or_else(|| l.strip_prefix("caused by: "))
        })
        .map(str::to_string)
        .collect()
}

/// One message on a dead-letter subject.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    /// The dead letter: the original payload, key and headers, the envelope header.
    pub message: Message,
    /// Its envelope (`None`: a message on a dead-letter subject without one).
    pub envelope: Option<DeadLetter>,
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    /// When it was dead-lettered (stored on the dead-letter subject).
    pub published_at: Timestamp,
}

impl DlqEntry {
    fn from_delivery(d: &Delivery) -> Self {
        DlqEntry {
            message: d.message().clone(),
            envelope: DeadLetter::read(d.message()).ok().flatten(),
            sequence: d.sequence(),
            published_at: d.published_at(),
        }
    }

    /// The handler that gave up: the envelope's field, or parsed from its error text.
    pub fn handler(&self) -> Option<String> {
        let env = self.envelope.as_ref()?;
        env.handler.clone().or_else(|| parse_handler(&env.error))
    }

    /// The error chain: the envelope's field, or parsed from its error text (which, for a
    /// message dead-lettered by the backend itself, is its one-line reason).
    pub fn error_chain(&self) -> Vec<String> {
        let Some(env) = &self.envelope else {
            return Vec::new();
        };
        if !env.error_chain.is_empty() {
            return env.error_chain.clone();
        }
        let parsed = parse_chain(&env.error);
        if parsed.is_empty() {
            vec![env.error.clone()]
        } else {
            parsed
        }
    }

    /// Whether `id` is this dead letter's id or its origin's.
    pub fn matches_id(&self, id: &str) -> bool {
        self.message.id().as_str() == id
            || self.envelope.as_ref().is_some_and(|e| e.origin_id == id)
    }
}

/// The group the DLQ functions consume `pattern` as: `squall-dlq-` and the pattern with `.`
/// as `_`, `*` as `star`, `>` as `all`, cut to 64 characters with a hash when longer.
pub fn group_for(pattern: &Pattern) -> String {
    let mut g = String::from("squall-dlq-");
    for c in pattern.as_str().chars() {
        match c {
            '.' => g.push('_'),
            '*' => g.push_str("star"),
            '>' => g.push_str("all"),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => g.push(c),
            _ => g.push('x'),
        }
    }
    if g.len() > 64 {
        // FNV-1a: stable across runs and versions, unlike std's hasher.
        let h = pattern
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        g.truncate(47);
        g.push_str(&format!("-{h:016x}"));
    }
    g
}

async fn open<S: Subscriber + ?Sized>(
    subscriber: &S,
    dlq_subject: &str,
    hold: usize,
) -> Result<Box<dyn Consumer>> {
    let pattern = Pattern::new(dlq_subject)?;
    let sub = Subscription::new(pattern.as_str())?
        .group(group_for(&pattern))?
        .durable(true)
        .max_in_flight(hold.clamp(1, MAX_SCAN));
    subscriber.subscribe(sub).await
}

/// The next delivery, or `None` once nothing arrived for [`SCAN_IDLE`] (or the consumer ended).
async fn next_or_idle(c: &mut Box<dyn Consumer>) -> Result<Option<Delivery>> {
    match tokio::time::timeout(SCAN_IDLE, c.next()).await {
        Ok(Some(Ok(d))) => Ok(Some(d)),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) | Err(_) => Ok(None),
    }
}

/// Up to `limit` dead letters on subjects matching `dlq_subject` (e.g. `dlq.orders.>`), oldest
/// first, not yet redriven. Looking does not change them (their leases are released).
pub async fn list<S: Subscriber + ?Sized>(
    subscriber: &S,
    dlq_subject: &str,
    limit: usize,
) -> Result<Vec<DlqEntry>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut c = open(subscriber, dlq_subject, limit).await?;
    let mut held = Vec::new();
    let result = async {
        while held.len() < limit.min(MAX_SCAN) {
            match next_or_idle(&mut c).await? {
                Some(d) => held.push(d),
                None => break,
            }
        }
        Ok::<_, Error>(held.iter().map(DlqEntry::from_delivery).collect())
    }
    .await;
    c.close().await?; // releases what we held, for the next reader
    result
}

/// The dead letter whose id, or whose origin's id, is `id`.
pub async fn show<S: Subscriber + ?Sized>(
    subscriber: &S,
    dlq_subject: &str,
    id: &str,
) -> Result<Option<DlqEntry>> {
    let mut c = open(subscriber, dlq_subject, MAX_SCAN).await?;
    let mut held = Vec::new();
    let found = async {
        while held.len() < MAX_SCAN {
            let Some(d) = next_or_idle(&mut c).await? else {
                break;
            };
            let entry = DlqEntry::from_delivery(&d);
            held.push(d);
            if entry.matches_id(id) {
                return Ok::<_, Error>(Some(entry));
            }
        }
        Ok(None)
    }
    .await;
    c.close().await?;
    found
}

/// One redriven dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    /// The dead letter's id.
    pub dead_letter_id: String,
    /// The original message's id (from the envelope).
    pub origin_id: String,
    /// The id of the message published (fresh; dry run: empty).
    pub new_id: String,
    /// Where it was (or would be) published.
    pub subject: Subject,
}

/// What [`redrive`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Published again and acked on the dead-letter subject (dry run: would be).
    pub redriven: Vec<Redriven>,
    /// Left in place: messages without an envelope, and messages this run redrove that were
    /// dead-lettered again. Their ids.
    pub skipped: Vec<String>,
    /// Dead letters whose publish or ack failed, with the error; left in place.
    pub failed: Vec<(String, String)>,
    /// A dry run stopped at [`MAX_SCAN`] with more to look at.
    pub truncated: bool,
    /// Whether nothing was published.
    pub dry_run: bool,
}

/// Publishes every dead letter on subjects matching `dlq_subject` back to its origin subject (or
/// to `to`) with [`DeadLetter::redrive`] — a fresh id, no envelope, no `squall-attempt` header,
/// the origin id in `squall-redriven-from` — then acks the dead letter. At most `rate` per second
/// when given. A message this run redrove that is dead-lettered again while it runs is left in
/// place and reported as skipped, so a message that keeps failing is not redriven in a loop. A
/// dry run publishes nothing and acks nothing: it reports what would be redriven.
pub async fn redrive<B: Publisher + Subscriber + ?Sized>(
    backend: &B,
    dlq_subject: &str,
    to: Option<Subject>,
    rate: Option<u32>,
    dry_run: bool,
) -> Result<RedriveReport> {
    redrive_matching(backend, dlq_subject, None, to, rate, dry_run).await
}

/// [`redrive`] through the view of `dlq_subject`, touching only dead letters whose subject
/// `only` matches (all when `None`); the others are left in place and not reported. This is
/// how several narrower patterns share one view (one group): redrive `dlq.orders.>` through
/// `dlq.>` and a later [`list`] of `dlq.>` no longer shows what was redriven.
pub async fn redrive_matching<B: Publisher + Subscriber + ?Sized>(
    backend: &B,
    dlq_subject: &str,
    only: Option<&Pattern>,
    to: Option<Subject>,
    rate: Option<u32>,
    dry_run: bool,
) -> Result<RedriveReport> {
    if rate == Some(0) {
        return Err(Error::config(
            "dlq.redrive.rate",
            "must be at least 1 per second",
        ));
    }
    let mut c = open(backend, dlq_subject, MAX_SCAN).await?;
    let mut published = std::collections::HashSet::new();
    let mut pace = rate.map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs(1) / r);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut report = RedriveReport {
        dry_run,
        ..Default::default()
    };
    let mut held = Vec::new(); // released on close: skipped, failed, dry-run and too-new ones
    let outcome = async {
        loop {
            if dry_run && held.len() >= MAX_SCAN {
                report.truncated = true;
                break;
            }
            let Some(d) = next_or_idle(&mut c).await? else {
                break;
            };
            if only.is_some_and(|p| !p.matches(d.message().subject())) {
                held.push(d);
                continue;
            }
            let looped = DeadLetter::read(d.message())
                .ok()
                .flatten()
                .is_some_and(|env| published.contains(&env.origin_id));
            if looped {
                // Redriven by this run and dead-lettered again: leave it for the operator.
                report.skipped.push(d.message().id().to_string());
                held.push(d);
                continue;
            }
            let dead_id = d.message().id().to_string();
            let again = match DeadLetter::redrive(d.message(), to.clone()) {
                Ok(mut m) => {
                    m.headers_mut().remove(headers::ATTEMPT);
                    m.headers_mut().remove(crate::handler::ORIGIN_ID);
                    m
                }
                Err(_) => {
                    report.skipped.push(dead_id);
                    held.push(d);
                    continue;
                }
            };
            let origin_id = again
                .headers()
                .get("squall-redriven-from")
                .unwrap_or_default()
                .to_string();
            if dry_run {
                report.redriven.push(Redriven {
                    dead_letter_id: dead_id,
                    origin_id,
                    new_id: String::new(),
                    subject: again.subject().clone(),
                });
                held.push(d);
                continue;
            }
            if let Some(p) = pace.as_mut() {
                p.tick().await;
            }
            let new_id = again.id().to_string();
            let subject = again.subject().clone();
            match backend.publish(again).await {
                Ok(_) => {
                    published.insert(new_id.clone());
                    match d.ack().await {
                        Ok(()) => report.redriven.push(Redriven {
                            dead_letter_id: dead_id,
                            origin_id,
                            new_id,
                            subject,
                        }),
                        // Published but not acked: a later run redrives it again.
                        Err(e) => report.failed.push((dead_id, e.to_string())),
                    }
                }
                Err(e) if e.kind() == ErrorKind::Closed => return Err(e),
                Err(e) => {
                    report.failed.push((dead_id, e.to_string()));
                    held.push(d);
                }
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    c.close().await?;
    drop(held);
    outcome.map(|()| report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_text_round_trips_handler_and_chain() {
        let err = HandlerError::msg("connection refused").context("saving thumbnail");
        let r = reason(
            "resize",
            3,
            &GiveUp::AttemptsExhausted { attempts: 3 },
            &err,
        );
        assert_eq!(
            r,
            "handler `resize` gave up after 3 attempts\nerror: saving thumbnail\ncaused by: connection refused"
        );
        assert_eq!(parse_handler(&r).as_deref(), Some("resize"));
        assert_eq!(parse_chain(&r), ["saving thumbnail", "connection refused"]);
        let p = reason("j", 1, &GiveUp::NotRetryable, &crate::permanent("bad json"));
        assert!(p.starts_with("handler `j` failed permanently on attempt 1"));
        assert_eq!(parse_handler("lease expired"), None);
    }

    #[test]
    fn group_names_are_valid_and_stable() {
        let g = group_for(&Pattern::new("dlq.orders.*.>").unwrap());
        assert_eq!(g, "squall-dlq-dlq_orders_star_all");
        let long = Pattern::new(format!("dlq.{}", "x".repeat(80))).unwrap();
        let g = group_for(&long);
        assert_eq!(g.len(), 64);
        assert_eq!(g, group_for(&long));
        assert!(Subscription::new("a").unwrap().group(&g).is_ok());
    }
}
