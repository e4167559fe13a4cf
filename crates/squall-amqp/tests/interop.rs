//! Interop with other AMQP clients (plain `lapin`, as any other RabbitMQ client would use it):
//! messages they publish reach squall subscribers with payload, properties and headers intact,
//! squall's messages reach them with the documented properties and headers, a plain responder
//! answers a squall request over direct reply-to, and a message squall cannot decode is parked,
//! not lost.

mod support;

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use squall_core::{
    ErrorKind, Message, Publisher, Requester, Subscriber, Subscription, Timestamp, headers,
};
use squall_testkit::{Must, recv};
use support::{Scope, amqp_url};

const T: Duration = Duration::from_secs(5);

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A plain client's consumer `tag` on `ch`, of a server-named exclusive queue (`auto_delete` or
/// not) bound to `exchange` with `binding`; the exchange is declared first, as squall declares it
/// (a durable topic exchange).
async fn plain_consumer(
    ch: &lapin::Channel,
    exchange: &str,
    binding: &str,
    tag: &str,
    auto_delete: bool,
) -> lapin::Consumer {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        exchange.into(),
        binding.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_consume(
        q.name().clone(),
        tag.into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_amqp_message_reaches_a_squall_subscriber_intact() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "interop-in", "");
    let backend = scope.backend().await.must("connecting");
    let mut c = backend
        .subscribe(Subscription::new("interop.in.>").unwrap())
        .await
        .must("subscribing");

    let plain = scope.plain().await;
    let ch = plain.create_channel().await.unwrap();
    let payload: Vec<u8> = vec![0, 1, 2, 0xff, b'\n', b'{', b'}'];
    let props = BasicProperties::default()
        .with_message_id("legacy-1".into())
        .with_correlation_id("corr-1".into())
        .with_content_type("application/json".into())
        .with_timestamp(1_700_000_000)
        .with_delivery_mode(2)
        .with_app_id("legacy-app".into())
        .with_headers(table(&[
            ("tenant", AMQPValue::LongString("acme".into())),
            ("retries", AMQPValue::LongInt(3)),
            ("urgent", AMQPValue::Boolean(true)),
        ]));
    ch.basic_publish(
        scope.exchange.as_str().into(),
        "interop.in.orders".into(),
        BasicPublishOptions::default(),
        &payload,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Without a message id or headers at all.
    ch.basic_publish(
        scope.exchange.as_str().into(),
        "interop.in.bare".into(),
        BasicPublishOptions::default(),
        b"bare",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let d = recv(c.as_mut(), T, "the plain message").await;
    let m = d.message();
    assert_eq!(m.subject().as_str(), "interop.in.orders");
    assert_eq!(m.id().as_str(), "legacy-1");
    assert_eq!(&m.payload()[..], &payload[..], "payload");
    assert_eq!(m.headers().get("tenant"), Some("acme"));
    assert_eq!(m.headers().get("retries"), Some("3"));
    assert_eq!(m.headers().get("urgent"), Some("true"));
    assert_eq!(
        m.headers().get(headers::CONTENT_TYPE),
        Some("application/json")
    );
    assert_eq!(m.correlation_id(), Some("corr-1"));
    assert_eq!(m.timestamp(), Timestamp(1_700_000_000_000_000_000));
    assert_eq!(d.attempt(), 1);
    d.ack().await.must("acking");

    let d = recv(c.as_mut(), T, "the bare message").await;
    assert_eq!(d.message().subject().as_str(), "interop.in.bare");
    assert_eq!(&d.message().payload()[..], b"bare");
    assert!(!d.message().id().as_str().is_empty(), "a generated id");
    d.ack().await.must("acking");
    let _ = plain.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squall_message_reaches_a_plain_consumer_with_properties_and_headers() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "interop-out", "");
    let plain = scope.plain().await;
    let ch = plain.create_channel().await.unwrap();
    let mut consumer = plain_consumer(&ch, &scope.exchange, "interop.out.#", "plain", true).await;

    let backend = scope.backend().await.must("connecting");
    let sent = Message::builder("interop.out.created")
        .unwrap()
        .id("sq-1")
        .unwrap()
        .key("customer-9")
        .unwrap()
        .header(headers::CONTENT_TYPE, "text/plain")
        .unwrap()
        .header(headers::CORRELATION_ID, "corr-9")
        .unwrap()
        .header("tenant", "acme")
        .unwrap()
        .payload(&b"\x00hello\xff"[..])
        .build();
    let ack = backend.publish(sent.clone()).await.must("publishing");
    assert_eq!(ack.durability, squall_core::Durability::Fsynced);

    let d = tokio::time::timeout(T, consumer.next())
        .await
        .expect("the plain consumer receives within 5 s")
        .expect("stream open")
        .expect("a delivery");
    assert_eq!(d.routing_key.as_str(), "interop.out.created");
    assert_eq!(d.data, b"\x00hello\xff");
    let p = &d.properties;
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("sq-1"));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-9")
    );
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        p.timestamp(),
        &Some(sent.timestamp().as_nanos() / 1_000_000_000),
        "timestamp in seconds"
    );
    let h = p.headers().as_ref().expect("a headers table").inner();
    assert_eq!(h.get("tenant"), Some(&AMQPValue::LongString("acme".into())));
    assert_eq!(
        h.get("x-squall-key"),
        Some(&AMQPValue::LongString("customer-9".into()))
    );
    d.ack(BasicAckOptions::default()).await.unwrap();
    let _ = plain.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_responder_answers_a_squall_request() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "interop-rpc", "");
    let backend = scope.backend().await.must("connecting");
    let plain = scope.plain().await;
    let ch = plain.create_channel().await.unwrap();
    let mut requests = plain_consumer(&ch, &scope.exchange, "rpc.time", "responder", false).await;
    let responder = tokio::spawn(async move {
        let d = requests.next().await.unwrap().unwrap();
        let reply_to = d
            .properties
            .reply_to()
            .clone()
            .expect("a reply-to property");
        let corr = d
            .properties
            .correlation_id()
            .clone()
            .expect("a correlation id");
        let mut body = b"re:".to_vec();
        body.extend_from_slice(&d.data);
        ch.basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_correlation_id(corr),
        )
        .await
        .unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
        ch
    });
    let req = Message::builder("rpc.time")
        .unwrap()
        .payload("now?")
        .build();
    let reply = backend.request(req, T).await.must("requesting");
    assert_eq!(&reply.payload()[..], b"re:now?");
    let _ch = responder.await.unwrap();
    let _ = plain.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_reported_and_parked() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "interop-bad", "exchange_kind=fanout");
    let backend = scope.backend().await.must("connecting");
    let mut c = backend
        .subscribe(Subscription::new("any.>").unwrap())
        .await
        .must("subscribing");
    let plain = scope.plain().await;
    let ch = plain.create_channel().await.unwrap();
    // A fanout exchange delivers it whatever the key; `a..b` is no squall subject.
    ch.basic_publish(
        scope.exchange.as_str().into(),
        "a..b".into(),
        BasicPublishOptions::default(),
        b"odd",
        BasicProperties::default().with_message_id("odd-1".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let r = tokio::time::timeout(T, c.next())
        .await
        .expect("a report within 5 s")
        .expect("consumer open");
    let e = r.expect_err("an undecodable message is an error, not a delivery");
    assert_eq!(e.kind(), ErrorKind::InvalidMessage, "{e}");
    let parked = format!("{}.parked", scope.exchange);
    assert!(e.to_string().contains(&parked), "{e}");
    let got = ch
        .basic_get(parked.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the parked message");
    assert_eq!(got.delivery.data, b"odd");
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("odd-1")
    );
    let _ = plain.close(200, "done".into()).await;
}
