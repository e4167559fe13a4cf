//! Interop with another SQS client: boto3 (Python), run as a subprocess against the server at
//! `SQUALL_SQS_URL` with dummy credentials. A message boto3 sends is consumed by the adapter with
//! its body and attributes as payload and headers, and a message the adapter publishes is read
//! by boto3 with the payload as body and the headers and squall's fields as attributes.

mod support;

use std::time::Duration;

use squall_core::{Message, Publisher, Subject, Subscriber, Subscription, headers};
use squall_testkit::{Must, expect_quiet, recv};
use support::{Scope, boto3, sqs_url};

const RECEIVE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_boto3_sends_is_consumed_with_payload_and_headers() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "from", "");
    let b = scope.backend().await.must("connecting");
    let s = Subject::new("interop.orders").unwrap();
    let url = b
        .ensure_group_queue(&s, "billing")
        .await
        .must("creating the queue");
    let sub = Subscription::new(s.as_str())
        .and_then(|x| x.group("billing"))
        .expect("subscription");
    let mut c = b.subscribe(sub).await.must("subscribing");
    let sent = boto3(
        &base,
        "r = sqs.send_message(QueueUrl=ARGS['url'], MessageBody='{\"order\": 42, \"note\": \"café\"}',\n\
         \x20   MessageAttributes={\n\
         \x20       'content-type': {'DataType': 'String', 'StringValue': 'application/json'},\n\
         \x20       'traceparent': {'DataType': 'String', 'StringValue': '00-abc-def-01'},\n\
         \x20       'count': {'DataType': 'Number', 'StringValue': '3'}})\n\
         print(r['MessageId'])\n",
        serde_json::json!({ "url": url }),
    )
    .await;
    let d = recv(c.as_mut(), RECEIVE, "the message boto3 sent").await;
    let m = d.message();
    assert_eq!(
        m.payload().as_ref(),
        "{\"order\": 42, \"note\": \"café\"}".as_bytes()
    );
    assert_eq!(m.subject(), &s, "the subject the queue is bound to");
    assert_eq!(m.id().as_str(), sent.trim(), "SQS's MessageId");
    assert_eq!(
        m.headers().get(headers::CONTENT_TYPE),
        Some("application/json")
    );
    assert_eq!(m.headers().get(headers::TRACEPARENT), Some("00-abc-def-01"));
    assert_eq!(m.headers().get("count"), Some("3"));
    assert_eq!(d.attempt(), 1);
    d.ack().await.must("acking");
    expect_quiet(c.as_mut(), Duration::from_millis(1500)).await;

    // A queue boto3 made and fills, consumed by name.
    let queue = format!("{}boto-own", scope.prefix);
    boto3(
        &base,
        "u = sqs.create_queue(QueueName=ARGS['queue'])['QueueUrl']\n\
         sqs.send_message(QueueUrl=u, MessageBody='plain', MessageAttributes={\n\
         \x20   'x-from': {'DataType': 'String', 'StringValue': 'boto3'}})\n",
        serde_json::json!({ "queue": queue }),
    )
    .await;
    let sub = Subscription::new("interop.plain")
        .expect("subscription")
        .stream(&queue);
    let mut own = b.subscribe(sub).await.must("consuming boto3's queue");
    let d = recv(own.as_mut(), RECEIVE, "the message in boto3's queue").await;
    assert_eq!(&d.message().payload()[..], b"plain");
    assert_eq!(d.message().headers().get("x-from"), Some("boto3"));
    assert_eq!(d.message().subject().as_str(), "interop.plain");
    d.ack().await.must("acking");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_adapter_publishes_is_read_by_boto3() {
    let Some(base) = sqs_url() else { return };
    for fifo in [false, true] {
        let scope = Scope::new(&base, "to", if fifo { "fifo=1" } else { "" });
        let b = scope.backend().await.must("connecting");
        let s = Subject::new("interop.events").unwrap();
        let url = b
            .ensure_group_queue(&s, "audit")
            .await
            .must("creating the queue");
        let text = Message::builder(s.as_str())
            .and_then(|m| m.id("evt-1"))
            .and_then(|m| m.key("customer-9"))
            .and_then(|m| m.header(headers::CONTENT_TYPE, "text/plain"))
            .and_then(|m| m.header("x-tenant", "acme"))
            .expect("message")
            .payload("héllo from squall")
            .build();
        let binary = Message::builder(s.as_str())
            .and_then(|m| m.id("evt-2"))
            .and_then(|m| m.key("customer-9"))
            .expect("message")
            .payload(vec![0u8, 1, 2, 0xff])
            .build();
        b.publish(text).await.must("publishing text");
        b.publish(binary).await.must("publishing bytes");
        let out = boto3(
            &base,
            "import base64\n\
             got = []\n\
             while len(got) < 2:\n\
             \x20   r = sqs.receive_message(QueueUrl=ARGS['url'], MaxNumberOfMessages=10, WaitTimeSeconds=2,\n\
             \x20       MessageAttributeNames=['All'], MessageSystemAttributeNames=['All'])\n\
             \x20   for m in r.get('Messages', []):\n\
             \x20       a = {k: v['StringValue'] for k, v in m.get('MessageAttributes', {}).items()}\n\
             \x20       body = m['Body']\n\
             \x20       if a.get('squall.body') == 'base64':\n\
             \x20           body = list(base64.b64decode(body))\n\
             \x20       got.append({'body': body, 'attrs': a, 'group': m['Attributes'].get('MessageGroupId'),\n\
             \x20                   'dedup': m['Attributes'].get('MessageDeduplicationId')})\n\
             \x20       sqs.delete_message(QueueUrl=ARGS['url'], ReceiptHandle=m['ReceiptHandle'])\n\
             print(json.dumps(sorted(got, key=lambda g: g['attrs']['squall.id'])))\n",
            serde_json::json!({ "url": url }),
        )
        .await;
        let got: serde_json::Value = serde_json::from_str(out.trim()).expect("boto3's JSON");
        let (t, bin) = (&got[0], &got[1]);
        assert_eq!(t["body"], "héllo from squall", "{got}");
        assert_eq!(t["attrs"]["squall.id"], "evt-1");
        assert_eq!(t["attrs"]["squall.subject"], "interop.events");
        assert_eq!(t["attrs"]["squall.key"], "customer-9");
        assert_eq!(t["attrs"]["content-type"], "text/plain");
        assert_eq!(t["attrs"]["x-tenant"], "acme");
        assert_eq!(bin["body"], serde_json::json!([0, 1, 2, 255]), "{got}");
        if fifo {
            assert_eq!(t["group"], "customer-9", "MessageGroupId is the key");
            assert_eq!(t["dedup"], "evt-1", "MessageDeduplicationId is the id");
        }
    }
}
