//! Leases: nack and redelivery, expiry, extension, settling after expiry, and the rule that one
//! message has at most one live holder.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squall_core::ErrorKind;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::case::Ctx;
use crate::helpers::{Must, Tally, expect_err, expect_quiet, join, recv};
use crate::pubsub::{quiet_all, receive_exactly};

pub(crate) async fn resend_on_nack(t: &Ctx<'_>) {
    let mut c = t.subscribe(t.sub("retry")).await;
    let ids = t.publish_n("retry", "r", 1).await;
    let d1 = recv(c.as_mut(), t.timing.receive, "first delivery").await;
    assert_eq!(d1.message().id().as_str(), ids[0]);
    assert_eq!(d1.attempt(), 1, "first delivery's attempt");
    let payload = d1.message().payload().clone();
    d1.nack(Duration::ZERO).await.must("nacking");
    let d2 = recv(c.as_mut(), t.timing.receive, "redelivery after nack").await;
    assert_eq!(
        d2.message().id().as_str(),
        ids[0],
        "redelivered a different message"
    );
    assert_eq!(d2.attempt(), 2, "redelivery's attempt");
    assert!(d2.is_redelivery());
    assert_eq!(
        d2.message().payload(),
        &payload,
        "payload changed on redelivery"
    );
    d2.ack().await.must("acking the redelivery");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn continue_after_errors(t: &Ctx<'_>) {
    let failures = 3;
    let mut c = t.subscribe(t.sub("errors")).await;
    let ids = t.publish_n("errors", "e", 5).await;
    let mut attempts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut acked = Tally::expecting(ids.iter().cloned());
    let deadline = Instant::now() + t.timing.receive * 4;
    while acked.deliveries() < ids.len() as u64 && Instant::now() < deadline {
        let d = recv(
            c.as_mut(),
            t.timing.receive,
            &format!("attempts so far {attempts:?}"),
        )
        .await;
        let id = d.message().id().to_string();
        attempts.entry(id.clone()).or_default().push(d.attempt());
        if d.attempt() <= failures {
            d.nack(Duration::ZERO).await.must("nacking");
        } else {
            d.ack().await.must("acking");
            acked.record(&id);
        }
    }
    assert!(acked.is_exact(), "acked: {acked}; attempts {attempts:?}");
    for (id, a) in &attempts {
        assert_eq!(a, &[1, 2, 3, 4], "{id}: attempt numbers seen");
    }
    let more = t.publish_n("errors", "more", 2).await;
    receive_exactly(c.as_mut(), &more, t, "messages after the failures").await;
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn lease_expiry_redelivers(t: &Ctx<'_>) {
    let ack_wait = t.timing.ack_wait;
    let mut c = t.subscribe(t.sub("lease").ack_wait(ack_wait)).await;
    let ids = t.publish_n("lease", "l", 1).await;
    let d1 = recv(c.as_mut(), t.timing.receive, "first delivery").await;
    let t0 = Instant::now();
    let d2 = recv(
        c.as_mut(),
        ack_wait + t.timing.receive,
        "redelivery after lease expiry",
    )
    .await;
    let waited = t0.elapsed();
    assert!(
        waited + t.timing.slack >= ack_wait,
        "redelivered {waited:?} after the first delivery, before the {ack_wait:?} lease ended"
    );
    assert_eq!(
        d2.message().id().as_str(),
        ids[0],
        "redelivered a different message"
    );
    assert_eq!(d2.attempt(), 2, "attempt of the redelivery");
    d2.ack().await.must("acking the redelivery");
    drop(d1);
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn extend_prevents_redelivery(t: &Ctx<'_>) {
    let ack_wait = t.timing.ack_wait;
    let mut c = t.subscribe(t.sub("extend").ack_wait(ack_wait)).await;
    t.publish_n("extend", "x", 1).await;
    let mut d = recv(c.as_mut(), t.timing.receive, "first delivery").await;
    let t0 = Instant::now();
    let first_deadline = d.deadline();
    tokio::time::sleep(ack_wait / 2).await;
    d.extend(ack_wait)
        .await
        .must("extending half-way through the lease");
    assert!(
        d.deadline() > first_deadline,
        "extend left the deadline at {:?} (was {:?})",
        d.deadline(),
        first_deadline
    );
    // Past the original deadline by a quarter lease, still inside the extended one.
    let until = t0 + ack_wait * 5 / 4;
    expect_quiet(c.as_mut(), until.saturating_duration_since(Instant::now())).await;
    d.ack().await.must("acking within the extended lease");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn ack_after_expiry_refused(t: &Ctx<'_>) {
    let ack_wait = t.timing.ack_wait;
    let slack = t.timing.slack;
    let mut c = t.subscribe(t.sub("late").ack_wait(ack_wait)).await;
    t.publish_n("late", "l", 1).await;
    let d1 = recv(c.as_mut(), t.timing.receive, "first delivery").await;
    tokio::time::sleep(ack_wait + slack).await;
    expect_err(
        d1.ack().await,
        &[ErrorKind::LeaseExpired],
        "ack after the lease expired",
    );
    let mut d2 = recv(c.as_mut(), t.timing.receive, "redelivery 2").await;
    assert_eq!(d2.attempt(), 2);
    let d3 = recv(c.as_mut(), ack_wait + t.timing.receive, "redelivery 3").await;
    assert_eq!(d3.attempt(), 3);
    let r = d2.extend(ack_wait).await;
    expect_err(
        r,
        &[ErrorKind::LeaseExpired],
        "extend of a lease redelivered to another",
    );
    let d4 = recv(c.as_mut(), ack_wait + t.timing.receive, "redelivery 4").await;
    assert_eq!(d4.attempt(), 4);
    expect_err(
        d3.nack(Duration::ZERO).await,
        &[ErrorKind::LeaseExpired],
        "nack of an expired lease",
    );
    d4.ack().await.must("acking the live lease");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

/// One delivery as a member of [`no_two_holders`] handled it.
#[derive(Debug, Clone)]
struct Hold {
    id: String,
    member: usize,
    attempt: u32,
    received: Instant,
    held: Duration,
    ack: Result<(), ErrorKind>,
}

pub(crate) async fn no_two_holders(t: &Ctx<'_>) {
    let (n, ack_wait) = (6usize, t.timing.ack_wait);
    let log: Arc<Mutex<Vec<Hold>>> = Arc::default();
    let acked = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let deadline = Instant::now() + ack_wait * 4 + t.timing.receive * 2;
    let mut members = Vec::new();
    for member in 0..2 {
        let mut c = t
            .subscribe(t.group_sub("hold", "h").ack_wait(ack_wait))
            .await;
        let (log, acked, done_tx, mut done_rx) =
            (log.clone(), acked.clone(), done_tx.clone(), done_rx.clone());
        let mut rng = t.rng(member as u64);
        members.push(tokio::spawn(async move {
            let mut holders = Vec::new();
            loop {
                let d = tokio::select! {
                    _ = done_rx.wait_for(|d| *d) => break,
                    r = tokio::time::timeout_at(deadline, c.next()) => match r {
                        Ok(Some(d)) => d.must(&format!("member {member} receiving")),
                        Ok(None) | Err(_) => break,
                    },
                };
                let received = Instant::now();
                // First deliveries of half the messages are held past the lease; the rest well
                // within it.
                let long = d.attempt() == 1 && rng.below(2) == 0;
                let held = if long {
                    ack_wait * 3 / 2
                } else {
                    rng.duration(ack_wait / 4)
                };
                let (log, acked, done_tx) = (log.clone(), acked.clone(), done_tx.clone());
                holders.push(tokio::spawn(async move {
                    let (id, attempt) = (d.message().id().to_string(), d.attempt());
                    tokio::time::sleep(held).await;
                    let ack = d.ack().await.map_err(|e| e.kind());
                    if ack.is_ok() && acked.fetch_add(1, Ordering::SeqCst) + 1 == n {
                        done_tx.send_replace(true);
                    }
                    let hold = Hold {
                        id,
                        member,
                        attempt,
                        received,
                        held,
                        ack,
                    };
                    log.lock().expect("log lock").push(hold);
                }));
            }
            for h in holders {
                join(h).await;
            }
            c
        }));
    }
    // Published once both members are subscribed: a backend whose group queue only exists from
    // the first subscription (RabbitMQ) sees every message too.
    let ids = t.publish_n("hold", "h", n).await;
    let mut consumers = Vec::new();
    for m in members {
        consumers.push(join(m).await);
    }
    let log = log.lock().expect("log lock").clone();
    let mut by_id: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for h in &log {
        by_id.entry(&h.id).or_default().push(h);
    }
    for id in &ids {
        let mut holds = by_id.get(id.as_str()).cloned().unwrap_or_default();
        holds.sort_by_key(|h| h.attempt);
        let ok: Vec<&&Hold> = holds.iter().filter(|h| h.ack.is_ok()).collect();
        assert_eq!(
            ok.len(),
            1,
            "{id}: {} successful acks; holds {holds:#?}",
            ok.len()
        );
        let last = holds.last().expect("at least one hold");
        assert_eq!(
            ok[0].attempt, last.attempt,
            "{id}: attempt {} was acked while a later attempt existed (two holders): {holds:#?}",
            ok[0].attempt
        );
        for w in holds.windows(2) {
            let gap = w[1].received.saturating_duration_since(w[0].received);
            assert!(
                gap + t.timing.slack >= ack_wait,
                "{id}: attempt {} went to member {} {gap:?} after attempt {} went to member {}, \
                 inside the {ack_wait:?} lease: {holds:#?}",
                w[1].attempt,
                w[1].member,
                w[0].attempt,
                w[0].member
            );
            assert_eq!(w[1].attempt, w[0].attempt + 1, "{id}: attempts {holds:#?}");
        }
        for h in &holds {
            if h.held > ack_wait + t.timing.slack {
                assert_eq!(
                    h.ack,
                    Err(ErrorKind::LeaseExpired),
                    "{id}: ack after holding {:?}",
                    h.held
                );
            }
            if h.held * 2 < ack_wait {
                assert_eq!(h.ack, Ok(()), "{id}: ack after holding only {:?}", h.held);
            }
        }
    }
    assert_eq!(
        by_id.len(),
        ids.len(),
        "deliveries of unknown ids: {log:#?}"
    );
    quiet_all(consumers, t.timing.quiet).await;
}
