//! A scripted fake `squall serve` for the protocol tests: it accepts, reads Hello, answers
//! Welcome, then the test reads and writes frames by hand.

#![allow(dead_code)] // each test crate uses a different part

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use squall_client::{Client, ClientConfig, ConnectionState, ReconnectPolicy};
use squall_core::{Consumer, Durability, LeaseId, Message, Subscriber, Subscription, Timestamp};
use squall_wire::{AckItem, Codec, DeliverItem, Frame, Hello, PublishItem, Welcome, WireAck};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct FakeServer {
    pub listener: TcpListener,
    heartbeat: Duration,
}

pub struct Peer {
    pub framed: Framed<TcpStream, Codec>,
    pub hello: Hello,
}

impl FakeServer {
    pub async fn bind(heartbeat: Duration) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        FakeServer {
            listener,
            heartbeat,
        }
    }

    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.listener.local_addr().unwrap().to_string());
        c.name = "test-client".into();
        c.reconnect = ReconnectPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            jitter: true,
            max_attempts: None,
        };
        c.request_timeout = Duration::from_secs(3);
        c
    }

    /// Accepts the next connection and completes the handshake.
    pub async fn accept(&self) -> Peer {
        let (socket, _) = timeout(WAIT, self.listener.accept())
            .await
            .expect("the client connects")
            .unwrap();
        let mut framed = Framed::new(socket, Codec::default());
        let hello = match framed.next().await {
            Some(Ok(Frame::Hello(h))) => h,
            other => panic!("expected Hello first, got {other:?}"),
        };
        let welcome = Welcome {
            version: 1,
            server_name: "fake".into(),
            max_frame: 8 << 20,
            max_payload: 1 << 20,
            max_in_flight: 8192,
            heartbeat: self.heartbeat,
        };
        framed.send(Frame::Welcome(welcome)).await.unwrap();
        Peer { framed, hello }
    }
}

impl Peer {
    /// The next frame that is not a Pong.
    pub async fn recv(&mut self) -> Frame {
        loop {
            match timeout(WAIT, self.framed.next()).await {
                Ok(Some(Ok(Frame::Pong(_)))) => continue,
                Ok(Some(Ok(f))) => return f,
                other => panic!("expected a frame from the client, got {other:?}"),
            }
        }
    }

    /// Publish items until `n` have arrived; returns them and the number of frames they took.
    pub async fn recv_publishes(&mut self, n: usize) -> (Vec<PublishItem>, usize) {
        let (mut items, mut frames) = (Vec::new(), 0);
        while items.len() < n {
            match self.recv().await {
                Frame::Publish(batch) => {
                    frames += 1;
                    items.extend(batch);
                }
                other => panic!("expected Publish, got {other:?}"),
            }
        }
        (items, frames)
    }

    pub async fn send(&mut self, f: Frame) {
        self.framed.send(f).await.unwrap();
    }

    pub async fn ack_all(&mut self, items: &[PublishItem], duplicate: bool) {
        let acks = items
            .iter()
            .enumerate()
            .map(|(i, p)| AckItem {
                request_id: p.request_id,
                result: Ok(WireAck {
                    stream: "default".into(),
                    sequence: i as u64 + 1,
                    durability: Durability::Fsynced,
                    duplicate,
                }),
            })
            .collect();
        self.send(Frame::PublishAcks(acks)).await;
    }
}

pub fn msg(i: usize) -> Message {
    Message::builder("t.x")
        .unwrap()
        .id(format!("m-{i}"))
        .unwrap()
        .payload(format!("p{i}"))
        .build()
}

pub fn deliver(sub_id: u32, sequence: u64) -> DeliverItem {
    DeliverItem {
        sub_id,
        lease: LeaseId { sequence, nonce: 7 },
        attempt: 1,
        published_at: Timestamp(1),
        deadline: Timestamp(2),
        group: Some("g".into()),
        message: msg(sequence as usize),
    }
}

pub async fn wait_state(client: &Client, pred: impl Fn(&ConnectionState) -> bool) {
    let mut state = client.state();
    timeout(WAIT, state.wait_for(|s| pred(s)))
        .await
        .expect("state reached in time")
        .expect("task alive");
}

/// Subscribes `sub` through `client` while `peer` accepts it; returns the consumer and its id.
pub async fn subscribed(
    client: &Client,
    peer: &mut Peer,
    sub: Subscription,
) -> (Box<dyn Consumer>, u32) {
    let (consumer, sub_id) = tokio::join!(client.subscribe(sub.clone()), async {
        let Frame::Subscribe(s) = peer.recv().await else {
            panic!("expected Subscribe")
        };
        assert_eq!(s.subscription, sub);
        let result = Ok(());
        peer.send(Frame::SubscribeResult {
            request_id: s.request_id,
            result,
        })
        .await;
        s.sub_id
    });
    (consumer.expect("subscribed"), sub_id)
}
