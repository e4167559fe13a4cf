//! The client against a scripted fake server, connection and publishing side: what it writes
//! (batched, ordered, re-sent publishes) and how it reacts to what the server writes (acks,
//! errors, silence, Goodbye, a dropped connection, a refused Hello). Subscriptions are in
//! `subscriptions.rs`; the real server in `conformance.rs` and `reconnect.rs`.

mod fake;

use std::time::Duration;

use fake::{FakeServer, WAIT, msg, wait_state};
use futures::{SinkExt, StreamExt};
use squall_client::{Client, ClientConfig, WhenDisconnected};
use squall_core::{ErrorKind, Publisher, Requester};
use squall_wire::{Codec, Frame, RemoteError};
use tokio::time::timeout;
use tokio_util::codec::Framed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_share_frames_and_each_gets_its_confirm() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let mut config = server.config();
    config.token = Some("s3cret".into());
    let (client, mut peer) = tokio::join!(Client::connect(config), server.accept());
    let client = client.unwrap();
    assert_eq!(peer.hello.client_name, "test-client");
    assert_eq!(peer.hello.token, "s3cret");
    let mut pending = Vec::new();
    for i in 0..500 {
        pending.push(client.send(msg(i)).await.unwrap());
    }
    let (items, frames) = peer.recv_publishes(500).await;
    assert!(frames <= 500, "{frames} frames for 500 publishes");
    let ids: Vec<String> = items.iter().map(|p| p.message.id().to_string()).collect();
    let expected: Vec<String> = (0..500).map(|i| format!("m-{i}")).collect();
    assert_eq!(ids, expected, "publishes are written in send order");
    peer.ack_all(&items, false).await;
    for (i, p) in pending.into_iter().enumerate() {
        let ack = p.await.unwrap();
        assert_eq!(ack.sequence, i as u64 + 1);
        assert_eq!(ack.stream.as_deref(), Some("default"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_publishes_are_resent_with_their_ids_after_a_reconnect() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let (client, mut peer) = tokio::join!(Client::connect(server.config()), server.accept());
    let client = client.unwrap();
    let first = client.send(msg(1)).await.unwrap();
    let second = client.send(msg(2)).await.unwrap();
    let (items, _) = peer.recv_publishes(2).await;
    peer.ack_all(&items[..1], false).await;
    assert_eq!(first.await.unwrap().sequence, 1);
    drop(peer); // the connection dies with m-2 unconfirmed
    let mut peer = server.accept().await;
    let (items, _) = peer.recv_publishes(1).await;
    assert_eq!(
        items[0].message.id().as_str(),
        "m-2",
        "only the unconfirmed one is re-sent"
    );
    peer.ack_all(&items, true).await;
    let ack = second.await.unwrap();
    assert!(
        ack.duplicate,
        "the server's duplicate verdict reaches the caller"
    );
    assert_eq!(client.reconnects(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_silent_heartbeats_mean_a_dead_connection() {
    let server = FakeServer::bind(Duration::from_millis(100)).await;
    let (client, peer) = tokio::join!(Client::connect(server.config()), server.accept());
    let client = client.unwrap();
    let started = tokio::time::Instant::now();
    let _second = server.accept().await; // the first peer never sends anything
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "reconnected after {took:?}: too early"
    );
    drop(peer);
    wait_state(&client, |s| s.is_connected()).await;
    assert_eq!(client.reconnects(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_carry_the_server_kind() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let (client, mut peer) = tokio::join!(Client::connect(server.config()), server.accept());
    let client = client.unwrap();
    let pending = client.send(msg(1)).await.unwrap();
    let (items, _) = peer.recv_publishes(1).await;
    let error = RemoteError {
        kind: ErrorKind::Full,
        message: "stream full".into(),
    };
    let request_id = items[0].request_id;
    peer.send(Frame::Error {
        request_id,
        fatal: false,
        error,
    })
    .await;
    let err = pending.await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Full);
    assert!(err.to_string().contains("stream full"), "{err}");
    let (reply, _) = tokio::join!(
        client.request(msg(2), Duration::from_millis(200)),
        peer.recv()
    );
    assert_eq!(
        reply.unwrap_err().kind(),
        ErrorKind::Timeout,
        "the client times out on its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_disconnected_publishes_fail_or_wait_as_configured() {
    for mode in [WhenDisconnected::Fail, WhenDisconnected::Wait] {
        let server = FakeServer::bind(Duration::from_secs(5)).await;
        let mut config = server.config();
        config.when_disconnected = mode;
        config.publish_buffer = 2;
        config.reconnect.initial = Duration::from_millis(300);
        config.reconnect.max = Duration::from_millis(300);
        config.reconnect.jitter = false;
        let (client, peer) = tokio::join!(Client::connect(config), server.accept());
        let client = client.unwrap();
        drop(peer);
        wait_state(&client, |s| !s.is_connected()).await;
        match mode {
            WhenDisconnected::Fail => {
                let err = client.send(msg(1)).await.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Unavailable);
                assert!(
                    err.to_string().contains("client.when_disconnected"),
                    "{err}"
                );
            }
            _ => {
                let a = client.send(msg(1)).await.unwrap();
                let b = client.send(msg(2)).await.unwrap();
                let err = client.send(msg(3)).await.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Full, "the buffer bounds the wait");
                assert!(err.to_string().contains("client.publish_buffer"), "{err}");
                let mut peer = server.accept().await;
                let (items, _) = peer.recv_publishes(2).await;
                peer.ack_all(&items, false).await;
                a.await.unwrap();
                b.await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_held_during_an_outage_go_out_together_in_order() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let mut config = server.config();
    config.when_disconnected = WhenDisconnected::Wait;
    let (client, peer) = tokio::join!(Client::connect(config), server.accept());
    let client = client.unwrap();
    drop(peer);
    wait_state(&client, |s| !s.is_connected()).await;
    let mut pending = Vec::new();
    for i in 0..300 {
        pending.push(client.send(msg(i)).await.unwrap());
    }
    let mut peer = server.accept().await;
    let (items, frames) = peer.recv_publishes(300).await;
    assert!(
        frames <= 2,
        "300 held publishes took {frames} frames: not coalesced"
    );
    let ids: Vec<String> = items.iter().map(|p| p.message.id().to_string()).collect();
    let expected: Vec<String> = (0..300).map(|i| format!("m-{i}")).collect();
    assert_eq!(ids, expected, "held publishes keep their order");
    peer.ack_all(&items, false).await;
    for p in pending {
        p.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_goodbye_new_publishes_wait_for_the_next_connection() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let (client, mut peer) = tokio::join!(Client::connect(server.config()), server.accept());
    let client = client.unwrap();
    let inflight = client.send(msg(1)).await.unwrap();
    let (items, _) = peer.recv_publishes(1).await;
    peer.send(Frame::Goodbye("restarting".into())).await;
    peer.ack_all(&items, false).await;
    inflight.await.unwrap(); // frames are read in order: the Goodbye was seen
    let later = client.send(msg(2)).await.unwrap();
    let quiet = timeout(Duration::from_millis(200), peer.framed.next()).await;
    assert!(
        quiet.is_err(),
        "nothing new is sent after Goodbye: {quiet:?}"
    );
    drop(peer);
    let mut peer = server.accept().await;
    let (items, _) = peer.recv_publishes(1).await;
    assert_eq!(items[0].message.id().as_str(), "m-2");
    peer.ack_all(&items, false).await;
    later.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_waiting_for_room_fails_when_the_connection_drops() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let mut config = server.config();
    config.publish_buffer = 2;
    config.reconnect.initial = Duration::from_secs(1);
    config.reconnect.max = Duration::from_secs(1);
    let (client, mut peer) = tokio::join!(Client::connect(config), server.accept());
    let client = client.unwrap();
    let _a = client.send(msg(1)).await.unwrap();
    let _b = client.send(msg(2)).await.unwrap();
    peer.recv_publishes(2).await;
    let third = tokio::spawn({
        let client = client.clone();
        async move { client.send(msg(3)).await.map(|_| ()) }
    });
    let early = timeout(Duration::from_millis(100), peer.framed.next()).await;
    assert!(
        early.is_err(),
        "the third publish waits for room: {early:?}"
    );
    assert!(
        !third.is_finished(),
        "a full buffer makes send wait while connected"
    );
    drop(peer);
    let err = timeout(WAIT, third).await.unwrap().unwrap().unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Unavailable,
        "fail mode: the outage ends the wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_closes_the_connection_and_the_client_reconnects() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let (client, mut peer) = tokio::join!(Client::connect(server.config()), server.accept());
    let client = client.unwrap();
    let error = RemoteError {
        kind: ErrorKind::Protocol,
        message: "bad frame".into(),
    };
    peer.send(Frame::Error {
        request_id: 0,
        fatal: true,
        error,
    })
    .await;
    let _again = server.accept().await;
    wait_state(&client, |s| s.is_connected()).await;
    assert_eq!(client.reconnects(), 1);
    assert!(
        peer.framed.next().await.is_none(),
        "the client closed the old connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hello_fails_connect_with_the_server_kind() {
    let server = FakeServer::bind(Duration::from_secs(5)).await;
    let config = server.config();
    let refuse = async {
        let (socket, _) = server.listener.accept().await.unwrap();
        let mut framed = Framed::new(socket, Codec::default());
        let _hello = framed.next().await;
        let error = RemoteError {
            kind: ErrorKind::InvalidConfig,
            message: "bad token".into(),
        };
        framed
            .send(Frame::Error {
                request_id: 0,
                fatal: true,
                error,
            })
            .await
            .unwrap();
    };
    let (client, ()) = tokio::join!(Client::connect(config), refuse);
    let err = client.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("bad token"), "{err}");
    let err = Client::connect(ClientConfig::new("nowhere"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("(set `server`)"), "{err}");
}
