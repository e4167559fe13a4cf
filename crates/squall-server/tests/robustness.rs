//! Bad input against a real server on 127.0.0.1: malformed, truncated, oversized and random
//! frames. Each bad connection gets a fatal error frame (where the server can still speak) and is
//! closed; the server stays up and a well-behaved client on another connection is unaffected.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::{SinkExt, StreamExt};
use squall_broker::Broker;
use squall_core::{ErrorKind, Message, Subscription};
use squall_server::{Server, ServerConfig};
use squall_wire::{Codec, Frame, Hello, PROTOCOL_VERSION, PublishItem, Subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

async fn start(
    config: ServerConfig,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let broker = Broker::in_memory().unwrap();
    let server = Server::bind(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        },
        broker,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move { server.run(s).await.unwrap() });
    (addr, stop, task)
}

fn hello() -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        min_version: 1,
        client_name: "test".into(),
        token: String::new(),
    })
}

async fn connect(addr: std::net::SocketAddr) -> Framed<TcpStream, Codec> {
    let mut f = Framed::new(TcpStream::connect(addr).await.unwrap(), Codec::default());
    f.send(hello()).await.unwrap();
    let welcome = tokio::time::timeout(WAIT, f.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(welcome, Frame::Welcome(_)), "{welcome:?}");
    f
}

/// Reads frames until the server closes; returns the fatal error's kind, if one came.
async fn fatal_error_then_close(stream: &mut TcpStream) -> Option<ErrorKind> {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("the server closes a bad connection")
        .ok();
    let (frames, _) = squall_wire::decode_all(&buf, 1 << 24);
    frames.into_iter().find_map(|f| match f {
        Frame::Error {
            fatal: true, error, ..
        } => Some(error.kind),
        _ => None,
    })
}

/// A well-behaved client: subscribes, publishes, receives. Proves the server is unaffected.
async fn healthy_round_trip(addr: std::net::SocketAddr, subject: &str) {
    let mut f = connect(addr).await;
    let sub = Subscription::new(subject).unwrap();
    f.send(Frame::Subscribe(Box::new(Subscribe {
        request_id: 1,
        sub_id: 7,
        subscription: sub,
        credit: 10,
    })))
    .await
    .unwrap();
    // The server's keepalive may come first (it pings idle connections), so pings are skipped.
    let r = loop {
        match tokio::time::timeout(WAIT, f.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Frame::Ping(_) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(
            r,
            Frame::SubscribeResult {
                request_id: 1,
                result: Ok(())
            }
        ),
        "{r:?}"
    );
    let m = Message::builder(subject).unwrap().payload("fine").build();
    f.send(Frame::Publish(vec![PublishItem {
        request_id: 2,
        message: m,
    }]))
    .await
    .unwrap();
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        match tokio::time::timeout(WAIT, f.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Frame::PublishAcks(a) => {
                assert!(a[0].result.is_ok(), "{a:?}");
                acked = true;
            }
            Frame::Deliver(d) => {
                assert_eq!(&d[0].message.payload()[..], b"fine");
                delivered = true;
            }
            Frame::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_input_closes_only_the_bad_connection() {
    let (addr, stop, task) = start(ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    // A healthy client stays connected through all of it.
    let mut bystander = connect(addr).await;

    // 1. Random bytes before Hello.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 9, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    assert_eq!(
        fatal_error_then_close(&mut s).await,
        Some(ErrorKind::Protocol)
    );

    // 2. An oversized length field: refused before the body is read.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(
        fatal_error_then_close(&mut s).await,
        Some(ErrorKind::Protocol)
    );

    // 3. A truncated frame, then silence: the handshake times out.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 40, 0x01]).await.unwrap();
    assert_eq!(
        fatal_error_then_close(&mut s).await,
        Some(ErrorKind::Timeout)
    );

    // 4. A valid session, then a publish with an invalid subject forged at the byte level.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    squall_wire::encode(&hello(), &mut buf, 1 << 20).unwrap();
    let m = Message::builder("ok.subject").unwrap().build();
    let mut publish = BytesMut::new();
    squall_wire::encode(
        &Frame::Publish(vec![PublishItem {
            request_id: 1,
            message: m,
        }]),
        &mut publish,
        1 << 20,
    )
    .unwrap();
    let at = publish
        .windows(10)
        .position(|w| w == b"ok.subject")
        .unwrap();
    publish[at + 2] = b'*';
    buf.put(publish);
    s.write_all(&buf).await.unwrap();
    assert_eq!(
        fatal_error_then_close(&mut s).await,
        Some(ErrorKind::Protocol)
    );

    // 5. A frame only servers send.
    let mut f = connect(addr).await;
    f.send(Frame::Deliver(vec![])).await.unwrap();
    let mut s = f.into_inner();
    assert_eq!(
        fatal_error_then_close(&mut s).await,
        Some(ErrorKind::Protocol)
    );

    // 6. An unsupported protocol version.
    let mut f = Framed::new(TcpStream::connect(addr).await.unwrap(), Codec::default());
    f.send(Frame::Hello(Hello {
        version: 99,
        min_version: 99,
        client_name: "future".into(),
        token: String::new(),
    }))
    .await
    .unwrap();
    let mut s = f.into_inner();
    assert_eq!(
        fatal_error_then_close(&mut s).await,
        Some(ErrorKind::Unsupported)
    );

    // 7. Many connections of pure noise at once.
    let mut noisy = Vec::new();
    for i in 0..32u8 {
        noisy.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let junk: Vec<u8> = (0..512u32)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                .collect();
            let _ = s.write_all(&junk).await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut sink))
                .await
                .expect("closed");
        }));
    }
    for n in noisy {
        n.await.unwrap();
    }

    // The bystander's session still works, and new clients are served.
    bystander.send(Frame::Ping(42)).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, bystander.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Frame::Pong(42) => break,
            Frame::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    healthy_round_trip(addr, "after.storm").await;
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_a_reason() {
    let (addr, stop, task) = start(ServerConfig {
        max_connections: 1,
        ..Default::default()
    })
    .await;
    let _first = connect(addr).await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        fatal_error_then_close(&mut second).await,
        Some(ErrorKind::InvalidConfig)
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_says_goodbye_and_confirms_what_it_accepted() {
    let (addr, stop, task) = start(ServerConfig::default()).await;
    let mut f = connect(addr).await;
    let items = (0..100)
        .map(|i| PublishItem {
            request_id: i,
            message: Message::builder("bye.x").unwrap().build(),
        })
        .collect();
    f.send(Frame::Publish(items)).await.unwrap();
    let mut confirmed = 0;
    while confirmed < 100 {
        if let Frame::PublishAcks(a) = tokio::time::timeout(WAIT, f.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            confirmed += a.iter().filter(|a| a.result.is_ok()).count();
        }
    }
    stop.cancel();
    let mut saw_goodbye = false;
    while let Some(Ok(frame)) = tokio::time::timeout(WAIT, f.next()).await.unwrap() {
        saw_goodbye |= matches!(frame, Frame::Goodbye(_));
    }
    assert!(saw_goodbye, "clients are told before the connection closes");
    task.await.unwrap();
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let (addr, stop, task) = start(ServerConfig {
        token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let mut f = Framed::new(TcpStream::connect(addr).await.unwrap(), Codec::default());
    f.send(hello()).await.unwrap();
    let mut s = f.into_inner();
    assert_eq!(
        fatal_error_then_close(&mut s).await,
        Some(ErrorKind::InvalidConfig)
    );
    let mut f = Framed::new(TcpStream::connect(addr).await.unwrap(), Codec::default());
    f.send(Frame::Hello(Hello {
        version: 1,
        min_version: 1,
        client_name: "t".into(),
        token: "s3cret".into(),
    }))
    .await
    .unwrap();
    assert!(matches!(
        f.next().await.unwrap().unwrap(),
        Frame::Welcome(_)
    ));
    stop.cancel();
    task.await.unwrap();
}
