//! Kafka-specific behaviour the universal suite does not cover, against the broker at
//! `SQUALL_KAFKA_URL` (skipped with a notice when unset): offsets commit only up to the first
//! unsettled record, keys pick partitions, groups split and rebalance partitions, fetching
//! pauses and resumes under `max_in_flight`, wildcard groups pick up new topics, and what Kafka
//! cannot do is refused with a clear error.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use squall_core::{
    Consumer, Delivery, ErrorKind, Message, Publisher, StartPosition, Subject, Subscription,
};
use squall_kafka::{KafkaBackend, KafkaConsumer, topics};
use support::{Scope, eventually, kafka_url, tag};

/// The offset group `group_id` has committed for `topic` partition `partition` (`None`: none).
async fn committed(scope: &Scope, group_id: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = scope
        .plain_config()
        .set("group.id", group_id)
        .create()
        .expect("plain consumer");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .expect("reading committed offsets");
        match got.elements()[0].offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        }
    })
    .await
    .unwrap()
}

async fn recv(c: &mut KafkaConsumer, what: &str) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 10 s"))
        .expect("consumer open")
        .expect("delivery")
}

async fn publish_n(kafka: &KafkaBackend, subject: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let m = Message::builder(subject)
            .unwrap()
            .id(format!("m{i}"))
            .unwrap()
            .payload(format!("{i}"))
            .build();
        ids.push(m.id().to_string());
        kafka.publish(m).await.expect("publishing");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_commit_only_the_settled_prefix() {
    let Some(url) = kafka_url() else { return };
    let scope = Scope::new(&url, "");
    let kafka = scope.backend().await.expect("connecting");
    let subject = format!("b.{}.ooo", tag());
    let group = format!("ooo-{}", tag());
    let group_id = scope.config().group_id(&group);
    let sub = Subscription::new(&subject)
        .unwrap()
        .group(&group)
        .unwrap()
        .max_in_flight(10)
        .ack_wait(Duration::from_secs(60));
    let mut c = kafka.consumer(sub.clone()).await.expect("subscribing");
    let ids = publish_n(&kafka, &subject, 6).await;
    let mut got = Vec::new();
    for i in 0..6 {
        got.push(recv(&mut c, &format!("delivery {i}")).await);
    }
    assert_eq!(
        got.iter()
            .map(|d| d.message().id().to_string())
            .collect::<Vec<_>>(),
        ids,
        "one partition, delivered in order"
    );
    let mut got: Vec<Option<Delivery>> = got.into_iter().map(Some).collect();
    let mut ack = |i: usize| got[i].take().unwrap().ack();
    ack(0).await.unwrap();
    ack(1).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            committed(&scope, &group_id, &subject, 0).await == Some(2)
        })
        .await,
        "acking 0 and 1 commits offset 2"
    );
    // 5, 3 and 4 before 2: nothing may be committed past 2.
    ack(5).await.unwrap();
    ack(3).await.unwrap();
    ack(4).await.unwrap();
    c.close().await.expect("closing");
    assert_eq!(
        committed(&scope, &group_id, &subject, 0).await,
        Some(2),
        "after the final commit of the closed member, the group is still at the unsettled 2"
    );
    // The next member resumes at 2: 3, 4 and 5 come again (at-least-once), as redeliveries.
    let mut c2 = kafka.consumer(sub).await.expect("rejoining");
    let mut again = Vec::new();
    for i in 0..4 {
        again.push(recv(&mut c2, &format!("redelivery {i}")).await);
    }
    assert_eq!(
        again
            .iter()
            .map(|d| d.message().id().as_str())
            .collect::<Vec<_>>(),
        ["m2", "m3", "m4", "m5"]
    );
    assert!(
        again.iter().all(|d| d.attempt() == 2),
        "attempts {:?}",
        again.iter().map(Delivery::attempt).collect::<Vec<_>>()
    );
    let mut again = again.into_iter();
    again.next().unwrap().ack().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            committed(&scope, &group_id, &subject, 0).await == Some(3)
        })
        .await,
        "acking 2 moves the commit to 3 only: 3, 4, 5 of this member are unsettled"
    );
    for d in again {
        d.ack().await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            committed(&scope, &group_id, &subject, 0).await == Some(6)
        })
        .await,
        "everything settled: committed 6"
    );
    c2.close().await.expect("closing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_always_goes_to_the_same_partition() {
    let Some(url) = kafka_url() else { return };
    let scope = Scope::new(&url, "partitions=3");
    let kafka = scope.backend().await.expect("connecting");
    let subject = format!("b.{}.keys", tag());
    for i in 0..30 {
        let m = Message::builder(&subject)
            .unwrap()
            .key(format!("k{}", i % 6))
            .unwrap()
            .payload(format!("{i}"))
            .build();
        kafka.publish(m).await.expect("publishing");
    }
    let consumer: BaseConsumer = scope
        .plain_config()
        .set("group.id", format!("keys-plain-{}", tag()))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&subject, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen: HashMap<String, BTreeSet<i32>> = HashMap::new();
        let mut n = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while n < 30 && std::time::Instant::now() < deadline {
            if let Some(Ok(r)) = consumer.poll(Duration::from_millis(100)) {
                let key = String::from_utf8(r.key().unwrap().to_vec()).unwrap();
                seen.entry(key).or_default().insert(r.partition());
                n += 1;
            }
        }
        (n, seen)
    })
    .await
    .unwrap();
    assert_eq!(seen.0, 30, "all records read back");
    assert_eq!(seen.1.len(), 6);
    for (k, parts) in &seen.1 {
        assert_eq!(parts.len(), 1, "key {k} in partitions {parts:?}");
    }
    let used: BTreeSet<i32> = seen.1.values().flatten().copied().collect();
    assert!(
        used.len() > 1,
        "six keys over three partitions used only {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_split_partitions_and_take_over_on_leave() {
    let Some(url) = kafka_url() else { return };
    let scope = Scope::new(&url, "partitions=2");
    let kafka = scope.backend().await.expect("connecting");
    let subject = format!("b.{}.split", tag());
    let sub = Subscription::new(&subject)
        .unwrap()
        .group(format!("split-{}", tag()))
        .unwrap();
    let mut a = kafka.consumer(sub.clone()).await.expect("member a");
    assert_eq!(a.assignment().len(), 2, "alone, a has both partitions");
    let mut b = kafka.consumer(sub.clone()).await.expect("member b");
    assert_eq!(b.assignment().len(), 1, "b got one partition");
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.assignment().len() == 1
        })
        .await,
        "a gave one partition up"
    );
    assert_ne!(a.assignment(), b.assignment());
    b.close().await.expect("closing b");
    assert!(
        eventually(Duration::from_secs(15), || async {
            a.assignment().len() == 2
        })
        .await,
        "a took both partitions back"
    );
    // Everything published reaches the remaining member.
    for i in 0..10 {
        let m = Message::builder(&subject)
            .unwrap()
            .key(format!("k{i}"))
            .unwrap()
            .id(format!("s{i}"))
            .unwrap()
            .build();
        kafka.publish(m).await.unwrap();
    }
    let mut ids = BTreeSet::new();
    for i in 0..10 {
        let d = recv(&mut a, &format!("record {i}")).await;
        ids.insert(d.message().id().to_string());
        d.ack().await.unwrap();
    }
    assert_eq!(ids.len(), 10);
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_pauses_when_the_buffer_is_full_and_loses_nothing() {
    let Some(url) = kafka_url() else { return };
    // A buffer of 2 + 2 records for 40: fetching pauses and resumes many times.
    let scope = Scope::new(&url, "prefetch=2");
    let kafka = scope.backend().await.expect("connecting");
    let subject = format!("b.{}.flow", tag());
    let sub = Subscription::new(&subject)
        .unwrap()
        .start(StartPosition::First)
        .max_in_flight(2);
    let ids = publish_n(&kafka, &subject, 40).await;
    let mut c = kafka.consumer(sub).await.expect("subscribing");
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let d = recv(&mut c, &format!("record {} of 40", got.len())).await;
        got.push(d.message().id().to_string());
        d.ack().await.unwrap();
    }
    assert_eq!(got, ids, "every record once, in order");
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_group_picks_up_topics_created_later() {
    let Some(url) = kafka_url() else { return };
    let scope = Scope::new(&url, "");
    let kafka = scope.backend().await.expect("connecting");
    let base = format!("b.{}", tag());
    let sub = Subscription::new(format!("{base}.*"))
        .unwrap()
        .group(format!("wild-{}", tag()))
        .unwrap();
    let mut c = kafka.consumer(sub).await.expect("subscribing");
    let mut expected = BTreeMap::new();
    for t in ["a", "b"] {
        let m = Message::builder(format!("{base}.{t}"))
            .unwrap()
            .payload(t)
            .build();
        expected.insert(m.id().to_string(), format!("{base}.{t}"));
        kafka.publish(m).await.unwrap();
    }
    let other = Message::builder(format!("{base}.a.deeper"))
        .unwrap()
        .build();
    kafka.publish(other).await.unwrap();
    let mut got = BTreeMap::new();
    while got.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .expect("new topics within 20 s (metadata refresh, then a rebalance)")
            .unwrap()
            .unwrap();
        got.insert(
            d.message().id().to_string(),
            d.message().subject().to_string(),
        );
        d.ack().await.unwrap();
    }
    assert_eq!(got, expected, "`*` matches one token, not `a.deeper`");
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_kafka_cannot_do_is_refused_clearly() {
    let Some(url) = kafka_url() else { return };
    let scope = Scope::new(&url, "");
    let kafka = scope.backend().await.expect("connecting");
    let subject = format!("b.{}.refused", tag());
    let delayed = Message::builder(&subject)
        .unwrap()
        .delay(Duration::from_secs(1))
        .build();
    let e = kafka.publish(delayed).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let ttl = Message::builder(&subject)
        .unwrap()
        .ttl(Duration::from_secs(60))
        .build();
    let e = kafka.publish(ttl).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let reserved = Message::builder(&subject)
        .unwrap()
        .header("squall.id", "forged")
        .unwrap()
        .build();
    let e = kafka.publish(reserved).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidMessage, "{e}");
    let bad_stream = Subscription::new(&subject).unwrap().stream("not a topic!");
    let e = kafka.consumer(bad_stream).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    // Without dedup, one id published twice is stored twice, and neither ack claims otherwise.
    let m = Message::builder(&subject)
        .unwrap()
        .id("same")
        .unwrap()
        .build();
    let first = kafka.publish(m.clone()).await.unwrap();
    let second = kafka.publish(m).await.unwrap();
    assert!(!first.duplicate && !second.duplicate);
    assert_eq!(second.sequence, first.sequence + 1, "stored twice");
    // A closed handle refuses sends.
    kafka.close().await.unwrap();
    let e = kafka
        .publish(Message::new(Subject::new(&subject).unwrap(), "late"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unreachable_brokers_fail_with_typed_errors() {
    for (url, key) in [
        ("kafka://127.0.0.1:9092?partitons=3", "partitons"),
        ("kafka://127.0.0.1:9092?acks=some", "acks"),
        ("http://127.0.0.1:9092", "url"),
    ] {
        let e = squall_kafka::connect_url(url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
        assert!(e.to_string().contains(key), "{url}: {e}");
    }
    let e = squall_kafka::connect_url("kafka://127.0.0.1:9092?rdkafka.no.such.setting=1")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    // Nothing listens on port 1: connecting fails in time with a retryable error.
    let t0 = tokio::time::Instant::now();
    let e = squall_kafka::connect_url("kafka://127.0.0.1:1?request_timeout=1s")
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{} error: {e}", e.kind());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_that_are_not_topic_names_round_trip() {
    let Some(url) = kafka_url() else { return };
    let scope = Scope::new(&url, "topic_prefix=sq.");
    let kafka = scope.backend().await.expect("connecting");
    let t = tag();
    let odd = Subject::new(format!("b.{t}.odd:chars_and/slashes")).unwrap();
    let long = Subject::new(format!("b.{t}.{}", "l".repeat(240))).unwrap();
    for s in [&odd, &long] {
        let topic = topics::topic_for("sq.", s);
        assert!(topics::valid_topic(&topic), "{topic}");
        let mut c = kafka
            .consumer(Subscription::new(s.as_str()).unwrap())
            .await
            .expect("subscribing");
        let ack = kafka
            .publish(Message::new(s.clone(), "x"))
            .await
            .expect("publishing");
        assert_eq!(ack.stream.as_deref(), Some(topic.as_str()));
        let d = recv(&mut c, s.as_str()).await;
        assert_eq!(d.message().subject(), s);
        d.ack().await.unwrap();
        c.close().await.unwrap();
    }
}
