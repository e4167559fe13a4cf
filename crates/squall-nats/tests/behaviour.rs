//! NATS-specific behaviour beyond the universal suite: what is refused with `Unsupported` (and
//! named), core NATS flow control without redelivery, stream selection and binding, group
//! conflicts, pipelined publishing, long lease extensions, backoff, and closed handles.
//! Against `SQUALL_NATS_URL`.

mod support;

use std::time::Duration;

use async_nats::jetstream::stream;
use squall_core::{
    Consumer, Durability, ErrorKind, Message, Publisher, Requester, StartPosition, Subject,
    Subscriber, Subscription,
};
use squall_nats::NatsBackend;
use support::{JS_TEST_OPTIONS, Scope, nats_url, tag, with_options};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);

async fn next(c: &mut dyn Consumer) -> squall_core::Delivery {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("a delivery within 5 s")
        .expect("consumer open")
        .expect("no consumer error")
}

async fn quiet(c: &mut dyn Consumer, d: Duration) {
    if let Ok(r) = tokio::time::timeout(d, c.next()).await {
        panic!("expected nothing for {d:?}, got {r:?}");
    }
}

fn msg(subject: &str, i: usize) -> Message {
    Message::builder(subject)
        .and_then(|b| b.id(format!("m-{i}")))
        .expect("message")
        .payload(format!("p-{i}"))
        .build()
}

fn unsupported<T: std::fmt::Debug>(r: squall_core::Result<T>, mentions: &str) {
    let e = r.expect_err("must be refused");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains(mentions), "`{mentions}` not in: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_refuses_what_it_cannot_do_and_names_it() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, "");
    let b = scope.backend().await.expect("connect");
    let p = format!("behave.{}", tag());
    let sub = || Subscription::new(format!("{p}.>")).expect("pattern");
    let open = |s: Subscription| {
        let b = b.clone();
        async move { b.subscribe(s).await.map(|_| ()) }
    };
    unsupported(
        open(sub().group("g").expect("group").durable(true)).await,
        "durable groups",
    );
    unsupported(open(sub().max_deliveries(3)).await, "dead letters");
    unsupported(
        open(sub().dead_letter(Subject::new("dlq.x").expect("subject"))).await,
        "dead letters",
    );
    unsupported(
        open(sub().backoff(vec![Duration::from_secs(1)])).await,
        "backoff",
    );
    unsupported(open(sub().start(StartPosition::First)).await, "replay");
    unsupported(
        open(sub().start(StartPosition::Sequence(3))).await,
        "sequence",
    );
    unsupported(open(sub().stream("S")).await, "streams");
    unsupported(open(sub().ordered_by_key(true)).await, "per-key ordering");
    let mut delayed = msg(&format!("{p}.x"), 0);
    delayed.set_delay(Some(Duration::from_secs(1)));
    unsupported(b.publish(delayed).await, "delayed delivery");
    let mut ttl = msg(&format!("{p}.x"), 1);
    ttl.set_ttl(Some(Duration::from_secs(1)));
    unsupported(b.publish(ttl).await, "time to live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_settling_is_honest_and_never_redelivers() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, "");
    let b = scope.backend().await.expect("connect");
    let subject = format!("behave.{}.settle", tag());
    let mut c = b
        .subscribe(Subscription::new(&subject).expect("pattern"))
        .await
        .expect("subscribe");
    for i in 0..4 {
        b.publish(msg(&subject, i)).await.expect("publish");
    }
    let d = next(c.as_mut()).await;
    unsupported(d.nack(Duration::ZERO).await, "at-most-once");
    let mut d = next(c.as_mut()).await;
    unsupported(d.extend(Duration::from_secs(1)).await, "lease");
    unsupported(d.reject("bad").await, "dead letters");
    let d = next(c.as_mut()).await;
    d.ack()
        .await
        .expect("ack is accepted: nothing will redeliver");
    let d = next(c.as_mut()).await;
    assert_eq!(d.message().id().as_str(), "m-3", "nothing came back");
    assert_eq!(d.sequence(), 0);
    drop(d);
    quiet(c.as_mut(), Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_max_in_flight_holds_and_frees_slots_after_ack_wait() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, "");
    let b = scope.backend().await.expect("connect");
    let subject = format!("behave.{}.flow", tag());
    let ack_wait = Duration::from_millis(600);
    let mut c = b
        .subscribe(
            Subscription::new(&subject)
                .expect("pattern")
                .max_in_flight(2)
                .ack_wait(ack_wait),
        )
        .await
        .expect("subscribe");
    for i in 0..4 {
        b.publish(msg(&subject, i)).await.expect("publish");
    }
    let first = next(c.as_mut()).await;
    let _second = next(c.as_mut()).await;
    let t0 = Instant::now();
    // Two held: the third waits for a slot. Acking one frees it at once.
    quiet(c.as_mut(), Duration::from_millis(200)).await;
    first.ack().await.expect("ack");
    let third = next(c.as_mut()).await;
    assert_eq!(third.message().id().as_str(), "m-2");
    // Nobody settles the second and third: their slots free after ack_wait, not before.
    let fourth = next(c.as_mut()).await;
    assert!(
        t0.elapsed() + Duration::from_millis(50) >= ack_wait,
        "a slot freed after {:?}, before ack_wait {ack_wait:?}",
        t0.elapsed()
    );
    assert_eq!(fourth.message().id().as_str(), "m-3");
    assert_eq!(fourth.attempt(), 1, "never a redelivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_refuses_delays_and_key_ordering() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, JS_TEST_OPTIONS);
    let b = scope.backend().await.expect("connect");
    let p = format!("t.behave.{}", tag());
    let mut delayed = msg(&format!("{p}.x"), 0);
    delayed.set_delay(Some(Duration::from_secs(1)));
    unsupported(b.publish(delayed).await, "delayed delivery");
    let r = b
        .subscribe(
            Subscription::new(format!("{p}.>"))
                .and_then(|s| s.group("k"))
                .expect("sub")
                .ordered_by_key(true),
        )
        .await
        .map(|_| ());
    unsupported(r, "per-key ordering");
    let reserved = Message::builder(format!("{p}.x"))
        .and_then(|m| m.header("Squall-Key", "sneaky"))
        .expect("message")
        .build();
    let e = b.publish(reserved).await.expect_err("reserved header");
    assert_eq!(e.kind(), ErrorKind::InvalidMessage, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_patterns_spanning_streams_and_group_mismatches_are_refused() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, JS_TEST_OPTIONS);
    let b = scope.backend().await.expect("connect");
    let p = format!("t.behave.{}", tag());
    let e = b
        .subscribe(Subscription::new("t.*.x.>").expect("pattern"))
        .await
        .map(|_| ())
        .expect_err("spans streams");
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("stream_depth"), "{e}");

    let group = |pattern: &str, durable: bool| {
        Subscription::new(pattern)
            .and_then(|s| s.group("billing"))
            .expect("sub")
            .durable(durable)
    };
    let _a = b
        .subscribe(group(&format!("{p}.a"), true))
        .await
        .expect("first member");
    let e = b
        .subscribe(group(&format!("{p}.b"), true))
        .await
        .map(|_| ())
        .expect_err("another pattern");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let e = b
        .subscribe(group(&format!("{p}.a"), false))
        .await
        .map(|_| ())
        .expect_err("another durability");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("durable"), "{e}");
    let _b = b
        .subscribe(group(&format!("{p}.a"), true))
        .await
        .expect("a second member with the same pattern joins");

    let e = b
        .subscribe(
            Subscription::new(format!("{p}.a"))
                .expect("sub")
                .stream("no_such_stream_here"),
        )
        .await
        .map(|_| ())
        .expect_err("missing stream");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_binds_an_existing_stream_and_reports_its_durability() {
    let Some(url) = nats_url() else { return };
    let t = tag();
    let name = format!("sqtest_user_{t}");
    let key = format!("t.bind.{t}");
    let scope = Scope::new(&url, JS_TEST_OPTIONS);
    scope.also_delete(&name);
    let js = async_nats::jetstream::new(scope.plain().await);
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![key.clone(), format!("{key}.>")],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("a stream made by someone else");
    let b = scope.backend().await.expect("connect");
    let ack = b
        .publish(msg(&format!("{key}.x"), 0))
        .await
        .expect("publish");
    assert_eq!(
        ack.stream.as_deref(),
        Some(name.as_str()),
        "bound, not created"
    );
    assert_eq!(
        ack.durability,
        Durability::Memory,
        "a memory stream's ack claims no more"
    );

    // One fixed stream: created with its subjects; subjects outside it are not captured.
    let fixed = format!("sqtest_fixed_{t}");
    let scope2 = Scope::new(
        &url,
        &format!("jetstream=1&stream={fixed}&subjects=t.fixed.{t}.>"),
    );
    let f = scope2.backend().await.expect("connect");
    let ack = f
        .publish(msg(&format!("t.fixed.{t}.a"), 0))
        .await
        .expect("publish");
    assert_eq!(ack.stream.as_deref(), Some(fixed.as_str()));
    assert_eq!(ack.durability, Durability::Written);
    let e = f
        .publish(msg(&format!("t.other.{t}.a"), 0))
        .await
        .expect_err("outside the stream");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_pipelined_sends_are_bounded_and_all_confirmed() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, &format!("{JS_TEST_OPTIONS}&max_pending_acks=4"));
    let b = scope.backend().await.expect("connect");
    let subject = format!("t.pipe.{}.x", tag());
    let mut pending = Vec::new();
    for i in 0..50 {
        pending.push(b.send(msg(&subject, i)).await.expect("send"));
    }
    b.flush().await.expect("flush waits for every ack");
    let mut last = 0;
    for p in pending {
        let ack = p.await.expect("ack");
        assert!(ack.sequence > last, "{} after {last}", ack.sequence);
        assert_eq!(ack.durability, Durability::Written);
        last = ack.sequence;
    }
    assert_eq!(last, 50);
    Publisher::close(&b).await.expect("close");
    let e = b.send(msg(&subject, 99)).await.expect_err("closed");
    assert_eq!(e.kind(), ErrorKind::Closed);
    let e = b
        .subscribe(Subscription::new(&subject).expect("sub"))
        .await
        .map(|_| ())
        .expect_err("closed");
    assert_eq!(e.kind(), ErrorKind::Closed);
    let e = b
        .request(msg(&subject, 100), Duration::from_millis(100))
        .await
        .expect_err("closed");
    assert_eq!(e.kind(), ErrorKind::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_long_extensions_and_backoff_hold_off_redelivery() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, JS_TEST_OPTIONS);
    let b = scope.backend().await.expect("connect");
    let p = format!("t.lease.{}", tag());
    let ack_wait = Duration::from_millis(800);

    // Extending by three leases keeps the message with its holder all along.
    let mut c = b
        .subscribe(
            Subscription::new(format!("{p}.ext"))
                .expect("sub")
                .ack_wait(ack_wait),
        )
        .await
        .expect("subscribe");
    b.publish(msg(&format!("{p}.ext"), 0))
        .await
        .expect("publish");
    let mut d = next(c.as_mut()).await;
    let before = d.deadline();
    d.extend(ack_wait * 3).await.expect("extend");
    assert!(
        d.deadline().saturating_since(before) >= ack_wait * 3 / 2,
        "the deadline moved by {:?}",
        d.deadline().saturating_since(before)
    );
    quiet(c.as_mut(), ack_wait * 5 / 2).await;
    d.ack().await.expect("ack within the extension");
    quiet(c.as_mut(), ack_wait + ack_wait / 2).await;

    // Backoff: a lease expiry is redelivered after ack_wait + backoff, not after ack_wait.
    let backoff = Duration::from_millis(1200);
    let mut c = b
        .subscribe(
            Subscription::new(format!("{p}.bo"))
                .expect("sub")
                .ack_wait(ack_wait)
                .backoff(vec![backoff]),
        )
        .await
        .expect("subscribe");
    b.publish(msg(&format!("{p}.bo"), 1))
        .await
        .expect("publish");
    let d1 = next(c.as_mut()).await;
    let t0 = Instant::now();
    let d2 = next(c.as_mut()).await;
    assert!(
        t0.elapsed() + Duration::from_millis(50) >= ack_wait + backoff,
        "redelivered after {:?}",
        t0.elapsed()
    );
    assert_eq!(d2.attempt(), 2);
    let late = d1
        .ack()
        .await
        .expect_err("the first lease ended at ack_wait");
    assert_eq!(late.kind(), ErrorKind::LeaseExpired);
    d2.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_problems_are_typed() {
    // A port nothing listens on: Unavailable, retryable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let e = NatsBackend::connect_url(&format!("nats://127.0.0.1:{port}?connect_timeout=1s"))
        .await
        .expect_err("nobody listens");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());

    let Some(url) = nats_url() else { return };
    let e = NatsBackend::connect_url(&with_options(&url, "max_payload=1073741824"))
        .await
        .expect_err("more than the server accepts");
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(e.to_string().contains("max_payload"), "{e}");
}
