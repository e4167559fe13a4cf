//! Behaviour specific to the embedded broker (the universal contract is in `conformance.rs`):
//! streams and routing, retention and overflow, work queues, statistics, events, restarts over the
//! same storage, request-reply inboxes, closing, configuration errors.

mod support;

use std::sync::Arc;
use std::time::Duration;

use squall_broker::storage::{MemoryStorage, Storage};
use squall_broker::{Broker, BrokerConfig, BrokerEvent, Discard, Retention, StreamConfig};
use squall_core::{
    Consumer, DeadLetter, ErrorKind, Message, Pattern, Publisher, Requester, StartPosition,
    Subscriber, Subscription,
};
use support::next;

fn msg(subject: &str, payload: &str) -> Message {
    Message::builder(subject)
        .unwrap()
        .payload(payload.to_string())
        .build()
}

fn p(s: &str) -> Pattern {
    Pattern::new(s).unwrap()
}

async fn nothing_within(c: &mut Box<dyn Consumer>, d: Duration) {
    if let Ok(got) = tokio::time::timeout(d, c.next()).await {
        panic!("expected nothing, got {got:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn explicit_streams_capture_their_subjects_and_the_rest_goes_to_default() {
    let b = Broker::in_memory().unwrap();
    b.create_stream(StreamConfig::new("orders", vec![p("orders.>")]))
        .unwrap();
    let a1 = b.publish(msg("orders.eu.created", "1")).await.unwrap();
    let a2 = b.publish(msg("billing.paid", "2")).await.unwrap();
    assert_eq!(a1.stream.as_deref(), Some("orders"));
    assert_eq!(a2.stream.as_deref(), Some("default"));
    assert_eq!(
        (a1.sequence, a2.sequence),
        (1, 1),
        "each stream numbers its own messages"
    );

    let overlap = b
        .create_stream(StreamConfig::new("eu", vec![p("*.eu.>")]))
        .unwrap_err();
    assert_eq!(overlap.kind(), ErrorKind::Conflict, "{overlap}");

    let spans = b
        .subscribe(Subscription::new(">").unwrap().group("all").unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(spans.kind(), ErrorKind::Conflict, "{spans}");
    assert!(spans.to_string().contains("orders"), "{spans}");

    let mut c = b
        .subscribe(
            Subscription::new("orders.*.created")
                .unwrap()
                .group("g")
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(&next(&mut c).await.message().payload()[..], b"1");
}

#[tokio::test(start_paused = true)]
async fn without_a_default_stream_unrouted_subjects_are_refused() {
    let config = BrokerConfig {
        default_stream: None,
        ..Default::default()
    };
    let b = Broker::builder().config(config).open().unwrap();
    let e = b.publish(msg("nowhere.x", "")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("broker.default_stream"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn max_messages_with_discard_old_drops_the_oldest_and_says_so() {
    let b = Broker::in_memory().unwrap();
    let mut events = b.events();
    let mut cfg = StreamConfig::new("s", vec![p("s.>")]);
    cfg.max_messages = Some(3);
    b.create_stream(cfg).unwrap();
    for i in 0..5 {
        b.publish(msg("s.x", &i.to_string())).await.unwrap();
    }
    let st = b.stream_stats("s").await.unwrap();
    assert_eq!(
        (st.messages, st.first_sequence, st.last_sequence, st.dropped),
        (3, 3, 5, 2)
    );
    let mut c = b
        .subscribe(
            Subscription::new("s.>")
                .unwrap()
                .start(StartPosition::First),
        )
        .await
        .unwrap();
    assert_eq!(
        &next(&mut c).await.message().payload()[..],
        b"2",
        "oldest kept is the third"
    );
    let mut reported = 0;
    while let Ok(e) = events.try_recv() {
        match e {
            BrokerEvent::RetentionDropped { stream, count } => {
                assert_eq!(stream, "s");
                reported += count;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reported, 2, "every dropped message is reported");
}

#[tokio::test(start_paused = true)]
async fn discard_new_refuses_publishes_when_full_with_a_retryable_error() {
    let b = Broker::in_memory().unwrap();
    b.create_stream(StreamConfig::work_queue("jobs", vec![p("jobs.>")], 2))
        .unwrap();
    b.publish(msg("jobs.a", "1")).await.unwrap();
    b.publish(msg("jobs.a", "2")).await.unwrap();
    let e = b.publish(msg("jobs.a", "3")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Full);
    assert!(e.is_retryable());
    assert!(e.to_string().contains("stream.max_messages"), "{e}");

    // Consuming makes room: work-queue retention removes what every group settled.
    let mut c = b
        .subscribe(Subscription::new("jobs.>").unwrap().group("w").unwrap())
        .await
        .unwrap();
    next(&mut c).await.ack().await.unwrap();
    assert_eq!(b.stream_stats("jobs").await.unwrap().messages, 1);
    b.publish(msg("jobs.a", "3")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn work_queue_keeps_a_message_until_every_group_settled_it() {
    let b = Broker::in_memory().unwrap();
    let mut cfg = StreamConfig::new("wq", vec![p("wq.>")]);
    cfg.retention = Retention::WorkQueue;
    b.create_stream(cfg).unwrap();
    let mut g1 = b
        .subscribe(Subscription::new("wq.>").unwrap().group("a").unwrap())
        .await
        .unwrap();
    let mut g2 = b
        .subscribe(Subscription::new("wq.>").unwrap().group("b").unwrap())
        .await
        .unwrap();
    b.publish(msg("wq.x", "1")).await.unwrap();
    next(&mut g1).await.ack().await.unwrap();
    assert_eq!(
        b.stream_stats("wq").await.unwrap().messages,
        1,
        "group b has not settled it"
    );
    next(&mut g2).await.ack().await.unwrap();
    assert_eq!(b.stream_stats("wq").await.unwrap().messages, 0);
}

#[tokio::test(start_paused = true)]
async fn max_age_removes_old_messages() {
    let b = Broker::in_memory().unwrap();
    let mut cfg = StreamConfig::new("aged", vec![p("aged.>")]);
    cfg.max_age = Some(Duration::from_secs(60));
    b.create_stream(cfg).unwrap();
    b.publish(msg("aged.x", "old")).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    b.publish(msg("aged.x", "new")).await.unwrap();
    let st = b.stream_stats("aged").await.unwrap();
    assert_eq!((st.messages, st.first_sequence), (1, 2));
    assert_eq!(st.oldest_age, Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn stats_report_depth_in_flight_lag_age_and_dead_letters() {
    let b = Broker::in_memory().unwrap();
    let sub = Subscription::new("st.>")
        .unwrap()
        .group("g")
        .unwrap()
        .max_deliveries(1);
    let mut c = b.subscribe(sub).await.unwrap();
    for i in 0..4 {
        b.publish(msg("st.x", &i.to_string())).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let d1 = next(&mut c).await;
    let d2 = next(&mut c).await;
    d1.ack().await.unwrap();
    d2.reject("bad").await.unwrap();
    let _held = next(&mut c).await;
    let st = b.stream_stats("default").await.unwrap();
    let g = st.groups.iter().find(|g| g.name == "g").unwrap();
    assert_eq!(st.messages, 4);
    assert_eq!(st.oldest_age, Some(Duration::from_secs(10)));
    assert_eq!((g.members, g.in_flight, g.ack_floor, g.lag), (1, 1, 2, 2));
    assert_eq!(
        (
            g.counters.delivered,
            g.counters.acked,
            g.counters.dead_lettered
        ),
        (3, 1, 1)
    );
    let dlq = b.stream_stats("dlq").await.unwrap();
    assert_eq!(dlq.messages, 1, "DLQ depth is the dlq stream's depth");
}

#[tokio::test(start_paused = true)]
async fn a_group_falling_behind_is_reported_as_a_slow_consumer_once() {
    let config = BrokerConfig {
        slow_consumer_lag: 5,
        ..Default::default()
    };
    let b = Broker::builder().config(config).open().unwrap();
    let mut events = b.events();
    let mut c = b
        .subscribe(Subscription::new("slow.>").unwrap().group("g").unwrap())
        .await
        .unwrap();
    for i in 0..10 {
        b.publish(msg("slow.x", &i.to_string())).await.unwrap();
    }
    let _d = next(&mut c).await;
    let _d2 = next(&mut c).await;
    let mut slow = 0;
    while let Ok(e) = events.try_recv() {
        if let BrokerEvent::SlowConsumer { group, lag, .. } = e {
            assert_eq!(group, "g");
            assert!(lag > 5);
            slow += 1;
        }
    }
    assert_eq!(slow, 1, "reported once per episode, not per delivery");
}

#[tokio::test(start_paused = true)]
async fn lease_expiry_is_reported_as_an_event() {
    let b = Broker::in_memory().unwrap();
    let mut events = b.events();
    let mut c = b
        .subscribe(
            Subscription::new("le.>")
                .unwrap()
                .group("g")
                .unwrap()
                .ack_wait(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    b.publish(msg("le.x", "1")).await.unwrap();
    let first = next(&mut c).await;
    let again = next(&mut c).await; // waits until the lease expires, then redelivers
    assert_eq!(again.attempt(), 2);
    assert_eq!(first.message().id(), again.message().id());
    let e = events.try_recv().unwrap();
    assert!(
        matches!(&e, BrokerEvent::LeaseExpired { group, sequence: 1, attempts: 1, .. } if group == "g"),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_durable_group_survives_reopening_the_broker_and_a_plain_group_does_not() {
    let storage: Arc<dyn Storage> = MemoryStorage::new();
    let b = Broker::builder().storage(storage.clone()).open().unwrap();
    let durable = Subscription::new("r.>")
        .unwrap()
        .group("keep")
        .unwrap()
        .durable(true);
    let plain = Subscription::new("r.>").unwrap().group("temp").unwrap();
    let mut d = b.subscribe(durable.clone()).await.unwrap();
    let mut t = b.subscribe(plain.clone()).await.unwrap();
    for i in 0..3 {
        b.publish(msg("r.x", &i.to_string())).await.unwrap();
    }
    next(&mut d).await.ack().await.unwrap();
    let _unacked = next(&mut d).await;
    next(&mut t).await.ack().await.unwrap();
    drop((d, t));
    b.close().await.unwrap();

    let b = Broker::builder().storage(storage).open().unwrap();
    let st = b.stream_stats("default").await.unwrap();
    let names: Vec<&str> = st.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["keep"], "only the durable group is remembered");
    let mut d = b.subscribe(durable).await.unwrap();
    let redelivered = next(&mut d).await;
    assert_eq!(
        &redelivered.message().payload()[..],
        b"1",
        "acked message 0 is not redelivered"
    );
    assert_eq!(
        redelivered.attempt(),
        2,
        "the unacked one comes back as a redelivery"
    );
    redelivered.ack().await.unwrap();
    assert_eq!(&next(&mut d).await.message().payload()[..], b"2");
}

#[tokio::test(start_paused = true)]
async fn the_dedup_window_survives_reopening() {
    let storage: Arc<dyn Storage> = MemoryStorage::new();
    let b = Broker::builder().storage(storage.clone()).open().unwrap();
    let m = Message::builder("dd.x")
        .unwrap()
        .id("order-7")
        .unwrap()
        .build();
    let first = b.publish(m.clone()).await.unwrap();
    b.close().await.unwrap();
    let b = Broker::builder().storage(storage).open().unwrap();
    let again = b.publish(m).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);
}

#[tokio::test(start_paused = true)]
async fn request_without_responders_fails_fast_and_stray_replies_are_refused() {
    let b = Broker::in_memory().unwrap();
    let e = b
        .request(msg("users.get", "42"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoResponders);
    let e = b
        .publish(msg("_inbox.gone", "late reply"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoResponders);
    assert_eq!(
        b.stream_stats("default").await.unwrap().messages,
        0,
        "inbox traffic is never stored"
    );
}

#[tokio::test(start_paused = true)]
async fn closing_ends_consumers_and_refuses_publishes() {
    let b = Broker::in_memory().unwrap();
    let mut c = b
        .subscribe(Subscription::new("cl.>").unwrap())
        .await
        .unwrap();
    let waiter = tokio::spawn(async move { c.next().await.is_none() });
    tokio::task::yield_now().await;
    b.close().await.unwrap();
    assert!(waiter.await.unwrap(), "a waiting consumer sees the end");
    assert_eq!(
        b.publish(msg("cl.x", "")).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        b.subscribe(Subscription::new("cl.>").unwrap())
            .await
            .err()
            .unwrap()
            .kind(),
        ErrorKind::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn configuration_errors_name_the_key() {
    let e = Broker::builder().max_payload(0).open().err().unwrap();
    assert!(e.to_string().contains("broker.max_payload"), "{e}");
    let b = Broker::builder().max_payload(10).open().unwrap();
    let e = b.publish(msg("big.x", "01234567890")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidMessage);
    assert!(e.to_string().contains("broker.max_payload"), "{e}");
    let mut cfg = StreamConfig::new("x", vec![p("x.>")]);
    cfg.discard = Discard::New;
    cfg.max_bytes = Some(0);
    assert!(
        b.create_stream(cfg)
            .unwrap_err()
            .to_string()
            .contains("stream.max_bytes")
    );
    let e = b
        .subscribe(Subscription::new("a").unwrap().ack_wait(Duration::ZERO))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("subscription.ack_wait"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_group_joined_with_another_pattern_is_a_conflict() {
    let b = Broker::in_memory().unwrap();
    let _c = b
        .subscribe(Subscription::new("a.>").unwrap().group("g").unwrap())
        .await
        .unwrap();
    let e = b
        .subscribe(Subscription::new("b.>").unwrap().group("g").unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Conflict);
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_carries_its_envelope_and_can_be_redriven() {
    let b = Broker::in_memory().unwrap();
    let mut c = b
        .subscribe(Subscription::new("dl.>").unwrap().group("g").unwrap())
        .await
        .unwrap();
    let mut dlq = b
        .subscribe(Subscription::new("dlq.>").unwrap().group("ops").unwrap())
        .await
        .unwrap();
    b.publish(msg("dl.x", "poison")).await.unwrap();
    next(&mut c).await.reject("cannot parse").await.unwrap();
    let dead = next(&mut dlq).await;
    let env = DeadLetter::read(dead.message()).unwrap().unwrap();
    assert_eq!(env.origin_subject.as_str(), "dl.x");
    assert_eq!(env.group.as_deref(), Some("g"));
    assert_eq!(env.error, "cannot parse");
    assert_eq!(env.attempts.len(), 1);
    b.publish(DeadLetter::redrive(dead.message(), None).unwrap())
        .await
        .unwrap();
    dead.ack().await.unwrap();
    let back = next(&mut c).await;
    assert_eq!(&back.message().payload()[..], b"poison");
    assert_eq!(back.attempt(), 1, "a redriven message starts over");
    nothing_within(&mut dlq, Duration::from_secs(30)).await;
}
