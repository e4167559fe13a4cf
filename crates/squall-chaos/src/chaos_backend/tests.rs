//! The chaos backend over the embedded broker, under tokio's paused clock (the broker's clock
//! follows it, so leases expire without real waiting).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use squall_broker::Broker;
use squall_core::{
    Backend, Consumer, ErrorKind, Message, Publisher, Requester, Subscriber, Subscription,
};

use super::*;
use crate::rng::Seed;
use crate::rules::{DelayDist, Rule};

/// Whether the payloads differ in exactly one bit.
fn differs_by_one_bit(a: &Message, b: &Message) -> bool {
    a.payload().len() == b.payload().len()
        && a.payload()
            .iter()
            .zip(b.payload().iter())
            .map(|(x, y)| (x ^ y).count_ones())
            .sum::<u32>()
            == 1
}

const WAIT: Duration = Duration::from_secs(60);

fn setup(seed: u64) -> (Broker, Faults, ChaosBackend) {
    let broker = Broker::in_memory().expect("broker");
    let faults = Faults::new(Seed::new(seed));
    let chaos = ChaosBackend::new(Arc::new(broker.clone()), faults.clone());
    (broker, faults, chaos)
}

fn msg(i: u32) -> Message {
    Message::builder(format!("orders.{i}"))
        .unwrap()
        .id(format!("m{i}"))
        .unwrap()
        .payload(format!("payload {i}"))
        .build()
}

fn sub(ack_wait: Duration) -> Subscription {
    Subscription::new("orders.>")
        .unwrap()
        .group("g")
        .unwrap()
        .ack_wait(ack_wait)
}

async fn recv(c: &mut Box<dyn Consumer>) -> squall_core::Delivery {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("ok")
}

async fn quiet(c: &mut Box<dyn Consumer>, d: Duration) {
    if let Ok(Some(r)) = tokio::time::timeout(d, c.next()).await {
        panic!(
            "expected nothing, got {:?}",
            r.map(|d| d.message().id().clone())
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_publish_fails_its_confirm_and_a_lie_drop_fakes_it() {
    let (broker, faults, chaos) = setup(1);
    let mut c = broker
        .subscribe(sub(Duration::from_secs(30)))
        .await
        .unwrap();
    let g = faults
        .add(Rule::new("drop", Point::Publish, Fault::Drop))
        .unwrap();
    let e = chaos.publish(msg(1)).await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Unavailable,
        "a drop must not be confirmed: {e}"
    );
    drop(g);
    let _g = faults
        .add(Rule::new("lie", Point::Publish, Fault::LieDrop))
        .unwrap();
    let ack = chaos
        .publish(msg(2))
        .await
        .expect("lie-drop fakes a confirm");
    assert_eq!((ack.sequence, ack.durability), (0, Durability::Memory));
    quiet(&mut c, Duration::from_secs(5)).await;
    assert_eq!(
        faults.events().iter().map(|e| e.fault).collect::<Vec<_>>(),
        vec!["drop", "lie_drop"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_confirm_leaves_the_message_stored_and_a_retry_is_deduplicated() {
    let (broker, faults, chaos) = setup(2);
    let mut c = broker
        .subscribe(sub(Duration::from_secs(30)))
        .await
        .unwrap();
    let g = faults
        .add(Rule::new("lose-confirm", Point::Confirm, Fault::Drop))
        .unwrap();
    let e = chaos.publish(msg(1)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    drop(g);
    let retry = chaos.publish(msg(1)).await.expect("retry confirmed");
    assert!(
        retry.duplicate,
        "the retry of a stored message is a duplicate: {retry:?}"
    );
    let d = recv(&mut c).await;
    assert_eq!(d.message().id().as_str(), "m1");
    d.ack().await.unwrap();
    quiet(&mut c, Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn corrupt_flips_one_payload_bit_at_publish_and_at_delivery() {
    let (broker, faults, chaos) = setup(3);
    let mut c = chaos.subscribe(sub(Duration::from_secs(30))).await.unwrap();
    {
        let _g = faults
            .add(Rule::new("c", Point::Publish, Fault::Corrupt))
            .unwrap();
        chaos.publish(msg(1)).await.unwrap();
    }
    let d = recv(&mut c).await;
    assert!(
        differs_by_one_bit(d.message(), &msg(1)),
        "{:?}",
        d.message().payload()
    );
    d.ack().await.unwrap();
    let _g = faults
        .add(Rule::new("c2", Point::Deliver, Fault::Corrupt))
        .unwrap();
    broker.publish(msg(2)).await.unwrap();
    let d = recv(&mut c).await;
    assert!(differs_by_one_bit(d.message(), &msg(2)));
}

#[tokio::test(start_paused = true)]
async fn held_publishes_are_released_shuffled_when_the_batch_is_full_or_too_old() {
    let (broker, faults, chaos) = setup(4);
    let mut c = broker
        .subscribe(sub(Duration::from_secs(30)))
        .await
        .unwrap();
    let g = faults
        .add(Rule::new(
            "hold",
            Point::Publish,
            Fault::Hold {
                count: 6,
                max_wait: Duration::from_secs(1),
            },
        ))
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..6 {
        pending.push(chaos.send(msg(i)).await.unwrap());
    }
    for p in pending {
        p.await.expect("released messages are confirmed");
    }
    let mut order = Vec::new();
    for _ in 0..6 {
        let d = recv(&mut c).await;
        order.push(d.message().id().to_string());
        d.ack().await.unwrap();
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..6).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "every message arrives once"
    );
    assert_ne!(
        order, sorted,
        "seed 4 shuffles this batch of 6 out of order"
    );
    drop(g);
    // A batch that never fills is released after max_wait.
    let _g = faults
        .add(Rule::new(
            "hold2",
            Point::Publish,
            Fault::Hold {
                count: 100,
                max_wait: Duration::from_secs(1),
            },
        ))
        .unwrap();
    let p = chaos.send(msg(9)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), p)
        .await
        .expect("released by max_wait")
        .unwrap();
    assert_eq!(recv(&mut c).await.message().id().as_str(), "m9");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_delivery_is_redelivered_after_its_lease_expires() {
    let (broker, faults, chaos) = setup(5);
    let mut c = chaos.subscribe(sub(Duration::from_secs(2))).await.unwrap();
    let _g = faults
        .add(Rule::new("lose-once", Point::Deliver, Fault::Drop).limit(1))
        .unwrap();
    broker.publish(msg(1)).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let d = recv(&mut c).await;
    assert_eq!(d.attempt(), 2, "the first delivery was dropped");
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "not before the lease expired"
    );
    d.ack().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_duplicated_delivery_comes_twice_and_the_second_settle_finds_the_lease_gone() {
    let (broker, faults, chaos) = setup(6);
    let mut c = chaos.subscribe(sub(Duration::from_secs(30))).await.unwrap();
    let _g = faults
        .add(Rule::new("dup", Point::Deliver, Fault::Duplicate))
        .unwrap();
    broker.publish(msg(1)).await.unwrap();
    let a = recv(&mut c).await;
    let b = recv(&mut c).await;
    assert_eq!(a.message(), b.message());
    assert_eq!(a.lease(), b.lease(), "the copy shares the lease");
    a.ack().await.unwrap();
    assert_eq!(b.ack().await.unwrap_err().kind(), ErrorKind::LeaseExpired);
}

#[tokio::test(start_paused = true)]
async fn delayed_deliveries_survive_a_cancelled_next() {
    let (broker, faults, chaos) = setup(7);
    let mut c = chaos.subscribe(sub(Duration::from_secs(30))).await.unwrap();
    let _g = faults
        .add(Rule::new(
            "slow",
            Point::Deliver,
            Fault::Delay(DelayDist::fixed(Duration::from_secs(3))),
        ))
        .unwrap();
    broker.publish(msg(1)).await.unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), c.next())
            .await
            .is_err(),
        "not before the delay"
    );
    let d = recv(&mut c).await;
    assert_eq!(
        d.message().id().as_str(),
        "m1",
        "the cancelled next lost nothing"
    );
    assert!(t0.elapsed() >= Duration::from_secs(3));
    assert_eq!(d.attempt(), 1);
}

#[tokio::test(start_paused = true)]
async fn held_deliveries_are_reordered() {
    let (broker, faults, chaos) = setup(8);
    let mut c = chaos
        .subscribe(sub(Duration::from_secs(30)).max_in_flight(16))
        .await
        .unwrap();
    let _g = faults
        .add(Rule::new(
            "hold",
            Point::Deliver,
            Fault::Hold {
                count: 5,
                max_wait: Duration::from_secs(1),
            },
        ))
        .unwrap();
    for i in 0..5 {
        broker.publish(msg(i)).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        let d = recv(&mut c).await;
        order.push(d.message().id().to_string());
        d.ack().await.unwrap();
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted.len(), 5);
    assert_ne!(order, sorted, "seed 8 shuffles this batch");
}

#[tokio::test(start_paused = true)]
async fn dropped_and_failed_acks_lead_to_redelivery() {
    let (broker, faults, chaos) = setup(9);
    let mut c = chaos.subscribe(sub(Duration::from_secs(2))).await.unwrap();
    let g = faults
        .add(Rule::new("lose-ack", Point::Ack, Fault::Drop).limit(1))
        .unwrap();
    broker.publish(msg(1)).await.unwrap();
    recv(&mut c)
        .await
        .ack()
        .await
        .expect("a dropped ack reports success");
    let again = recv(&mut c).await;
    assert_eq!(again.attempt(), 2, "the lost ack made the lease expire");
    drop(g);
    let _g = faults
        .add(Rule::new("fail-ack", Point::Ack, Fault::error(ErrorKind::Timeout)).limit(1))
        .unwrap();
    assert_eq!(again.ack().await.unwrap_err().kind(), ErrorKind::Timeout);
    let third = recv(&mut c).await;
    assert_eq!(third.attempt(), 3);
    third.ack().await.unwrap();
    quiet(&mut c, Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn partitions_fail_or_hang_until_healed() {
    let (_broker, faults, chaos) = setup(10);
    let id = faults
        .install(Rule::new(
            "cut",
            Point::Publish,
            Fault::Partition {
                mode: PartitionMode::Fail,
            },
        ))
        .unwrap();
    assert_eq!(
        chaos.publish(msg(1)).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    faults.remove(id);
    faults
        .install(Rule::new(
            "hang",
            Point::Publish,
            Fault::Partition {
                mode: PartitionMode::Hang,
            },
        ))
        .unwrap();
    let c2 = chaos.clone();
    let t = tokio::spawn(async move { c2.publish(msg(2)).await });
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!t.is_finished(), "a hanging partition blocks the publish");
    faults.heal();
    tokio::time::timeout(Duration::from_secs(1), t)
        .await
        .expect("healed")
        .unwrap()
        .expect("published");
}

#[tokio::test(start_paused = true)]
async fn connect_errors_refuse_subscriptions_and_lost_requests_time_out() {
    let (_broker, faults, chaos) = setup(11);
    let g = faults
        .add(Rule::new(
            "no-connect",
            Point::Connect,
            Fault::error(ErrorKind::Unavailable),
        ))
        .unwrap();
    assert_eq!(
        chaos
            .subscribe(sub(Duration::from_secs(1)))
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Unavailable)
    );
    drop(g);
    let _g = faults
        .add(Rule::new("lose", Point::Publish, Fault::Drop))
        .unwrap();
    let e = chaos
        .request(msg(1), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
}

#[tokio::test(start_paused = true)]
async fn a_restart_reopens_the_backend_and_consumers_resubscribe() {
    let broker = Broker::in_memory().unwrap();
    let faults = Faults::new(Seed::new(12));
    let b2 = broker.clone();
    let chaos = ChaosBackend::builder(Arc::new(broker.handle()), faults.clone())
        .label("checkout")
        .with_restart(move || {
            let b = b2.handle();
            async move { Ok(Arc::new(b) as Arc<dyn Backend>) }
        })
        .build();
    // Reconnecting this service (its label) is slow; the consumer's group is not targeted.
    let slow = Fault::Delay(DelayDist::fixed(Duration::from_secs(2)));
    let _g = faults
        .add(Rule::new("slow-reconnect", Point::Connect, slow).group("checkout"))
        .unwrap();
    let mut c = chaos.subscribe(sub(Duration::from_secs(30))).await.unwrap();
    chaos.publish(msg(1)).await.unwrap();
    recv(&mut c).await.ack().await.unwrap();
    let c2 = chaos.clone();
    let t0 = tokio::time::Instant::now();
    let restarting = tokio::spawn(async move { c2.restart(Duration::from_secs(1)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        chaos.publish(msg(2)).await.unwrap_err().kind(),
        ErrorKind::Unavailable,
        "down while restarting"
    );
    restarting.await.unwrap().expect("restarted");
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "1 s down plus the 2 s connect delay"
    );
    chaos.publish(msg(3)).await.expect("up again");
    let d = recv(&mut c).await;
    assert_eq!(
        d.message().id().as_str(),
        "m3",
        "the consumer resubscribed on the new backend"
    );
    assert_eq!(chaos.name(), "chaos+embedded");
    assert_eq!(chaos.capabilities(), broker.capabilities());
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_drops_the_same_messages_through_the_backend() {
    async fn dropped(seed: u64) -> Vec<u32> {
        let (_b, faults, chaos) = setup(seed);
        faults
            .install(Rule::new("lossy", Point::Publish, Fault::Drop).probability(0.3))
            .unwrap();
        let mut out = Vec::new();
        for i in 0..100 {
            if chaos.publish(msg(i)).await.is_err() {
                out.push(i);
            }
        }
        out
    }
    let a = dropped(77).await;
    assert!(
        (10..60).contains(&a.len()),
        "about 30 of 100 dropped, got {}",
        a.len()
    );
    assert_eq!(a, dropped(77).await, "same seed, same losses");
    assert_ne!(a, dropped(78).await, "another seed, other losses");
}

/// A wrapper over `broker` that reopens a fresh handle of it on restart, counting reopens.
fn reopening(broker: &Broker, faults: &Faults, label: &str) -> (ChaosBackend, Arc<AtomicU32>) {
    let opened = Arc::new(AtomicU32::new(0));
    let (b, n) = (broker.clone(), opened.clone());
    let chaos = ChaosBackend::builder(Arc::new(broker.handle()), faults.clone())
        .label(label)
        .with_restart(move || {
            n.fetch_add(1, Ordering::Relaxed);
            let h = b.handle();
            async move { Ok(Arc::new(h) as Arc<dyn Backend>) }
        })
        .build();
    (chaos, opened)
}

async fn until_restarted(chaos: &ChaosBackend, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while chaos.restarts() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no restart within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_restart_verdict_reopens_the_backend_and_every_confirmed_message_arrives() {
    let broker = Broker::in_memory().unwrap();
    let faults = Faults::new(Seed::new(21));
    let (chaos, opened) = reopening(&broker, &faults, "producers");
    let mut c = chaos.subscribe(sub(Duration::from_secs(30))).await.unwrap();
    let mut confirmed = std::collections::BTreeSet::new();
    for i in 0..10 {
        chaos.publish(msg(i)).await.expect("confirmed before");
        confirmed.insert(format!("m{i}"));
    }
    // Message 10 restarts the backend, down for a second: it is not sent, and its producer is
    // told so.
    let bounce = Fault::Restart {
        downtime: Duration::from_secs(1),
    };
    let _g = faults
        .add(Rule::new("bounce", Point::Publish, bounce).limit(1))
        .unwrap();
    let e = chaos.publish(msg(10)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("restarts"), "{e}");
    until_restarted(&chaos, 1).await;
    assert_eq!(opened.load(Ordering::Relaxed), 1, "reopened once");
    // Message 10 again (the producer's retry), and ten more, on the reopened backend.
    for i in 10..21 {
        chaos.publish(msg(i)).await.expect("confirmed after");
        confirmed.insert(format!("m{i}"));
    }
    let mut received = std::collections::BTreeSet::new();
    while received.len() < confirmed.len() {
        let d = recv(&mut c).await;
        received.insert(d.message().id().to_string());
        d.ack().await.unwrap();
    }
    assert_eq!(
        received, confirmed,
        "every message confirmed before and after the restart is delivered"
    );
    let restarts: Vec<_> = faults
        .events()
        .into_iter()
        .filter(|e| e.fault == "restart")
        .collect();
    assert_eq!(restarts.len(), 1, "one restart injected");
    assert_eq!(restarts[0].detail.as_deref(), Some("down 1s"));
    assert_eq!(restarts[0].message_id.as_deref(), Some("m10"));
}

#[tokio::test(start_paused = true)]
async fn a_restart_at_ack_fails_the_settle_and_the_message_comes_back() {
    let broker = Broker::in_memory().unwrap();
    let faults = Faults::new(Seed::new(22));
    let (chaos, _) = reopening(&broker, &faults, "svc");
    let mut c = chaos.subscribe(sub(Duration::from_secs(5))).await.unwrap();
    chaos.publish(msg(1)).await.unwrap();
    let bounce = Fault::Restart {
        downtime: Duration::ZERO,
    };
    let _g = faults
        .add(Rule::new("bounce-ack", Point::Ack, bounce).limit(1))
        .unwrap();
    let first = recv(&mut c).await;
    let e = first.ack().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    until_restarted(&chaos, 1).await;
    let again = recv(&mut c).await;
    assert_eq!(again.message().id().as_str(), "m1", "redelivered");
    again
        .ack()
        .await
        .expect("the reopened backend takes the ack");
    quiet(&mut c, Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_rule_is_refused_without_a_wrapper_that_can_reopen() {
    let (_broker, faults, plain) = setup(23);
    let rule = Rule::new(
        "bounce",
        Point::Publish,
        Fault::Restart {
            downtime: Duration::ZERO,
        },
    );
    let e = faults.add(rule.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(
        e.to_string().contains("with_restart") && e.to_string().contains("bounce"),
        "the error names the rule and the fix: {e}"
    );
    // With a wrapper that can reopen, the rule is accepted; the wrapper that cannot never
    // draws for it.
    let broker = Broker::in_memory().unwrap();
    let (able, _) = reopening(&broker, &faults, "able");
    assert!(faults.can_restart());
    let _g = faults.add(rule.clone()).unwrap();
    plain.publish(msg(1)).await.expect("not restarted");
    assert!(faults.events().is_empty());
    drop(_g);
    drop(able);
    assert!(
        !faults.can_restart(),
        "the registry forgets a dropped wrapper"
    );
    assert!(faults.add(rule).is_err());
}
