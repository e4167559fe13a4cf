//! What the SQS adapter does beyond the universal suite, against the server at `SQUALL_SQS_URL`
//! (moto_server here): configuration errors naming the option, an unreachable endpoint failing
//! in time, size and delay limits refused before sending, redelivery by visibility timeout,
//! SQS's own redrive policy (`max_receive`), batches, `mandatory`, parked dead letters, the
//! prefetch bound under a stalled application and the lifetime of a subscription's own queue. Each test has its own queue prefix and deletes its
//! queues when it ends.

mod support;

use std::time::{Duration, Instant};

use squall_core::{
    DeadLetter, ErrorKind, Message, Publisher, Requester, Subject, Subscriber, Subscription,
};
use squall_sqs::{SqsBackend, SqsConfig, naming};
use squall_testkit::{Must, collect, expect_err, expect_quiet, recv};
use support::{Scope, sqs_url};

const RECEIVE: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

fn subject(s: &str) -> Subject {
    Subject::new(s).expect("subject")
}

fn message(s: &str, id: &str, payload: &str) -> Message {
    Message::builder(s)
        .and_then(|b| b.id(id))
        .expect("message")
        .payload(payload.to_string())
        .build()
}

#[tokio::test]
async fn bad_url_options_are_refused_naming_the_key() {
    for (url, key) in [
        (
            "sqs://127.0.0.1:4566?region=us-east-1&wait_tmie=1s",
            "wait_tmie",
        ),
        (
            "sqs://127.0.0.1:4566?region=us-east-1&wait_time=60s",
            "wait_time",
        ),
        (
            "sqs://127.0.0.1:4566?region=us-east-1&max_receive=0",
            "max_receive",
        ),
        (
            "sqs://127.0.0.1:4566?region=us-east-1&batch_size=20",
            "batch_size",
        ),
        ("sqs://127.0.0.1:4566?region=us-east-1&fifo=perhaps", "fifo"),
        ("sqs://127.0.0.1:4566/some/path?region=us-east-1", "url"),
    ] {
        let Err(e) = SqsBackend::connect_url(url).await else {
            panic!("{url} was accepted");
        };
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
        assert!(e.to_string().contains(&format!("`{key}`")), "{url}: {e}");
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_in_time_naming_it() {
    // Port 1 on the loopback interface: nothing listens, connections are refused at once.
    let url = "sqs://127.0.0.1:1?region=us-east-1&request_timeout=3s&connect_timeout=1s";
    let t0 = Instant::now();
    let Err(e) = SqsBackend::connect_url(url).await else {
        panic!("connecting to a port nobody listens on succeeded");
    };
    let took = t0.elapsed();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_refused_before_sending() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "limits", "");
    let b = scope.backend().await.must("connecting");
    let max = squall_sqs::capabilities(&scope.config()).max_payload;
    let over = Message::builder("limits.big")
        .expect("message")
        .payload(vec![b'x'; max + 1])
        .build();
    let e = expect_err(
        b.publish(over).await,
        &[ErrorKind::InvalidMessage],
        "payload",
    );
    assert!(e.to_string().contains(&max.to_string()), "{e}");
    // Text fits unencoded, but 64 KiB of headers on top of 200 KB do not fit 256 KiB.
    let mut headers = Message::builder("limits.big")
        .expect("message")
        .payload(vec![b'x'; 200_000])
        .build();
    for i in 0..6 {
        headers
            .headers_mut()
            .insert(format!("h{i}"), "y".repeat(10_000))
            .must("header");
    }
    let e = expect_err(
        b.publish(headers).await,
        &[ErrorKind::InvalidMessage],
        "size",
    );
    assert!(e.to_string().contains("max_message_size"), "{e}");
    let late = Message::builder("limits.big")
        .expect("message")
        .delay(Duration::from_secs(901))
        .build();
    let e = expect_err(b.publish(late).await, &[ErrorKind::InvalidMessage], "delay");
    assert!(e.to_string().contains("900"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_delivery_comes_back_after_its_visibility_timeout() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "vis", "");
    let b = scope.backend().await.must("connecting");
    let sub = Subscription::new("vis.jobs")
        .and_then(|s| s.group("workers"))
        .expect("subscription")
        .ack_wait(Duration::from_secs(1));
    let mut c = b.subscribe(sub).await.must("subscribing");
    b.publish(message("vis.jobs", "v-1", "work"))
        .await
        .must("publishing");
    let d1 = recv(c.as_mut(), RECEIVE, "first delivery").await;
    let t0 = Instant::now();
    assert_eq!(d1.attempt(), 1);
    let d2 = recv(c.as_mut(), RECEIVE, "redelivery").await;
    assert!(
        t0.elapsed() + Duration::from_millis(50) >= Duration::from_secs(1),
        "redelivered after {:?}, inside the 1 s lease",
        t0.elapsed()
    );
    assert_eq!(d2.message().id().as_str(), "v-1");
    assert_eq!(d2.attempt(), 2, "ApproximateReceiveCount is the attempt");
    expect_err(
        d1.ack().await,
        &[ErrorKind::LeaseExpired],
        "the expired ack",
    );
    d2.ack().await.must("acking the redelivery");
    expect_quiet(c.as_mut(), QUIET).await;
}

/// A message's visibility timeout runs from the moment SQS hands it out, so the consumer keeps
/// at most two batches (`batch_size` 10) received ahead of an application that stalls, and
/// never hands over a delivery whose lease ran out while it waited: after a stall longer than
/// the lease, every delivery `next` returns can still be acked, at most 20 messages were
/// received during the stall (they come again, as a second attempt), and all 60 arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_application_is_not_handed_deliveries_whose_lease_ran_out() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "stall", "lease_grace=1s&wait_time=1s");
    let b = scope.backend().await.must("connecting");
    let sub = Subscription::new("stall.jobs")
        .and_then(|s| s.group("workers"))
        .expect("subscription")
        .ack_wait(Duration::from_secs(2));
    let mut c = b.subscribe(sub).await.must("subscribing");
    let n = 60;
    let sends = (0..n).map(|i| b.publish(message("stall.jobs", &format!("s-{i}"), "work")));
    for r in futures::future::join_all(sends).await {
        r.must("publishing");
    }
    let first = recv(c.as_mut(), RECEIVE, "the first delivery").await;
    let mut seen = std::collections::HashSet::from([first.message().id().to_string()]);
    first.ack().await.must("acking the first delivery");
    // The application stalls for longer than a lease (2 s) while the consumer runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut again = 0;
    while seen.len() < n {
        let d = recv(c.as_mut(), RECEIVE, "the rest after the stall").await;
        if d.attempt() > 1 {
            again += 1;
        }
        let id = d.message().id().to_string();
        d.ack()
            .await
            .unwrap_or_else(|e| panic!("acking {id} after the stall: {e}"));
        seen.insert(id);
    }
    assert!(
        again <= 20,
        "{again} deliveries came again: more than two batches were received during the stall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_receive_moves_a_message_to_the_native_dead_letter_queue() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "redrv", "max_receive=2");
    let b = scope.backend().await.must("connecting");
    let s = subject("redrive.jobs");
    let queue = b.group_queue_name(&s, "workers");
    let sub = Subscription::new(s.as_str())
        .and_then(|s| s.group("workers"))
        .expect("subscription");
    let mut c = b.subscribe(sub).await.must("subscribing");
    let sent = Message::builder(s.as_str())
        .and_then(|m| m.id("poison-1"))
        .and_then(|m| m.header("x-origin", "behaviour"))
        .expect("message")
        .payload("cannot be processed")
        .build();
    b.publish(sent.clone()).await.must("publishing");
    for attempt in 1..=2 {
        let d = recv(c.as_mut(), RECEIVE, &format!("delivery {attempt}")).await;
        assert_eq!(d.attempt(), attempt);
        d.nack(Duration::ZERO).await.must("nacking");
    }
    // The third receive finds it at maxReceiveCount: SQS moves it instead of delivering it.
    expect_quiet(c.as_mut(), QUIET).await;
    let dlq = naming::dead_letter_queue(&queue);
    let sub = Subscription::new(s.as_str())
        .expect("subscription")
        .stream(&dlq);
    let mut dead = b
        .subscribe(sub)
        .await
        .must("consuming the dead-letter queue");
    let d = recv(
        dead.as_mut(),
        RECEIVE,
        "the message in the dead-letter queue",
    )
    .await;
    assert_eq!(d.message().id(), sent.id());
    assert_eq!(d.message().payload(), sent.payload());
    assert_eq!(d.message().headers().get("x-origin"), Some("behaviour"));
    assert!(
        DeadLetter::read(d.message()).must("reading").is_none(),
        "SQS's redrive adds no squall envelope"
    );
    d.ack().await.must("acking the dead letter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_sent_and_received_in_tens() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "batch", "");
    let b = scope.backend().await.must("connecting");
    let sub = Subscription::new("batch.jobs")
        .and_then(|s| s.group("workers"))
        .expect("subscription");
    let mut c = b.subscribe(sub).await.must("subscribing");
    let mut msgs: Vec<Message> = (0..25)
        .map(|i| message("batch.jobs", &format!("b-{i}"), &format!("payload {i}")))
        .collect();
    let max = squall_sqs::capabilities(&scope.config()).max_payload;
    msgs.insert(
        7,
        Message::builder("batch.jobs")
            .expect("message")
            .payload(vec![1u8; max + 1])
            .build(),
    );
    let acks = b.publish_batch(msgs).await.must("publishing a batch");
    assert_eq!(acks.len(), 26);
    for (i, a) in acks.iter().enumerate() {
        if i == 7 {
            assert_eq!(
                a.as_ref().map(|_| ()).unwrap_err().kind(),
                ErrorKind::InvalidMessage,
                "the oversized message of the batch"
            );
        } else {
            assert!(a.is_ok(), "batch item {i}: {a:?}");
        }
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + RECEIVE;
    while got.len() < 25 && tokio::time::Instant::now() < deadline {
        let batch = tokio::time::timeout(RECEIVE, c.next_batch(10, Duration::from_millis(200)))
            .await
            .expect("a batch in time")
            .must("next_batch");
        assert!((1..=10).contains(&batch.len()), "batch of {}", batch.len());
        for d in batch {
            got.push(d.message().id().to_string());
            d.ack().await.must("acking");
        }
    }
    got.sort();
    let mut want: Vec<String> = (0..25).map(|i| format!("b-{i}")).collect();
    want.sort();
    assert_eq!(got, want);
    expect_quiet(c.as_mut(), QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_publishes_and_parked_dead_letters() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "park", "mandatory=true");
    let b = scope.backend().await.must("connecting");
    expect_err(
        b.publish(message("nobody.listens", "n-1", "x")).await,
        &[ErrorKind::NoResponders],
        "a mandatory publish nobody is bound for",
    );
    let sub = Subscription::new("park.jobs")
        .and_then(|s| s.group("workers"))
        .expect("subscription");
    let mut c = b.subscribe(sub).await.must("subscribing");
    b.publish(message("park.jobs", "p-1", "poison"))
        .await
        .must("publishing");
    let d = recv(c.as_mut(), RECEIVE, "the delivery").await;
    d.reject("bad").await.must("rejecting");
    // Nobody subscribed to `dlq.park.jobs`: the dead letter is parked, not lost.
    let cfg = scope.config();
    let parked = naming::parked_queue(&cfg.queue_prefix, false);
    let sub = Subscription::new("park.jobs")
        .expect("subscription")
        .stream(&parked);
    let mut p = b.subscribe(sub).await.must("consuming the parked queue");
    let d = recv(p.as_mut(), RECEIVE, "the parked dead letter").await;
    assert_eq!(d.message().subject().as_str(), "dlq.park.jobs");
    let env = DeadLetter::read(d.message())
        .must("reading")
        .expect("an envelope");
    assert_eq!(env.origin_id, "p-1");
    assert_eq!(env.error, "bad");
    d.ack().await.must("acking");
    expect_quiet(c.as_mut(), QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_without_group_deletes_its_queue_when_it_ends() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "own", "");
    let b = scope.backend().await.must("connecting");
    let s = subject("own.news");
    let prefix = naming::binding_prefix(&scope.config().queue_prefix, &s);
    let count = || async {
        b.client()
            .list_queues()
            .queue_name_prefix(&prefix)
            .send()
            .await
            .expect("listing")
            .queue_urls()
            .len()
    };
    let mut closed = b
        .subscribe(Subscription::new(s.as_str()).expect("subscription"))
        .await
        .must("subscribing");
    let dropped = b
        .subscribe(Subscription::new(s.as_str()).expect("subscription"))
        .await
        .must("subscribing");
    assert_eq!(count().await, 2, "one queue per subscription");
    closed.close().await.must("closing");
    drop(dropped);
    let deadline = Instant::now() + RECEIVE;
    while count().await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count().await, 0, "the queues outlived their subscriptions");
    let ack = b
        .publish(message(s.as_str(), "late", "x"))
        .await
        .must("publishing with nobody bound");
    assert_eq!(ack.stream, None, "stored nowhere: {ack:?}");

    // A handle's request inbox is a queue of its own too, gone with the handle.
    let inboxes = format!("{}_inbox_", scope.config().queue_prefix);
    let requester = scope.backend().await.must("a second handle");
    let r = requester
        .request(message(s.as_str(), "q", "x"), Duration::from_millis(100))
        .await;
    expect_err(r, &[ErrorKind::NoResponders], "a request nobody can answer");
    let listed = |prefix: String| {
        let client = b.client().clone();
        async move {
            let r = client.list_queues().queue_name_prefix(prefix).send().await;
            r.expect("listing").queue_urls().len()
        }
    };
    assert_eq!(
        listed(inboxes.clone()).await,
        1,
        "the inbox of the requester"
    );
    drop(requester);
    let deadline = Instant::now() + RECEIVE;
    while listed(inboxes.clone()).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed(inboxes).await, 0, "the inbox outlived its handle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_handle_ends_its_consumers_and_releases_what_they_held() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "close", "");
    let first = scope.backend().await.must("connecting");
    let sub = Subscription::new("close.jobs")
        .and_then(|s| s.group("workers"))
        .expect("subscription");
    let mut c = first.subscribe(sub.clone()).await.must("subscribing");
    first
        .publish(message("close.jobs", "c-1", "held"))
        .await
        .must("publishing");
    let held = recv(c.as_mut(), RECEIVE, "the delivery").await;
    Publisher::close(&first).await.must("closing the handle");
    let ended = tokio::time::timeout(RECEIVE, c.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the consumer goes on after its handle closed"
    );
    expect_err(
        first.publish(message("close.jobs", "c-2", "late")).await,
        &[ErrorKind::Closed],
        "publishing after close",
    );
    let second = scope.backend().await.must("a second handle");
    let mut again = second.subscribe(sub).await.must("subscribing again");
    let d = recv(again.as_mut(), RECEIVE, "the released delivery").await;
    assert_eq!(d.message().id().as_str(), "c-1");
    assert_eq!(d.attempt(), 2);
    expect_err(held.ack().await, &[ErrorKind::LeaseExpired], "the old ack");
    d.ack().await.must("acking");
    let got = collect(again.as_mut(), 1, QUIET).await;
    assert!(got.is_empty(), "more arrived: {got:?}");
    // The configuration is the one parsed from the URL.
    assert_eq!(
        second.config(),
        &SqsConfig::from_url(&scope.url).expect("url")
    );
}
