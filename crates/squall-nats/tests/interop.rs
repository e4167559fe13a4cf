//! Interop with plain NATS clients (async-nats used directly, as any other NATS application
//! would): messages published by them reach squall subscribers with payload and headers intact,
//! squall messages reach them with payload, headers and squall's own headers, and requests
//! cross in both directions. Over core NATS and JetStream, against `SQUALL_NATS_URL`.

mod support;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use squall_core::headers::{CORRELATION_ID, REPLY_TO};
use squall_core::{Consumer, Message, Publisher, Requester, Subscriber, Subscription};
use squall_nats::codec;
use support::{JS_TEST_OPTIONS, Scope, nats_url, round_trip, tag};

const WAIT: Duration = Duration::from_secs(5);

async fn next(c: &mut dyn Consumer) -> squall_core::Delivery {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("a delivery within 5 s")
        .expect("consumer open")
        .expect("no consumer error")
}

fn plain_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("X-Trace", "abc-123");
    h.insert("content-type", "application/json");
    h.append("X-Multi", "one");
    h.append("X-Multi", "two");
    h
}

fn check_plain(m: &Message, subject: &str) {
    assert_eq!(m.subject().as_str(), subject);
    assert_eq!(&m.payload()[..], b"{\"plain\":true}\0\xff");
    assert_eq!(m.headers().get("x-trace"), Some("abc-123"));
    assert_eq!(m.headers().get("content-type"), Some("application/json"));
    assert_eq!(m.headers().get("X-Multi"), Some("one, two"));
    assert_eq!(m.key(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_plain_publish_reaches_a_squall_subscriber_with_headers() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, "");
    let squall = scope.backend().await.expect("connect");
    let subject = format!("interop.{}.in", tag());
    let mut c = squall
        .subscribe(Subscription::new(&subject).expect("pattern"))
        .await
        .expect("subscribe");
    let plain = scope.plain().await;
    plain
        .publish_with_headers(
            subject.clone(),
            plain_headers(),
            (&b"{\"plain\":true}\0\xff"[..]).into(),
        )
        .await
        .expect("plain publish");
    round_trip(&plain).await;
    let d = next(c.as_mut()).await;
    check_plain(d.message(), &subject);
    assert_eq!(d.attempt(), 1);
    d.ack().await.expect("ack on core NATS is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_squall_publish_reaches_a_plain_subscriber_with_headers() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, "");
    let squall = scope.backend().await.expect("connect");
    let subject = format!("interop.{}.out", tag());
    let plain = scope.plain().await;
    let mut sub = plain.subscribe(subject.clone()).await.expect("subscribe");
    round_trip(&plain).await;
    let m = Message::builder(&subject)
        .and_then(|b| b.id("order-7"))
        .and_then(|b| b.key("customer-1"))
        .and_then(|b| b.header("x-trace", "t-1"))
        .expect("message")
        .payload(&b"bin\0ary"[..])
        .build();
    squall.publish(m.clone()).await.expect("publish");
    let got = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&got.payload[..], b"bin\0ary");
    let h = got.headers.expect("headers");
    assert_eq!(h.get("x-trace").map(|v| v.as_str()), Some("t-1"));
    assert_eq!(h.get(codec::ID).map(|v| v.as_str()), Some("order-7"));
    assert_eq!(h.get(codec::KEY).map(|v| v.as_str()), Some("customer-1"));
    let ts: u64 = h
        .get(codec::TIMESTAMP)
        .expect("timestamp header")
        .as_str()
        .parse()
        .expect("nanoseconds");
    assert_eq!(ts, m.timestamp().as_nanos());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_requests_cross_between_plain_and_squall() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, "");
    let squall = scope.backend().await.expect("connect");
    let plain = scope.plain().await;
    let t = tag();

    // A plain responder answers a squall request through the NATS reply subject.
    let svc = format!("interop.{t}.plain-svc");
    let mut responder = plain.subscribe(svc.clone()).await.expect("subscribe");
    round_trip(&plain).await;
    let serving = {
        let plain = plain.clone();
        tokio::spawn(async move {
            let req = responder.next().await.expect("a request");
            let mut body = b"re:".to_vec();
            body.extend_from_slice(&req.payload);
            plain
                .publish(req.reply.expect("reply subject"), body.into())
                .await
                .expect("reply");
            round_trip(&plain).await;
        })
    };
    let req = Message::builder(&svc).expect("req").payload("ping").build();
    let reply = squall.request(req, WAIT).await.expect("squall request");
    assert_eq!(&reply.payload()[..], b"re:ping");
    serving.await.expect("responder");

    // A squall responder answers a plain request.
    let svc = format!("interop.{t}.squall-svc");
    let mut c = squall
        .subscribe(Subscription::new(&svc).expect("pattern"))
        .await
        .expect("subscribe");
    let answering = {
        let squall = squall.clone();
        tokio::spawn(async move {
            let d = next(c.as_mut()).await;
            assert!(
                d.message().headers().get(REPLY_TO).is_some(),
                "the NATS reply subject becomes `reply-to`"
            );
            let reply = Message::reply_to(d.message(), "pong").expect("reply");
            squall.publish(reply).await.expect("publish reply");
            d.ack().await.expect("ack");
        })
    };
    let answer = plain
        .request(svc, "ping".into())
        .await
        .expect("plain request");
    assert_eq!(&answer.payload[..], b"pong");
    answering.await.expect("answering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_plain_publish_reaches_a_squall_subscriber_with_id_and_headers() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, JS_TEST_OPTIONS);
    let squall = scope.backend().await.expect("connect");
    let t = tag();
    let subject = format!("t.interop.{t}.in");
    let mut c = squall
        .subscribe(
            Subscription::new(&subject)
                .and_then(|s| s.group("readers"))
                .expect("subscription"),
        )
        .await
        .expect("subscribe (creates the stream)");
    let plain = async_nats::jetstream::new(scope.plain().await);
    let mut with_id = plain_headers();
    with_id.insert("Nats-Msg-Id", "plain-1");
    let ack = plain
        .publish_with_headers(
            subject.clone(),
            with_id,
            (&b"{\"plain\":true}\0\xff"[..]).into(),
        )
        .await
        .expect("plain publish")
        .await
        .expect("plain ack");
    let no_id = plain
        .publish_with_headers(
            subject.clone(),
            plain_headers(),
            (&b"{\"plain\":true}\0\xff"[..]).into(),
        )
        .await
        .expect("plain publish")
        .await
        .expect("plain ack");
    let d = next(c.as_mut()).await;
    check_plain(d.message(), &subject);
    assert_eq!(
        d.message().id().as_str(),
        "plain-1",
        "Nats-Msg-Id is the id"
    );
    assert_eq!(d.sequence(), ack.sequence);
    assert_eq!(d.group(), Some("readers"));
    d.ack().await.expect("ack");
    let d = next(c.as_mut()).await;
    check_plain(d.message(), &subject);
    assert_eq!(
        d.message().id().as_str(),
        format!("{}-{}", no_id.stream, no_id.sequence),
        "without Nats-Msg-Id the id is <stream>-<sequence>"
    );
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_squall_publish_reaches_a_plain_consumer_and_dedups_natively() {
    let Some(url) = nats_url() else { return };
    let scope = Scope::new(&url, JS_TEST_OPTIONS);
    let squall = scope.backend().await.expect("connect");
    let subject = format!("t.interop.{}.out", tag());
    let m = Message::builder(&subject)
        .and_then(|b| b.id("order-9"))
        .and_then(|b| b.key("customer-2"))
        .and_then(|b| b.header(CORRELATION_ID, "corr-1"))
        .expect("message")
        .payload(&b"bin\0ary"[..])
        .build();
    let first = squall.publish(m.clone()).await.expect("publish");
    let again = squall.publish(m.clone()).await.expect("publish again");
    assert!(!first.duplicate && again.duplicate, "{first:?} {again:?}");
    assert_eq!(first.sequence, again.sequence);
    let stream = first.stream.clone().expect("a stream");

    let js = async_nats::jetstream::new(scope.plain().await);
    let s = js.get_stream(&stream).await.expect("stream exists");
    let consumer = s
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("plain consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let got = batch.next().await.expect("one message").expect("ok");
    assert_eq!(&got.payload[..], b"bin\0ary");
    let h = got.headers.as_ref().expect("headers");
    assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("order-9"));
    assert_eq!(h.get(codec::KEY).map(|v| v.as_str()), Some("customer-2"));
    assert_eq!(h.get(CORRELATION_ID).map(|v| v.as_str()), Some("corr-1"));
    got.ack().await.expect("plain ack");
    assert!(
        batch.next().await.is_none(),
        "the duplicate was stored once"
    );
}
