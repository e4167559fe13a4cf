//! Consumer groups: competing members, members leaving (one, or many at once), flow control by
//! `max_in_flight`, durable groups without members and across a restart.

use std::collections::HashSet;

use squall_core::{Delivery, ErrorKind};

use crate::case::Ctx;
use crate::helpers::{Must, Tally, collect, consume_all, expect_err, expect_quiet, join, recv};
use crate::pubsub::{quiet_all, receive_exactly};

pub(crate) async fn consumer_groups(t: &Ctx<'_>) {
    let n = 40;
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..2 {
        a.push(t.subscribe(t.group_sub("jobs", "a")).await);
        b.push(t.subscribe(t.group_sub("jobs", "b")).await);
    }
    let ids = t.publish_n("jobs", "j", n).await;
    let ((a, seen_a), (b, seen_b)) = tokio::join!(
        consume_all(a, n, t.timing.receive),
        consume_all(b, n, t.timing.receive)
    );
    for (name, seen) in [("a", &seen_a), ("b", &seen_b)] {
        let mut tally = Tally::expecting(ids.iter().cloned());
        seen.iter().for_each(|s| {
            tally.record(&s.id);
        });
        let per_member: Vec<usize> = (0..2)
            .map(|m| seen.iter().filter(|s| s.member == m).count())
            .collect();
        assert!(
            tally.is_exact(),
            "group {name} (per member {per_member:?}): {tally}"
        );
    }
    quiet_all(a.into_iter().chain(b).collect(), t.timing.quiet).await;
}

pub(crate) async fn continue_after_subscriber_close(t: &Ctx<'_>) {
    let mut first = t.subscribe(t.group_sub("work", "w").max_in_flight(5)).await;
    let ids = t.publish_n("work", "w", 10).await;
    let mut held = collect(first.as_mut(), 5, t.timing.receive).await;
    assert_eq!(
        held.len(),
        5,
        "max_in_flight 5 and 10 messages: the first member got {}",
        held.len()
    );
    let mut acked = HashSet::new();
    for d in held.drain(..2) {
        acked.insert(d.message().id().to_string());
        d.ack().await.must("acking before close");
    }
    let unacked: HashSet<String> = held.iter().map(|d| d.message().id().to_string()).collect();
    first.close().await.must("closing the first member");

    // Released at close, not at lease expiry: the lease is far longer than `receive`.
    let mut second = t.subscribe(t.group_sub("work", "w")).await;
    let got = collect(second.as_mut(), 8, t.timing.receive).await;
    let mut tally = Tally::expecting(ids.iter().filter(|id| !acked.contains(*id)).cloned());
    for d in got {
        let id = d.message().id().to_string();
        tally.record(&id);
        if unacked.contains(&id) {
            assert!(
                d.attempt() >= 2,
                "{id} was delivered before, yet arrives as attempt {}",
                d.attempt()
            );
        }
        d.ack().await.must("acking on the second member");
    }
    assert!(
        tally.is_exact(),
        "after the first member closed holding 3: {tally}"
    );
    for d in held {
        let id = d.message().id().to_string();
        let r = d.ack().await;
        expect_err(
            r,
            &[ErrorKind::LeaseExpired],
            &format!("late ack of {id} by the closed member"),
        );
    }
    expect_quiet(second.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn concurrent_close(t: &Ctx<'_>) {
    let (members, n) = (8, 40);
    let mut consumers = Vec::new();
    for _ in 0..members {
        consumers.push(
            t.subscribe(t.group_sub("close", "c").max_in_flight(3))
                .await,
        );
    }
    let ids = t.publish_n("close", "c", n).await;
    let mut tasks = Vec::new();
    for (m, mut c) in consumers.into_iter().enumerate() {
        let quiet = t.timing.quiet;
        tasks.push(tokio::spawn(async move {
            let mut got = collect(c.as_mut(), 3, quiet).await;
            let mut acked = Vec::new();
            if !got.is_empty() {
                let d = got.remove(0);
                acked.push(d.message().id().to_string());
                d.ack().await.must(&format!("member {m} acking"));
            }
            (c, acked, got)
        }));
    }
    let mut acked = Vec::new();
    let mut held: Vec<Delivery> = Vec::new();
    let mut closing = Vec::new();
    for task in tasks {
        let (mut c, a, h) = join(task).await;
        acked.extend(a);
        held.extend(h);
        closing.push(tokio::spawn(async move { c.close().await }));
    }
    for c in closing {
        join(c).await.must("closing a member concurrently");
    }
    drop(held);
    let acked_set: HashSet<&String> = acked.iter().collect();
    let rest: Vec<String> = ids
        .iter()
        .filter(|id| !acked_set.contains(id))
        .cloned()
        .collect();
    let fresh = t.subscribe(t.group_sub("close", "c")).await;
    let (fresh, seen) = consume_all(vec![fresh], rest.len(), t.timing.receive).await;
    let mut tally = Tally::expecting(rest.iter().cloned());
    seen.iter().for_each(|s| {
        tally.record(&s.id);
    });
    assert!(
        tally.is_exact(),
        "{} acked before {members} members closed at once; the new member: {tally}",
        acked.len()
    );
    quiet_all(fresh, t.timing.quiet).await;
}

pub(crate) async fn no_ack_no_next(t: &Ctx<'_>) {
    let mut c = t.subscribe(t.sub("flow").max_in_flight(1)).await;
    let ids = t.publish_n("flow", "f", 3).await;
    let mut tally = Tally::expecting(ids.iter().cloned());
    for i in 0..3 {
        let d = recv(c.as_mut(), t.timing.receive, &format!("delivery {i}")).await;
        tally.record_delivery(&d);
        // With one delivery in flight, nothing else may arrive until it is acked.
        expect_quiet(c.as_mut(), t.timing.quiet).await;
        d.ack().await.must("acking");
    }
    assert!(tally.is_exact(), "{tally}");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn durable_group_keeps_position(t: &Ctx<'_>) {
    let sub = t.group_sub("dur", "d").durable(true).max_in_flight(3);
    let mut c = t.subscribe(sub.clone()).await;
    let ids = t.publish_n("dur", "d", 6).await;
    let got = collect(c.as_mut(), 3, t.timing.receive).await;
    assert_eq!(got.len(), 3, "max_in_flight 3: got {}", got.len());
    let mut acked = HashSet::new();
    for d in got {
        acked.insert(d.message().id().to_string());
        d.ack().await.must("acking");
    }
    c.close().await.must("closing the only member");
    drop(c);
    let later = t.publish_n("dur", "later", 3).await;
    let expected: Vec<String> = ids
        .iter()
        .filter(|id| !acked.contains(*id))
        .chain(&later)
        .cloned()
        .collect();
    let mut again = t.subscribe(sub).await;
    receive_exactly(
        again.as_mut(),
        &expected,
        t,
        "the durable group after rejoining",
    )
    .await;
    expect_quiet(again.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn durable_group_survives_restart(t: &Ctx<'_>) {
    let sub = t
        .group_sub("restart", "r")
        .durable(true)
        .ack_wait(t.timing.ack_wait);
    let mut c = t.subscribe(sub.clone()).await;
    let ids = t.publish_n("restart", "r", 6).await;
    let mut got = collect(c.as_mut(), 6, t.timing.receive).await;
    assert_eq!(
        got.len(),
        6,
        "before the restart only {} of 6 arrived",
        got.len()
    );
    let mut acked = HashSet::new();
    for d in got.drain(..3) {
        acked.insert(d.message().id().to_string());
        d.ack().await.must("acking before the restart");
    }
    // The other three stay unsettled: the consumer and its deliveries vanish with the restart.
    drop(got);
    drop(c);
    let Some(backend) = t.harness.restart().await.must("restarting") else {
        println!(
            "SKIP {}: harness {} cannot restart",
            t.case,
            t.harness.name()
        );
        return;
    };
    let mut c = backend
        .subscribe(sub)
        .await
        .must("rejoining after the restart");
    let unacked: Vec<String> = ids
        .iter()
        .filter(|id| !acked.contains(*id))
        .cloned()
        .collect();
    let got = collect(c.as_mut(), 3, t.timing.ack_wait + t.timing.receive).await;
    let mut tally = Tally::expecting(unacked.iter().cloned());
    for d in got {
        tally.record_delivery(&d);
        assert!(
            d.attempt() >= 2,
            "{} was delivered before the restart, yet arrives as attempt {}",
            d.message().id(),
            d.attempt()
        );
        d.ack().await.must("acking after the restart");
    }
    assert!(
        tally.is_exact(),
        "acked before the restart must stay acked: {tally}"
    );
    let mut fresh = Vec::new();
    for i in 0..2 {
        let m = t.message("restart", "after", i);
        fresh.push(m.id().to_string());
        backend
            .publish(m)
            .await
            .must("publishing after the restart");
    }
    receive_exactly(c.as_mut(), &fresh, t, "the group after the restart").await;
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}
