//! The client against a scripted fake server, subscription side: credit granted back as
//! deliveries are taken, settles and their answers, resubscribes after a reconnect (same id;
//! durable groups as they were, fan-out at its oldest unacked delivery), leases lost with a
//! connection, and a graceful close.

mod fake;

use std::time::Duration;

use fake::{FakeServer, deliver, msg, subscribed, wait_state};
use futures::StreamExt;
use squall_client::{Client, ConnectionState};
use squall_core::{ErrorKind, LeaseId, Publisher, Subscriber, Subscription, Timestamp};
use squall_wire::{Frame, SettleOp, SettleResult};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_is_granted_back_as_deliveries_are_taken() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let mut config = server.config();
    config.prefetch = 4;
    let (client, mut peer) = tokio::join!(Client::connect(config), server.accept());
    let client = client.unwrap();
    let sub = Subscription::new("t.>").unwrap().group("g").unwrap();
    let (consumer, sub_id) = tokio::join!(client.subscribe(sub.clone()), async {
        let Frame::Subscribe(s) = peer.recv().await else {
            panic!("expected Subscribe")
        };
        assert_eq!(s.credit, 4, "the initial credit is the prefetch window");
        assert_eq!(s.subscription, sub);
        peer.send(Frame::SubscribeResult {
            request_id: s.request_id,
            result: Ok(()),
        })
        .await;
        s.sub_id
    });
    let mut consumer = consumer.unwrap();
    peer.send(Frame::Deliver(
        (1..=4).map(|s| deliver(sub_id, s)).collect(),
    ))
    .await;
    let mut granted = 0;
    for expected in 1..=4u64 {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.sequence(), expected);
        assert_eq!(d.group(), Some("g"));
    }
    while granted < 4 {
        match peer.recv().await {
            Frame::Credit { sub_id: id, credit } => {
                assert_eq!(id, sub_id);
                assert!(credit >= 1);
                granted += credit;
            }
            other => panic!("expected Credit, got {other:?}"),
        }
    }
    assert_eq!(
        granted, 4,
        "every delivery taken is granted back exactly once"
    );
    let quiet = timeout(Duration::from_millis(100), peer.framed.next()).await;
    assert!(quiet.is_err(), "no credit beyond what was taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_are_answered_and_a_lost_connection_expires_old_leases() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let (client, mut peer) = tokio::join!(Client::connect(server.config()), server.accept());
    let client = client.unwrap();
    let sub = Subscription::new("t.>")
        .unwrap()
        .group("g")
        .unwrap()
        .durable(true);
    let (mut consumer, sub_id) = subscribed(&client, &mut peer, sub.clone()).await;
    peer.send(Frame::Deliver(vec![deliver(sub_id, 1), deliver(sub_id, 2)]))
        .await;
    let d1 = consumer.next().await.unwrap().unwrap();
    let mut d2 = consumer.next().await.unwrap().unwrap();
    let (acked, _) = tokio::join!(d1.ack(), async {
        loop {
            match peer.recv().await {
                Frame::Settle(items) => {
                    assert_eq!(items.len(), 1);
                    assert_eq!(items[0].op, SettleOp::Ack);
                    assert_eq!(
                        items[0].lease,
                        LeaseId {
                            sequence: 1,
                            nonce: 7
                        }
                    );
                    let r = SettleResult {
                        request_id: items[0].request_id,
                        result: Ok(Timestamp(0)),
                    };
                    peer.send(Frame::SettleResults(vec![r])).await;
                    break;
                }
                Frame::Credit { .. } => continue,
                other => panic!("expected Settle, got {other:?}"),
            }
        }
    });
    acked.unwrap();
    drop(peer);
    let mut peer = server.accept().await;
    let Frame::Subscribe(again) = peer.recv().await else {
        panic!("expected the resubscribe first")
    };
    assert_eq!(again.sub_id, sub_id, "resubscribed under the same id");
    assert_eq!(
        again.subscription, sub,
        "a durable group is resubscribed as it was"
    );
    let err = d2.extend(Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseExpired);
    let err = d2.ack().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LeaseExpired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_resumes_at_its_oldest_unacked_delivery() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let (client, mut peer) = tokio::join!(Client::connect(server.config()), server.accept());
    let client = client.unwrap();
    let sub = Subscription::new("t.>").unwrap();
    let (mut consumer, sub_id) = subscribed(&client, &mut peer, sub.clone()).await;
    peer.send(Frame::Deliver(vec![
        deliver(sub_id, 10),
        deliver(sub_id, 11),
    ]))
    .await;
    let _d10 = consumer.next().await.unwrap().unwrap();
    let _d11 = consumer.next().await.unwrap().unwrap();
    drop(peer);
    let mut peer = server.accept().await;
    let Frame::Subscribe(again) = peer.recv().await else {
        panic!("expected the resubscribe")
    };
    assert_eq!(
        again.subscription.start,
        Some(squall_core::StartPosition::Sequence(10)),
        "nothing was acked: resume at the first unacked delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_confirms_unsubscribes_and_then_refuses() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let (client, mut peer) = tokio::join!(Client::connect(server.config()), server.accept());
    let client = client.unwrap();
    let sub = Subscription::new("t.>").unwrap();
    let (mut consumer, sub_id) = subscribed(&client, &mut peer, sub).await;
    let pending = client.send(msg(1)).await.unwrap();
    let (closed, _) = tokio::join!(client.close(), async {
        let (items, _) = peer.recv_publishes(1).await;
        peer.ack_all(&items, false).await;
        assert_eq!(peer.recv().await, Frame::Unsubscribe { sub_id });
        assert!(peer.framed.next().await.is_none(), "the socket is closed");
    });
    closed.unwrap();
    pending.await.unwrap();
    assert!(consumer.next().await.is_none(), "the consumer ended");
    let err = client.send(msg(2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    let err = client
        .subscribe(Subscription::new("t").unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Closed);
    wait_state(&client, |s| matches!(s, ConnectionState::Closed)).await;
}
