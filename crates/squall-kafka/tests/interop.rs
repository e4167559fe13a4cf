//! Interop with other Kafka clients, against the broker at `SQUALL_KAFKA_URL`: a record written
//! by a plain rdkafka producer (as any Kafka application would) reaches a squall subscriber
//! with its payload, key and headers intact, and a squall message reaches a plain rdkafka
//! consumer the same way. Skipped with a notice when the variable is unset.

mod support;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use squall_core::{Message, Publisher, StartPosition, Subject, Subscriber, Subscription};
use squall_kafka::{codec, topics};
use support::{Scope, kafka_url, tag};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_rdkafka_record_reaches_the_adapter_intact() {
    let Some(url) = kafka_url() else { return };
    let scope = Scope::new(&url, "");
    let kafka = scope.backend().await.expect("connecting");
    let subject = Subject::new(format!("interop.{}.in", tag())).unwrap();
    let topic = topics::topic_for(&scope.config().topic_prefix, &subject);
    // Subscribing creates the topic; start from the first record so timing cannot matter.
    let mut c = kafka
        .subscribe(
            Subscription::new(subject.as_str())
                .unwrap()
                .start(StartPosition::First),
        )
        .await
        .expect("subscribing");

    let producer: FutureProducer = scope.plain_config().create().expect("plain producer");
    let payload: Vec<u8> = vec![0, 1, 2, 0xff, b'{', b'}', 0x7f];
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
        .insert(Header {
            key: "traceparent",
            value: Some("00-abc-def-01"),
        })
        .insert(Header {
            key: "empty",
            value: Some(""),
        })
        .insert(Header {
            key: "bin",
            value: Some(&[0u8, 0xff][..]),
        });
    let delivered = producer
        .send(
            FutureRecord::to(&topic)
                .payload(&payload)
                .key("customer-42")
                .headers(headers)
                .timestamp(1_700_000_000_123),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("plain produce");

    let d = tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer open")
        .expect("delivery");
    let m = d.message();
    assert_eq!(m.subject(), &subject, "subject from the topic name");
    assert_eq!(&m.payload()[..], &payload[..], "payload");
    assert_eq!(m.key(), Some("customer-42"), "key");
    assert_eq!(m.headers().get("content-type"), Some("application/json"));
    assert_eq!(m.headers().get("traceparent"), Some("00-abc-def-01"));
    assert_eq!(m.headers().get("empty"), Some(""));
    assert_eq!(
        m.headers().get(codec::DROPPED),
        Some("bin"),
        "a binary header cannot be a squall header; it is named, not silently lost"
    );
    assert_eq!(
        m.id().as_str(),
        format!("{topic}/{}/{}", delivered.partition, delivered.offset),
        "a record without squall.id gets its position as id"
    );
    assert_eq!(
        d.published_at().as_nanos(),
        1_700_000_000_123_000_000,
        "record timestamp"
    );
    assert_eq!(d.sequence(), delivered.offset as u64 + 1);
    d.ack().await.expect("acking");
    c.close().await.expect("closing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_message_reaches_a_plain_rdkafka_consumer_intact() {
    let Some(url) = kafka_url() else { return };
    let scope = Scope::new(&url, "");
    let kafka = scope.backend().await.expect("connecting");
    let subject = format!("interop.{}.out", tag());
    let msg = Message::builder(&subject)
        .unwrap()
        .id("order-7")
        .unwrap()
        .key("customer-7")
        .unwrap()
        .header("content-type", "text/plain")
        .unwrap()
        .header("x-index", "7")
        .unwrap()
        .payload(&b"hello \x00 kafka"[..])
        .build();
    let ack = kafka.publish(msg.clone()).await.expect("publishing");
    let topic = ack.stream.clone().expect("the ack names the topic");
    assert_eq!(topic, subject, "a plain subject is its own topic name");

    let consumer: BaseConsumer = scope
        .plain_config()
        .set("group.id", format!("interop-plain-{}", tag()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("plain consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assigning");
    let got = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(r) = consumer.poll(Duration::from_millis(100)) {
                let r = r.expect("plain consume");
                let headers: Vec<(String, Vec<u8>)> = r
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                return Some((
                    r.offset(),
                    r.payload().map(<[u8]>::to_vec),
                    r.key().map(<[u8]>::to_vec),
                    headers,
                    r.timestamp().to_millis(),
                ));
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("a record within 10 s");
    let (offset, payload, key, headers, ts) = got;
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    };
    assert_eq!(
        ack.sequence,
        offset as u64 + 1,
        "ack sequence is offset + 1"
    );
    assert_eq!(payload.as_deref(), Some(&b"hello \x00 kafka"[..]));
    assert_eq!(key.as_deref(), Some(&b"customer-7"[..]));
    assert_eq!(header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(header("x-index").as_deref(), Some("7"));
    assert_eq!(header(codec::ID).as_deref(), Some("order-7"));
    assert_eq!(
        header(codec::TIMESTAMP).as_deref(),
        Some(msg.timestamp().as_nanos().to_string().as_str())
    );
    assert_eq!(
        ts,
        Some((msg.timestamp().as_nanos() / 1_000_000) as i64),
        "CreateTime"
    );
    kafka.close().await.expect("closing");
}
