//! FIFO queues (`fifo=1`) against the server at `SQUALL_SQS_URL`: per-key order with message
//! groups, a key held by one delivery at a time, deduplication by message id (within one handle
//! and across handles), and the refusal of per-message delays. Long polls are 1 s, for the reason
//! `conformance_fifo.rs` gives.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use squall_core::{ErrorKind, Message, Publisher, Subscriber, Subscription};
use squall_testkit::{Must, expect_err, expect_quiet, recv};
use support::{Scope, sqs_url};

const FIFO: &str = "fifo=1&wait_time=1s";
const RECEIVE: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

fn keyed(subject: &str, id: &str, key: &str, payload: &str) -> Message {
    Message::builder(subject)
        .and_then(|b| b.id(id))
        .and_then(|b| b.key(key))
        .expect("message")
        .payload(payload.to_string())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_arrives_in_order_and_one_at_a_time() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "order", FIFO);
    let b = scope.backend().await.must("connecting");
    let sub = Subscription::new("fifo.orders")
        .and_then(|s| s.group("workers"))
        .expect("subscription")
        .ordered_by_key(true)
        .max_in_flight(4);
    let mut c = b.subscribe(sub).await.must("subscribing");
    for i in 0..10 {
        for key in ["a", "b"] {
            let m = keyed("fifo.orders", &format!("{key}-{i}"), key, &i.to_string());
            b.publish(m).await.must("publishing");
        }
    }
    let mut next: HashMap<String, u32> = HashMap::new();
    let mut received = 0;
    while received < 20 {
        // What arrives while these are held: at most one delivery per key.
        let held = tokio::time::timeout(RECEIVE, c.next_batch(4, Duration::from_millis(500)))
            .await
            .unwrap_or_else(|_| panic!("stalled after {received} of 20"))
            .must("next_batch");
        let mut keys: Vec<&str> = held.iter().map(|d| d.message().key().unwrap()).collect();
        keys.sort();
        let before = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), before, "two deliveries of one key held at once");
        for d in held {
            let key = d.message().key().unwrap().to_string();
            let i: u32 = std::str::from_utf8(d.message().payload())
                .unwrap()
                .parse()
                .unwrap();
            let want = next.entry(key.clone()).or_insert(0);
            assert_eq!(i, *want, "key {key}: message {i} arrived, expected {want}");
            *want += 1;
            received += 1;
            d.ack().await.must("acking");
        }
    }
    expect_quiet(c.as_mut(), QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_is_stored_once() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "dedup", FIFO);
    let first = scope.backend().await.must("connecting");
    let other = scope.backend().await.must("a second handle");
    let sub = Subscription::new("fifo.pay")
        .and_then(|s| s.group("workers"))
        .expect("subscription");
    let mut c = first.subscribe(sub).await.must("subscribing");
    let m = keyed("fifo.pay", "pay-1", "c-1", "original");
    let a1 = first.publish(m.clone()).await.must("publishing");
    assert!(!a1.duplicate);
    let a2 = first.publish(m.clone()).await.must("publishing again");
    assert!(a2.duplicate, "this handle published pay-1 already: {a2:?}");
    // Another handle does not know it; SQS drops the copy all the same (MessageDeduplicationId).
    let copy = keyed("fifo.pay", "pay-1", "c-1", "a copy");
    let a3 = other
        .publish(copy)
        .await
        .must("publishing through another handle");
    assert!(!a3.duplicate, "another handle cannot know: {a3:?}");
    let fresh = keyed("fifo.pay", "pay-2", "c-1", "second");
    first.publish(fresh).await.must("publishing a new id");
    let d = recv(c.as_mut(), RECEIVE, "the first payment").await;
    assert_eq!(d.message().id().as_str(), "pay-1");
    assert_eq!(&d.message().payload()[..], b"original");
    d.ack().await.must("acking");
    let d = recv(c.as_mut(), RECEIVE, "the second payment").await;
    assert_eq!(d.message().id().as_str(), "pay-2");
    d.ack().await.must("acking");
    expect_quiet(c.as_mut(), QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_delays_are_refused() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "delay", FIFO);
    let b = scope.backend().await.must("connecting");
    let m = Message::builder("fifo.later")
        .expect("message")
        .delay(Duration::from_secs(1))
        .build();
    let e = expect_err(b.publish(m).await, &[ErrorKind::Unsupported], "a delay");
    assert!(e.to_string().contains("FIFO"), "{e}");
    let standard = Scope::new(&base, "delay", "");
    let sb = standard.backend().await.must("connecting");
    let sub = Subscription::new("std.ordered")
        .expect("subscription")
        .ordered_by_key(true);
    let r = sb.subscribe(sub).await.map(|_| ());
    expect_err(
        r,
        &[ErrorKind::Unsupported],
        "ordered_by_key on standard queues",
    );
}
