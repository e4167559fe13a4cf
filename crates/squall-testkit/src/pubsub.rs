//! Publish/subscribe: delivery of every message intact, fan-out, topic isolation, wildcards,
//! ordering, publish acks, publisher close, cancellation of `next()`, batches; and the helpers the
//! other themes share (`receive_exactly`, `quiet_all`).

use std::collections::HashMap;
use std::time::Duration;

use squall_core::{Consumer, ErrorKind, Message, Publisher, StartPosition, headers};

use crate::case::Ctx;
use crate::helpers::{Must, Tally, collect, expect_err, expect_quiet, join, recv};

/// Spawns `expect_quiet` on every consumer at once (one quiet period in all) and gives them back.
pub(crate) async fn quiet_all(
    consumers: Vec<Box<dyn Consumer>>,
    quiet: Duration,
) -> Vec<Box<dyn Consumer>> {
    let tasks: Vec<_> = consumers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                expect_quiet(c.as_mut(), quiet).await;
                c
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(join(t).await);
    }
    out
}

/// Receives `ids.len()` deliveries within `receive`, acking each as it arrives (so it works
/// with any `max_in_flight`), and asserts each id arrived exactly once.
pub(crate) async fn receive_exactly(c: &mut dyn Consumer, ids: &[String], t: &Ctx<'_>, who: &str) {
    let deadline = tokio::time::Instant::now() + t.timing.receive;
    let mut tally = Tally::expecting(ids.iter().cloned());
    while tally.deliveries() < ids.len() as u64 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(d) = collect(c, 1, left).await.pop() else {
            break;
        };
        tally.record_delivery(&d);
        d.ack().await.must(&format!("{who}: acking"));
    }
    assert!(tally.is_exact(), "{who}: {tally}");
}

fn payload_for(i: usize) -> Vec<u8> {
    let mut p = format!("payload-{i}-").into_bytes();
    p.extend([0u8, 0xff, b'\n', 0x7f, b'.', b'*', b'>']);
    p.extend(std::iter::repeat_n(b'x', i * 37));
    p
}

pub(crate) async fn publish_subscribe(t: &Ctx<'_>) {
    let mut c = t.subscribe(t.sub("orders")).await;
    let with_headers = t.caps.headers.available();
    let n = 50;
    let mut sent = HashMap::new();
    for i in 0..n {
        let mut b = Message::builder(t.subject("orders").as_str())
            .and_then(|b| b.id(t.id("m", i)))
            .and_then(|b| b.key(format!("key-{}", i % 5)))
            .must("building a message");
        if with_headers {
            b = b
                .header("x-index", i.to_string())
                .and_then(|b| b.header(headers::CONTENT_TYPE, "application/octet-stream"))
                .and_then(|b| b.header(headers::CORRELATION_ID, format!("corr-{i}")))
                .must("adding headers");
        }
        let m = b.payload(payload_for(i)).build();
        sent.insert(m.id().to_string(), m.clone());
        t.publish(m).await;
    }
    let got = collect(c.as_mut(), n, t.timing.receive).await;
    let mut tally = Tally::expecting(sent.keys().cloned());
    for d in got {
        let m = d.message();
        if tally.record_delivery(&d) == 1
            && let Some(orig) = sent.get(m.id().as_str())
        {
            let id = m.id();
            assert_eq!(m.subject(), orig.subject(), "{id}: subject changed");
            assert_eq!(m.key(), orig.key(), "{id}: key changed");
            assert_eq!(m.payload(), orig.payload(), "{id}: payload changed");
            for (name, value) in orig.headers() {
                assert_eq!(
                    m.headers().get(name),
                    Some(value),
                    "{id}: header `{name}` changed"
                );
            }
            assert_eq!(d.attempt(), 1, "{id}: first delivery is attempt 1");
            assert_eq!(
                d.group(),
                None,
                "{id}: a subscription without group reports a group"
            );
        }
        d.ack().await.must("acking");
    }
    assert!(tally.is_exact(), "{tally}");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
    c.close().await.must("closing the consumer");
}

pub(crate) async fn concurrent_subscribe(t: &Ctx<'_>) {
    let (subscribers, publishers, per_publisher) = (5, 4, 10);
    let mut opening = Vec::new();
    for _ in 0..subscribers {
        let (b, sub) = (t.backend.clone(), t.sub("events"));
        opening.push(tokio::spawn(async move { b.subscribe(sub).await }));
    }
    let mut consumers = Vec::new();
    for o in opening {
        consumers.push(join(o).await.must("subscribing concurrently"));
    }
    let total = publishers * per_publisher;
    let receiving: Vec<_> = consumers
        .into_iter()
        .map(|mut c| {
            let receive = t.timing.receive;
            tokio::spawn(async move {
                let got = collect(c.as_mut(), total, receive).await;
                let mut ids = Vec::new();
                for d in got {
                    ids.push(d.message().id().to_string());
                    d.ack().await.must("acking");
                }
                (c, ids)
            })
        })
        .collect();
    let mut sending = Vec::new();
    let mut expected = Vec::new();
    for p in 0..publishers {
        let msgs: Vec<Message> = (0..per_publisher)
            .map(|i| t.message("events", &format!("p{p}"), i))
            .collect();
        expected.extend(msgs.iter().map(|m| m.id().to_string()));
        let b = t.backend.clone();
        sending.push(tokio::spawn(async move {
            for m in msgs {
                b.publish(m).await.must("publishing concurrently");
            }
        }));
    }
    for s in sending {
        join(s).await;
    }
    let mut consumers = Vec::new();
    for (i, r) in receiving.into_iter().enumerate() {
        let (c, ids) = join(r).await;
        let mut tally = Tally::expecting(expected.iter().cloned());
        ids.iter().for_each(|id| {
            tally.record(id);
        });
        assert!(tally.is_exact(), "subscriber {i}: {tally}");
        consumers.push(c);
    }
    quiet_all(consumers, t.timing.quiet).await;
}

pub(crate) async fn many_topics(t: &Ctx<'_>) {
    let (topics, per_topic) = (20, 5);
    let mut consumers = Vec::new();
    for k in 0..topics {
        consumers.push(t.subscribe(t.sub(&format!("topic-{k}"))).await);
    }
    let mut expected = vec![Vec::new(); topics];
    for i in 0..per_topic {
        for (k, ids) in expected.iter_mut().enumerate() {
            let m = t.message(&format!("topic-{k}"), &format!("t{k}"), i);
            ids.push(m.id().to_string());
            t.publish(m).await;
        }
    }
    for (k, c) in consumers.iter_mut().enumerate() {
        receive_exactly(c.as_mut(), &expected[k], t, &format!("topic-{k}")).await;
    }
    quiet_all(consumers, t.timing.quiet).await;
}

pub(crate) async fn topic_isolation(t: &Ctx<'_>) {
    let mut a = t.subscribe(t.sub("a")).await;
    let mut b = t.subscribe(t.sub("b")).await;
    let others = [
        format!("{}.a.x", t.prefix),
        format!("{}.ab", t.prefix),
        format!("{}x.a", t.prefix),
        t.prefix.clone(),
    ];
    for (i, s) in others.iter().enumerate() {
        let m = Message::builder(s)
            .and_then(|m| m.id(t.id("other", i)))
            .must("building")
            .payload("not for a")
            .build();
        t.publish(m).await;
    }
    let for_a = t.publish_n("a", "a", 3).await;
    let for_b = t.publish_n("b", "b", 2).await;
    receive_exactly(a.as_mut(), &for_a, t, "subscriber of `a`").await;
    receive_exactly(b.as_mut(), &for_b, t, "subscriber of `b`").await;
    quiet_all(vec![a, b], t.timing.quiet).await;
}

pub(crate) async fn wildcard_matching(t: &Ctx<'_>) {
    let mut star = t.subscribe(t.sub("*")).await;
    let mut rest = t.subscribe(t.sub(">")).await;
    let mut middle = t.subscribe(t.sub("*.c")).await;
    let subjects = ["a", "b", "a.c", "a.b.c"];
    let mut ids = HashMap::new();
    for (i, s) in subjects.iter().enumerate() {
        let m = t.message(s, "w", i);
        ids.insert(*s, m.id().to_string());
        t.publish(m).await;
    }
    let bare = Message::builder(&t.prefix)
        .and_then(|m| m.id(t.id("bare", 0)))
        .must("building")
        .build();
    t.publish(bare).await;
    let pick = |ss: &[&str]| ss.iter().map(|s| ids[s].clone()).collect::<Vec<_>>();
    receive_exactly(star.as_mut(), &pick(&["a", "b"]), t, "`<prefix>.*`").await;
    receive_exactly(rest.as_mut(), &pick(&subjects), t, "`<prefix>.>`").await;
    receive_exactly(middle.as_mut(), &pick(&["a.c"]), t, "`<prefix>.*.c`").await;
    quiet_all(vec![star, rest, middle], t.timing.quiet).await;
}

pub(crate) async fn fan_out(t: &Ctx<'_>) {
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(t.subscribe(t.sub("news")).await);
    }
    let ids = t.publish_n("news", "n", 20).await;
    for (i, c) in consumers.iter_mut().enumerate() {
        receive_exactly(c.as_mut(), &ids, t, &format!("subscriber {i}")).await;
    }
    quiet_all(consumers, t.timing.quiet).await;
}

pub(crate) async fn ordered_delivery(t: &Ctx<'_>) {
    let mut c = t.subscribe(t.sub("seq")).await;
    let ids = t.publish_n("seq", "o", 100).await;
    let got = collect(c.as_mut(), ids.len(), t.timing.receive).await;
    let received: Vec<String> = got.iter().map(|d| d.message().id().to_string()).collect();
    for d in got {
        d.ack().await.must("acking");
    }
    if let Some(i) = (0..ids.len().min(received.len())).find(|&i| ids[i] != received[i]) {
        panic!(
            "out of order at position {i}: expected {}, got {} (received {} of {})",
            ids[i],
            received[i],
            received.len(),
            ids.len()
        );
    }
    assert_eq!(
        received.len(),
        ids.len(),
        "received {} of {} in order",
        received.len(),
        ids.len()
    );
}

pub(crate) async fn publish_ack_durability(t: &Ctx<'_>) {
    let max = t.caps.max_durability;
    let sequences = t.caps.replay_by_sequence.available();
    let mut last = 0;
    let mut check = |ack: &squall_core::PublishAck, what: &str| {
        assert!(
            ack.durability <= max,
            "{what}: ack claims {} but the backend declares at most {max}",
            ack.durability
        );
        assert!(
            !ack.duplicate,
            "{what}: a fresh id was acked as a duplicate"
        );
        if sequences {
            assert!(
                ack.sequence > last,
                "{what}: sequence {} after {last}",
                ack.sequence
            );
            last = ack.sequence;
        }
    };
    for i in 0..10 {
        let ack = t.publish(t.message("acks", "a", i)).await;
        check(&ack, &format!("publish {i}"));
    }
    let batch: Vec<Message> = (0..5).map(|i| t.message("acks", "b", i)).collect();
    let acks = t
        .backend
        .publish_batch(batch)
        .await
        .must("publishing a batch");
    assert_eq!(acks.len(), 5, "one result per batched message");
    for (i, a) in acks.into_iter().enumerate() {
        check(&a.must("a batched publish"), &format!("batch item {i}"));
    }
}

pub(crate) async fn publisher_close_flushes(t: &Ctx<'_>) {
    // A backend that keeps messages is checked through a fresh handle replaying them (a closed
    // embedded broker has no live consumers left); otherwise the witness is a consumer
    // subscribed before, through another handle.
    let replay = t.caps.replay_by_sequence.available();
    let mut early = if replay {
        None
    } else {
        Some(t.subscribe(t.sub("close")).await)
    };
    let publisher = t.harness.backend().await.must("a second backend handle");
    let mut pending = Vec::new();
    let mut ids = Vec::new();
    for i in 0..20 {
        let m = t.message("close", "c", i);
        ids.push(m.id().to_string());
        pending.push(publisher.send(m).await.must("sending"));
    }
    Publisher::close(publisher.as_ref())
        .await
        .must("closing the publisher");
    for (i, p) in pending.into_iter().enumerate() {
        p.await
            .must(&format!("confirm of message {i} sent before close"));
    }
    let late = t.message("close", "late", 0);
    let r = match publisher.send(late).await {
        Ok(p) => p.await,
        Err(e) => Err(e),
    };
    expect_err(r, &[ErrorKind::Closed], "sending after close");
    let mut c = match early.take() {
        Some(c) => c,
        None => {
            let fresh = t.harness.backend().await.must("a handle after the close");
            let sub = t.sub("close").start(StartPosition::First);
            fresh
                .subscribe(sub)
                .await
                .must("subscribing after the close")
        }
    };
    receive_exactly(c.as_mut(), &ids, t, "subscriber").await;
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn subscribe_cancel(t: &Ctx<'_>) {
    let mut c = t.subscribe(t.sub("cancel")).await;
    tokio::select! {
        r = c.next() => panic!("nothing was published, yet next() returned {r:?}"),
        _ = tokio::time::sleep(t.timing.quiet) => {}
    }
    let first = t.publish_n("cancel", "first", 1).await;
    let d = recv(
        c.as_mut(),
        t.timing.receive,
        "the message published after a cancelled next()",
    )
    .await;
    assert_eq!(
        d.message().id().as_str(),
        first[0],
        "a different message arrived"
    );
    d.ack().await.must("acking");

    let ids = t.publish_n("cancel", "m", 20).await;
    let mut tally = Tally::expecting(ids.iter().cloned());
    let deadline = tokio::time::Instant::now() + t.timing.receive * 2;
    let (mut cancelled, mut k) = (0, 0u64);
    while tally.deliveries() < ids.len() as u64 && tokio::time::Instant::now() < deadline {
        k += 1;
        // Every other call is polled once and dropped (a zero timeout polls the future first).
        let wait = if k % 2 == 0 {
            Duration::ZERO
        } else {
            t.timing.receive
        };
        match tokio::time::timeout(wait, c.next()).await {
            Ok(Some(Ok(d))) => {
                tally.record_delivery(&d);
                d.ack().await.must("acking");
            }
            Ok(Some(Err(e))) => panic!("consumer reported {} error: {e}", e.kind()),
            Ok(None) => panic!("the consumer ended"),
            Err(_) => cancelled += 1,
        }
    }
    assert!(
        tally.is_exact(),
        "after {cancelled} cancelled next() calls: {tally}"
    );
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn next_batch_up_to_max(t: &Ctx<'_>) {
    let mut c = t.subscribe(t.sub("batch")).await;
    let ids = t.publish_n("batch", "b", 10).await;
    let mut tally = Tally::expecting(ids.iter().cloned());
    let mut sizes = Vec::new();
    while tally.deliveries() < 10 && sizes.len() < 10 {
        let batch = tokio::time::timeout(t.timing.receive, c.next_batch(4, t.timing.quiet))
            .await
            .unwrap_or_else(|_| panic!("no batch within {:?} after {sizes:?}", t.timing.receive))
            .must("next_batch");
        sizes.push(batch.len());
        assert!(
            (1..=4).contains(&batch.len()),
            "batch sizes {sizes:?}: each must be 1 to 4"
        );
        for d in batch {
            tally.record_delivery(&d);
            d.ack().await.must("acking");
        }
    }
    assert_eq!(
        sizes[0], 4,
        "10 messages were ready, yet the first batch held {sizes:?}"
    );
    assert!(tally.is_exact(), "batches {sizes:?}: {tally}");
    let r = tokio::time::timeout(t.timing.quiet, c.next_batch(4, t.timing.quiet)).await;
    assert!(
        r.is_err(),
        "nothing was left, yet next_batch returned {:?}",
        r.map(|b| b.map(|b| b.len()))
    );
}
