//! Delivery options: delay, nack delay, time to live, deduplication, per-key order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squall_core::{Message, StartPosition};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::case::Ctx;
use crate::helpers::{Must, Tally, collect, expect_quiet, join, recv};
use crate::pubsub::{quiet_all, receive_exactly};

pub(crate) async fn delay_not_early(t: &Ctx<'_>) {
    let delay = t.timing.ack_wait;
    let mut c = t.subscribe(t.sub("later")).await;
    let delayed = Message::builder(t.subject("later").as_str())
        .and_then(|b| b.id(t.id("delayed", 0)))
        .must("building")
        .delay(delay)
        .payload("later")
        .build();
    let now = t.message("later", "now", 0);
    let t0 = Instant::now();
    t.publish(delayed.clone()).await;
    t.publish(now.clone()).await;
    let first = recv(c.as_mut(), t.timing.receive, "the undelayed message").await;
    assert_eq!(
        first.message().id(),
        now.id(),
        "the message delayed by {delay:?} arrived after {:?}",
        t0.elapsed()
    );
    first.ack().await.must("acking");
    let d = recv(c.as_mut(), delay + t.timing.receive, "the delayed message").await;
    let waited = t0.elapsed();
    assert_eq!(d.message().id(), delayed.id());
    assert!(
        waited + t.timing.slack >= delay,
        "delivered {waited:?} after publishing, before its {delay:?} delay"
    );
    assert_eq!(d.attempt(), 1, "a delay is not a redelivery");
    d.ack().await.must("acking");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn nack_delay(t: &Ctx<'_>) {
    let delay = t.timing.ack_wait / 2;
    let mut c = t.subscribe(t.sub("backoff")).await;
    let ids = t.publish_n("backoff", "b", 1).await;
    let d1 = recv(c.as_mut(), t.timing.receive, "first delivery").await;
    let t0 = Instant::now();
    d1.nack(delay).await.must("nacking with a delay");
    let d2 = recv(c.as_mut(), delay + t.timing.receive, "the redelivery").await;
    let waited = t0.elapsed();
    assert!(
        waited + t.timing.slack >= delay,
        "redelivered {waited:?} after a nack delayed by {delay:?}"
    );
    assert_eq!(d2.message().id().as_str(), ids[0]);
    assert_eq!(d2.attempt(), 2);
    d2.ack().await.must("acking");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn ttl_expiry(t: &Ctx<'_>) {
    let ttl = t.timing.ack_wait;
    // A held delivery with max_in_flight 1 keeps the consumer from taking anything else, so the
    // messages behind it wait in the backend while their time to live runs.
    let mut c = t.subscribe(t.sub("ttl").max_in_flight(1)).await;
    let blocker = t.message("ttl", "blocker", 0);
    t.publish(blocker.clone()).await;
    let held = recv(c.as_mut(), t.timing.receive, "the blocking message").await;
    assert_eq!(held.message().id(), blocker.id());
    let build = |label: &str, ttl: Option<Duration>| {
        let mut m = t.message("ttl", label, 0);
        m.set_ttl(ttl);
        m
    };
    let short = build("short", Some(ttl));
    let long = build("long", Some(ttl * 100));
    let plain = build("plain", None);
    for m in [&short, &long, &plain] {
        t.publish(m.clone()).await;
    }
    tokio::time::sleep(ttl + t.timing.quiet).await;
    held.ack().await.must("acking the blocking message");
    let expected = [long.id().to_string(), plain.id().to_string()];
    receive_exactly(
        c.as_mut(),
        &expected,
        t,
        "messages within their time to live",
    )
    .await;
    expect_quiet(c.as_mut(), t.timing.quiet).await;

    // Where the backend keeps messages for later subscribers: nobody subscribed while the time
    // to live ran out, and a subscriber from the first message does not get it.
    if !t.caps.replay_by_sequence.available() {
        return;
    }
    let mut expired = t.message("ttl-late", "expired", 0);
    expired.set_ttl(Some(ttl));
    let kept = t.message("ttl-late", "kept", 0);
    t.publish(expired).await;
    t.publish(kept.clone()).await;
    tokio::time::sleep(ttl + t.timing.quiet).await;
    let mut late = t
        .subscribe(t.sub("ttl-late").start(StartPosition::First))
        .await;
    let expected = [kept.id().to_string()];
    receive_exactly(
        late.as_mut(),
        &expected,
        t,
        "a subscriber from the first message",
    )
    .await;
    expect_quiet(late.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn dedup_window(t: &Ctx<'_>) {
    let mut c = t.subscribe(t.sub("dedup")).await;
    let m = t.message("dedup", "d", 0);
    let mut same_id = t.message("dedup", "other-payload", 0);
    same_id.set_id(m.id().clone());
    let first = t.publish(m.clone()).await;
    let second = t.publish(m.clone()).await;
    let third = t.publish(same_id).await;
    assert!(
        !first.duplicate,
        "the first publish was acked as a duplicate: {first:?}"
    );
    for (what, ack) in [("second", &second), ("third (other payload)", &third)] {
        assert!(
            ack.duplicate,
            "the {what} publish of {} was not flagged duplicate: {ack:?}",
            m.id()
        );
        assert_eq!(
            ack.sequence, first.sequence,
            "the {what} publish reports another sequence"
        );
    }
    let other = t.publish(t.message("dedup", "d", 1)).await;
    assert!(
        !other.duplicate,
        "a new id was flagged duplicate: {other:?}"
    );
    if first.sequence != 0 {
        assert_ne!(
            other.sequence, first.sequence,
            "two stored messages share a sequence"
        );
    }
    let got = collect(c.as_mut(), 3, t.timing.receive).await;
    let mut tally = Tally::expecting([m.id().to_string(), t.id("d", 1)]);
    for d in got {
        if d.message().id() == m.id() {
            assert_eq!(
                d.message().payload(),
                m.payload(),
                "the duplicate's payload replaced the original"
            );
        }
        tally.record_delivery(&d);
        d.ack().await.must("acking");
    }
    assert!(tally.is_exact(), "{tally}");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

/// A step of per-key processing, in the order the shared log recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Start(usize),
    End(usize),
}

/// The shared record of [`key_order_under_concurrency`]: steps per key in log order, and how
/// many messages are being processed now and at most.
#[derive(Debug, Default, Clone)]
struct KeyLog {
    steps: Vec<(usize, Step)>,
    running: usize,
    max_running: usize,
}

pub(crate) async fn key_order_under_concurrency(t: &Ctx<'_>) {
    let (members, keys, per_key) = (4, 5, 20);
    let total = keys * per_key;
    let max_work = t.timing.quiet / 10;
    let log: Arc<Mutex<KeyLog>> = Arc::default();
    let processed = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let deadline = Instant::now() + t.timing.receive * 4 + max_work * total as u32;
    let mut tasks = Vec::new();
    for member in 0..members {
        let sub = t
            .group_sub("keys", "k")
            .ordered_by_key(true)
            .max_in_flight(8);
        let mut c = t.subscribe(sub).await;
        let (log, processed, done_tx, mut done_rx) = (
            log.clone(),
            processed.clone(),
            done_tx.clone(),
            done_rx.clone(),
        );
        let mut rng = t.rng(member as u64);
        tasks.push(tokio::spawn(async move {
            let mut workers = Vec::new();
            loop {
                let d = tokio::select! {
                    _ = done_rx.wait_for(|d| *d) => break,
                    r = tokio::time::timeout_at(deadline, c.next()) => match r {
                        Ok(Some(d)) => d.must(&format!("member {member} receiving")),
                        Ok(None) | Err(_) => break,
                    },
                };
                let work = rng.duration(max_work);
                let (log, processed, done_tx) = (log.clone(), processed.clone(), done_tx.clone());
                workers.push(tokio::spawn(async move {
                    let text = String::from_utf8_lossy(d.message().payload()).to_string();
                    let (k, i) = text
                        .split_once(':')
                        .and_then(|(k, i)| Some((k.parse().ok()?, i.parse().ok()?)))
                        .unwrap_or_else(|| panic!("unexpected payload {text:?}"));
                    {
                        let mut l = log.lock().expect("log lock");
                        l.steps.push((k, Step::Start(i)));
                        l.running += 1;
                        l.max_running = l.max_running.max(l.running);
                    }
                    tokio::time::sleep(work).await;
                    {
                        let mut l = log.lock().expect("log lock");
                        l.steps.push((k, Step::End(i)));
                        l.running -= 1;
                    }
                    d.ack()
                        .await
                        .must(&format!("member {member} acking key {k} message {i}"));
                    if processed.fetch_add(1, Ordering::SeqCst) + 1 == total {
                        done_tx.send_replace(true);
                    }
                }));
            }
            for w in workers {
                join(w).await;
            }
            c
        }));
    }
    for i in 0..per_key {
        for k in 0..keys {
            let m = Message::builder(t.subject("keys").as_str())
                .and_then(|b| b.id(t.id(&format!("k{k}"), i)))
                .and_then(|b| b.key(format!("key-{k}")))
                .must("building")
                .payload(format!("{k}:{i}"))
                .build();
            t.publish(m).await;
        }
    }
    let mut consumers = Vec::new();
    for task in tasks {
        consumers.push(join(task).await);
    }
    let KeyLog {
        steps,
        max_running: max_concurrent,
        ..
    } = log.lock().expect("log lock").clone();
    let mut per: BTreeMap<usize, Vec<Step>> = BTreeMap::new();
    for (k, s) in steps {
        per.entry(k).or_default().push(s);
    }
    for k in 0..keys {
        let want: Vec<Step> = (0..per_key)
            .flat_map(|i| [Step::Start(i), Step::End(i)])
            .collect();
        let got = per.remove(&k).unwrap_or_default();
        if let Some(p) = (0..want.len().max(got.len())).find(|&p| want.get(p) != got.get(p)) {
            panic!(
                "key {k}: step {p} was {:?}, expected {:?} (each message of a key must start \
                 after the previous one was acked); steps {got:?}",
                got.get(p),
                want.get(p)
            );
        }
    }
    assert!(
        per.is_empty(),
        "messages of unknown keys were processed: {per:?}"
    );
    assert!(
        max_concurrent >= 2,
        "keys were never processed concurrently (at most {max_concurrent} at once)"
    );
    quiet_all(consumers, t.timing.quiet).await;
}
