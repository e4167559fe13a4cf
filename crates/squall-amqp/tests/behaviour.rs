//! What the conformance suite does not reach: refusals with `Unsupported` and other typed errors,
//! the direct, fanout and headers exchange kinds, quorum queues (delivery counts across consumer
//! crashes), dead letters nobody subscribed to, the durability acks claim, `close` waiting for
//! confirms, redelivery backoff, and a time to live running out in a delay queue.

mod support;

use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use squall_core::{
    Consumer, DeadLetter, DeadLetterReason, Durability, ErrorKind, Message, Publisher, Requester,
    StartPosition, Subscriber, Subscription, Timestamp, headers,
};
use squall_testkit::{Must, collect, expect_err, expect_quiet, recv};
use support::{Scope, amqp_url};

const T: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn msg(subject: &str, id: &str) -> Message {
    Message::builder(subject)
        .unwrap()
        .id(id)
        .unwrap()
        .payload(id.to_string())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_rabbitmq_cannot_do_is_refused_with_unsupported() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "unsupported", "");
    let b = scope.backend().await.must("connecting");
    let sub = || Subscription::new("u.>").unwrap();
    let unsupported = [
        ("start First", sub().start(StartPosition::First)),
        ("start Sequence", sub().start(StartPosition::Sequence(3))),
        (
            "start Time",
            sub().start(StartPosition::Time(Timestamp::now())),
        ),
        (
            "ordered_by_key",
            sub().group("g").unwrap().ordered_by_key(true),
        ),
        ("a named stream", sub().stream("orders")),
    ];
    for (what, s) in unsupported {
        let e = expect_err(
            b.subscribe(s).await.map(|_| ()),
            &[ErrorKind::Unsupported],
            what,
        );
        assert!(e.to_string().contains("amqp"), "{what}: {e}");
    }
    let e = expect_err(
        b.subscribe(sub().max_in_flight(70_000)).await.map(|_| ()),
        &[ErrorKind::InvalidConfig],
        "max_in_flight over 65535",
    );
    assert!(e.to_string().contains("max_in_flight"), "{e}");
    let delayed = Message::builder("u.q")
        .unwrap()
        .delay(Duration::from_secs(1))
        .build();
    expect_err(
        b.request(delayed, T).await.map(|_| ()),
        &[ErrorKind::Unsupported],
        "a delayed request",
    );
    let reserved = Message::builder("u.x")
        .unwrap()
        .header("x-squall-attempt", "1")
        .unwrap()
        .build();
    expect_err(
        b.publish(reserved).await.map(|_| ()),
        &[ErrorKind::InvalidMessage],
        "a reserved header name",
    );
    let too_late = Message::builder("u.x")
        .unwrap()
        .delay(Duration::from_secs(30 * 86_400))
        .build();
    expect_err(
        b.publish(too_late).await.map(|_| ()),
        &[ErrorKind::InvalidMessage],
        "a delay over 24 days",
    );

    let direct = Scope::new(&url, "unsupported-direct", "exchange_kind=direct");
    let d = direct.backend().await.must("connecting");
    let e = expect_err(
        d.subscribe(Subscription::new("a.*").unwrap())
            .await
            .map(|_| ()),
        &[ErrorKind::Unsupported],
        "a wildcard on a direct exchange",
    );
    assert!(e.to_string().contains("direct"), "{e}");
    assert_eq!(
        squall_core::Backend::capabilities(&d).wildcards,
        squall_core::Support::Missing
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_credentials_and_unreachable_brokers_are_typed() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "conflict", "");
    let b = scope.backend().await.must("connecting");
    let durable = Subscription::new("c.>")
        .unwrap()
        .group("g")
        .unwrap()
        .durable(true);
    let _c = b.subscribe(durable).await.must("a durable group");
    let transient = Subscription::new("c.>").unwrap().group("g").unwrap();
    let e = expect_err(
        b.subscribe(transient).await.map(|_| ()),
        &[ErrorKind::Conflict],
        "the same group without durability",
    );
    assert!(e.to_string().contains("group `g`"), "{e}");

    // The exchange exists as a topic exchange: declaring it as fanout is a conflict.
    let fanout = format!(
        "{url}{}exchange={}&exchange_kind=fanout",
        if url.contains('?') { '&' } else { '?' },
        scope.exchange
    );
    let f = squall_amqp::AmqpBackend::connect_url(&fanout)
        .await
        .must("connecting");
    expect_err(
        f.publish(msg("c.x", "x")).await.map(|_| ()),
        &[ErrorKind::Conflict],
        "an exchange of another kind",
    );

    let mut bad = url::Url::parse(&url).unwrap();
    bad.set_password(Some("wrong-password")).unwrap();
    let e = expect_err(
        squall_amqp::AmqpBackend::connect_url(bad.as_str())
            .await
            .map(|_| ()),
        &[ErrorKind::InvalidConfig],
        "wrong credentials",
    );
    assert!(
        !e.to_string().contains("wrong-password"),
        "the password leaked: {e}"
    );
    let mut closed = url::Url::parse(&url).unwrap();
    closed.set_port(Some(1)).unwrap();
    expect_err(
        squall_amqp::AmqpBackend::connect_url(closed.as_str())
            .await
            .map(|_| ()),
        &[ErrorKind::Unavailable],
        "a port nobody listens on",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_fanout_and_headers_exchanges_route_by_subject() {
    let Some(url) = amqp_url() else { return };
    for kind in ["direct", "fanout", "headers"] {
        let scope = Scope::new(&url, kind, &format!("exchange_kind={kind}"));
        let b = scope.backend().await.must("connecting");
        let mut exact = b
            .subscribe(Subscription::new("k.a").unwrap())
            .await
            .must("a literal subscription");
        let mut group = b
            .subscribe(Subscription::new("k.a").unwrap().group("g").unwrap())
            .await
            .must("a group");
        let mut wild = if kind == "fanout" {
            Some(
                b.subscribe(Subscription::new("k.*").unwrap())
                    .await
                    .must("a wildcard on fanout (emulated)"),
            )
        } else {
            None
        };
        b.publish(msg("k.a", "a")).await.must("publishing k.a");
        b.publish(msg("k.b", "b")).await.must("publishing k.b");
        for (who, c) in [("exact", &mut exact), ("group", &mut group)] {
            let d = recv(c.as_mut(), T, &format!("{kind}: {who}")).await;
            assert_eq!(d.message().id().as_str(), "a", "{kind}: {who}");
            d.ack().await.must("acking");
            expect_quiet(c.as_mut(), QUIET).await;
        }
        if let Some(w) = wild.as_mut() {
            let got = collect(w.as_mut(), 2, T).await;
            let ids: Vec<&str> = got.iter().map(|d| d.message().id().as_str()).collect();
            assert_eq!(ids, ["a", "b"], "fanout wildcard");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_count_returns_from_crashed_consumers() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "quorum", "queue_type=quorum");
    let sub = Subscription::new("q.>")
        .unwrap()
        .group("workers")
        .unwrap()
        .durable(true)
        .max_deliveries(2);
    let watcher = scope.backend().await.must("connecting");
    let mut dlq = watcher
        .subscribe(Subscription::new("dlq.q.>").unwrap())
        .await
        .must("subscribing to dead letters");
    for round in 1..=2u32 {
        // A member that dies holding the message: its connection closes, RabbitMQ returns it.
        let crashing = scope.backend().await.must("connecting");
        let mut c = crashing.subscribe(sub.clone()).await.must("joining");
        if round == 1 {
            let ack = watcher
                .publish(msg("q.job", "job-1"))
                .await
                .must("publishing");
            assert_eq!(
                ack.durability,
                Durability::Fsynced,
                "single-node quorum queue"
            );
        }
        let d = recv(c.as_mut(), T, &format!("delivery {round}")).await;
        assert_eq!(d.attempt(), round, "x-delivery-count makes attempts exact");
        Publisher::close(&crashing).await.must("closing the member");
        drop(d);
    }
    // The third delivery is over max_deliveries: dead-lettered on receipt, never handed out.
    let last = scope.backend().await.must("connecting");
    let mut c = last.subscribe(sub).await.must("joining");
    let dl = recv(dlq.as_mut(), T, "the dead letter").await;
    let env = DeadLetter::read(dl.message())
        .must("reading")
        .expect("an envelope");
    assert_eq!(env.reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(env.origin_id, "job-1");
    assert_eq!(env.group.as_deref(), Some("workers"));
    expect_quiet(c.as_mut(), QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_nobody_subscribed_to_is_parked() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "parked", "");
    let b = scope.backend().await.must("connecting");
    let mut c = b
        .subscribe(Subscription::new("p.>").unwrap().group("g").unwrap())
        .await
        .must("subscribing");
    b.publish(msg("p.x", "poison")).await.must("publishing");
    let d = recv(c.as_mut(), T, "the poison message").await;
    d.reject("cannot parse").await.must("rejecting");
    let plain = scope.plain().await;
    let ch = plain.create_channel().await.unwrap();
    let parked = format!("{}.parked", scope.exchange);
    let got = ch
        .basic_get(parked.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the dead letter in the parked queue");
    assert_eq!(
        got.delivery.routing_key.as_str(),
        parked,
        "sent straight to the queue"
    );
    let h = got.delivery.properties.headers().clone().unwrap();
    let Some(AMQPValue::LongString(env)) = h.inner().get(headers::DEAD_LETTER) else {
        panic!("no envelope header in {h:?}");
    };
    let env = String::from_utf8_lossy(env.as_bytes());
    assert!(env.contains("\"error\":\"cannot parse\""), "{env}");
    expect_quiet(c.as_mut(), QUIET).await;
    let _ = plain.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_claim_what_the_configuration_gives() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "durability", "");
    let b = scope.backend().await.must("connecting");
    let _g = b
        .subscribe(Subscription::new("d.>").unwrap().group("g").unwrap())
        .await
        .must("subscribing");
    let ack = b.publish(msg("d.x", "p")).await.must("persistent");
    assert_eq!(
        (ack.durability, ack.duplicate),
        (Durability::Fsynced, false)
    );

    let transient = Scope::new(&url, "durability-t", "persistent=false&mandatory=true");
    let t = transient.backend().await.must("connecting");
    assert_eq!(
        squall_core::Backend::capabilities(&t).max_durability,
        Durability::Memory
    );
    let _s = t
        .subscribe(Subscription::new("d.bound").unwrap())
        .await
        .must("subscribing");
    let ack = t.publish(msg("d.bound", "m")).await.must("transient");
    assert_eq!(ack.durability, Durability::Memory);
    let e = expect_err(
        t.publish(msg("d.nobody", "n")).await.map(|_| ()),
        &[ErrorKind::NoResponders],
        "an unroutable publish with mandatory=true",
    );
    assert!(e.to_string().contains("d.nobody"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_every_confirm() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "close", "max_unconfirmed=64");
    let b = scope.backend().await.must("connecting");
    let reader = scope.backend().await.must("connecting");
    let sub = Subscription::new("close.>")
        .unwrap()
        .group("g")
        .unwrap()
        .max_in_flight(500);
    let mut c = reader.subscribe(sub).await.must("subscribing");
    let n = 300;
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(
            b.send(msg("close.x", &format!("m{i}")))
                .await
                .must("sending"),
        );
    }
    Publisher::close(&b).await.must("closing");
    for (i, p) in pending.into_iter().enumerate() {
        p.await.must(&format!("confirm {i} after close"));
    }
    expect_err(
        b.publish(msg("close.x", "late")).await.map(|_| ()),
        &[ErrorKind::Closed],
        "publishing after close",
    );
    let got = collect(c.as_mut(), n, T).await;
    assert_eq!(got.len(), n, "every confirmed message arrives");
    for d in got {
        d.ack().await.must("acking");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_waits_for_the_backoff_and_ttl_runs_out_in_a_delay() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "backoff", "");
    let b = scope.backend().await.must("connecting");
    let (ack_wait, backoff) = (Duration::from_millis(400), Duration::from_millis(700));
    let mut c = b
        .subscribe(
            Subscription::new("b.>")
                .unwrap()
                .ack_wait(ack_wait)
                .backoff(vec![backoff]),
        )
        .await
        .must("subscribing");
    b.publish(msg("b.x", "slow")).await.must("publishing");
    let first = recv(c.as_mut(), T, "first delivery").await;
    let t0 = tokio::time::Instant::now();
    let second = recv(c.as_mut(), T, "redelivery").await;
    let waited = t0.elapsed();
    assert!(
        waited + Duration::from_millis(50) >= ack_wait + backoff,
        "redelivered after {waited:?}, before the lease ({ack_wait:?}) plus backoff ({backoff:?})"
    );
    assert_eq!(second.attempt(), 2);
    second.ack().await.must("acking");
    expect_err(
        first.ack().await,
        &[ErrorKind::LeaseExpired],
        "the expired lease",
    );

    // A delay longer than the time to live: the message must never arrive.
    let doomed = Message::builder("b.y")
        .unwrap()
        .id("doomed")
        .unwrap()
        .delay(Duration::from_millis(600))
        .ttl(Duration::from_millis(200))
        .build();
    b.publish(doomed).await.must("publishing a doomed message");
    b.publish(msg("b.z", "alive")).await.must("publishing");
    let d = recv(c.as_mut(), T, "the live message").await;
    assert_eq!(d.message().id().as_str(), "alive");
    d.ack().await.must("acking");
    expect_quiet(c.as_mut(), Duration::from_millis(1200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_byte_subject_reaches_wildcard_and_literal_subscribers() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "long", "");
    let b = scope.backend().await.must("connecting");
    let long = format!("l.{}", "z".repeat(254));
    let mut star = b
        .subscribe(Subscription::new("l.*").unwrap())
        .await
        .must("a wildcard");
    let mut exact = b
        .subscribe(Subscription::new(&long).unwrap())
        .await
        .must("the literal");
    let mut other = b
        .subscribe(Subscription::new("m.*").unwrap())
        .await
        .must("another wildcard");
    b.publish(msg(&long, "long")).await.must("publishing");
    for (who, c) in [("l.*", &mut star), ("literal", &mut exact)] {
        let d = recv(c.as_mut(), T, who).await;
        assert_eq!(d.message().subject().as_str(), long, "{who}");
        d.ack().await.must("acking");
    }
    expect_quiet(other.as_mut(), QUIET).await;
    Consumer::close(other.as_mut()).await.must("closing");
}

/// One member's record of a delivery: id, attempt, when it arrived, how long it was held, and
/// whether the ack succeeded.
type Hold = (String, u32, tokio::time::Instant, Duration, bool);

/// The rule of the suite's `no_two_holders`, with the members joined before the messages are
/// published (a RabbitMQ group's queue holds only what was published after it was created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_never_hold_one_message_at_once() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "holders", "");
    let b = scope.backend().await.must("connecting");
    let ack_wait = Duration::from_millis(600);
    let slack = Duration::from_millis(50);
    let sub = Subscription::new("h.>")
        .unwrap()
        .group("g")
        .unwrap()
        .ack_wait(ack_wait);
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Hold>::new()));
    let mut members = Vec::new();
    for m in 0..2u64 {
        let mut c = b.subscribe(sub.clone()).await.must("joining");
        let log = log.clone();
        members.push(tokio::spawn(async move {
            let mut holders = Vec::new();
            let mut k = m;
            while let Ok(Some(d)) = tokio::time::timeout(ack_wait * 4, c.next()).await {
                let d = d.must("receiving");
                let received = tokio::time::Instant::now();
                k += 1;
                // Every other first delivery is held past its lease.
                let held = if d.attempt() == 1 && k % 2 == 0 {
                    ack_wait * 3 / 2
                } else {
                    ack_wait / 5
                };
                let log = log.clone();
                holders.push(tokio::spawn(async move {
                    let (id, attempt) = (d.message().id().to_string(), d.attempt());
                    tokio::time::sleep(held).await;
                    let ok = d.ack().await.is_ok();
                    log.lock().unwrap().push((id, attempt, received, held, ok));
                }));
            }
            for h in holders {
                h.await.unwrap();
            }
            c
        }));
    }
    for i in 0..6 {
        b.publish(msg("h.x", &format!("h{i}")))
            .await
            .must("publishing");
    }
    for m in members {
        m.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert!(
        log.iter().any(|h| h.1 > 1),
        "no lease ran out, so nothing was checked: {log:?}"
    );
    for i in 0..6 {
        let id = format!("h{i}");
        let mut holds: Vec<&Hold> = log.iter().filter(|h| h.0 == id).collect();
        holds.sort_by_key(|h| h.1);
        let oks: Vec<u32> = holds.iter().filter(|h| h.4).map(|h| h.1).collect();
        assert_eq!(
            oks.len(),
            1,
            "{id}: successful acks at attempts {oks:?}: {holds:?}"
        );
        assert_eq!(
            oks[0],
            holds.last().unwrap().1,
            "{id}: an earlier attempt was acked"
        );
        for w in holds.windows(2) {
            let gap = w[1].2.saturating_duration_since(w[0].2);
            assert!(
                gap + slack >= ack_wait,
                "{id}: redelivered {gap:?} after, inside the lease"
            );
            assert_eq!(w[1].1, w[0].1 + 1, "{id}: attempts {holds:?}");
        }
        for h in &holds {
            if h.3 > ack_wait + slack {
                assert!(!h.4, "{id}: an ack after holding {:?} succeeded", h.3);
            }
        }
    }
}
