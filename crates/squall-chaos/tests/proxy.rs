//! The TCP fault proxy for real: an echo server on 127.0.0.1 behind it, real sockets, real time.
//! Every wait is bounded; transfers are bounded in size.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use squall_chaos::probe;
use squall_chaos::proxy::api::{ProxyApi, loopback};
use squall_chaos::proxy::{Direction, FaultKind, Proxy, ProxyFault, ProxyHandle};
use squall_chaos::rng::Seed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(10);

/// An echo server: copies every connection's bytes back, closes when the client does.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind(loopback(0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn proxy_to_echo() -> ProxyHandle {
    let echo = echo_server().await;
    Proxy::start(loopback(0), echo.to_string()).await.unwrap()
}

async fn connect(p: &ProxyHandle) -> TcpStream {
    let s = tokio::time::timeout(T, TcpStream::connect(p.listen_addr()))
        .await
        .unwrap()
        .unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Writes `data` and reads the same number of bytes back, returning them and the time taken.
async fn round_trip(s: &mut TcpStream, data: &[u8]) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    let (mut r, mut w) = s.split();
    let write = async { w.write_all(data).await.unwrap() };
    let read = async {
        let mut buf = vec![0u8; data.len()];
        r.read_exact(&mut buf).await.unwrap();
        buf
    };
    let (_, buf) = tokio::time::timeout(T, async { tokio::join!(write, read) })
        .await
        .expect("echo in time");
    (buf, t0.elapsed())
}

/// Reads until EOF or error, within `T`; true if the connection ended (reset or EOF).
async fn ends(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(T, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pass_through_intact_both_ways() {
    let p = proxy_to_echo().await;
    let mut s = connect(&p).await;
    let data = pattern(300_000);
    let (back, _) = round_trip(&mut s, &data).await;
    assert!(
        back == data,
        "echo through the proxy must be byte-identical"
    );
    let st = p.stats();
    assert_eq!((st.accepted, st.active), (1, 1));
    assert_eq!((st.bytes_up, st.bytes_down), (300_000, 300_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_each_direction_by_at_least_the_configured_time() {
    let p = proxy_to_echo().await;
    let mut s = connect(&p).await;
    let (_, base) = round_trip(&mut s, b"ping").await;
    p.add_fault(ProxyFault::new(
        "lag",
        FaultKind::Latency {
            latency: Duration::from_millis(150),
            jitter: Duration::from_millis(20),
        },
    ))
    .unwrap();
    for _ in 0..3 {
        let (back, took) = round_trip(&mut s, b"ping").await;
        assert_eq!(back, b"ping");
        // Both directions: at least 2 × (150 - 20) ms.
        assert!(
            took >= Duration::from_millis(260),
            "round trip {took:?} under the configured latency"
        );
    }
    assert!(p.remove_fault("lag"));
    let (_, after) = round_trip(&mut s, b"ping").await;
    assert!(
        after < Duration::from_millis(200),
        "latency removed, yet {after:?} (baseline {base:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_is_limited_within_tolerance() {
    let p = proxy_to_echo().await;
    let rate = 100_000u64;
    p.add_fault(
        ProxyFault::new(
            "narrow",
            FaultKind::Bandwidth {
                bytes_per_sec: rate,
            },
        )
        .direction(Direction::Downstream),
    )
    .unwrap();
    let mut s = connect(&p).await;
    let n = 200_000usize;
    let data = pattern(n);
    let (back, took) = round_trip(&mut s, &data).await;
    assert!(back == data);
    let expected = n as f64 / rate as f64; // 2 s
    let secs = took.as_secs_f64();
    assert!(
        secs >= expected * 0.85 && secs <= expected * 1.6,
        "{n} bytes at {rate} B/s took {secs:.2}s, expected about {expected:.2}s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_holds_data_until_removed_then_delivers_it_intact() {
    let p = proxy_to_echo().await;
    let mut s = connect(&p).await;
    round_trip(&mut s, b"warm").await;
    p.add_fault(ProxyFault::new("hole", FaultKind::Blackhole))
        .unwrap();
    s.write_all(b"lost?").await.unwrap();
    let mut buf = [0u8; 5];
    let r = tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf)).await;
    assert!(r.is_err(), "a blackholed connection must not answer");
    assert_eq!(p.stats().active, 1, "the connection stays open");
    p.remove_fault("hole");
    tokio::time::timeout(T, s.read_exact(&mut buf))
        .await
        .expect("flows again")
        .unwrap();
    assert_eq!(&buf, b"lost?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_idle_returns_once_the_last_connection_ends() {
    let p = proxy_to_echo().await;
    assert!(
        p.until_idle(Duration::ZERO).await,
        "idle before any connection"
    );
    let mut s = connect(&p).await;
    round_trip(&mut s, b"warm").await;
    assert!(
        !p.until_idle(Duration::from_millis(100)).await,
        "a connection is open"
    );
    let waiting = {
        let p = p.clone();
        tokio::spawn(async move { p.until_idle(T).await })
    };
    drop(s);
    assert!(waiting.await.unwrap(), "idle once the client closed");
    assert_eq!(p.stats().active, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_cuts_existing_connections_and_refuses_new_ones_while_installed() {
    let p = proxy_to_echo().await;
    let mut s = connect(&p).await;
    round_trip(&mut s, b"warm").await;
    p.add_fault(ProxyFault::new("rst", FaultKind::Reset))
        .unwrap();
    assert!(
        ends(&mut s).await,
        "an existing connection must see a reset or EOF"
    );
    // The reset may even beat the end of connect.
    if let Ok(Ok(mut s2)) = tokio::time::timeout(T, TcpStream::connect(p.listen_addr())).await {
        let _ = s2.write_all(b"x").await;
        assert!(ends(&mut s2).await, "a new connection is reset at once");
    }
    assert!(p.stats().refused >= 1);
    p.remove_fault("rst");
    let mut s3 = connect(&p).await;
    assert_eq!(round_trip(&mut s3, b"back").await.0, b"back");
    // A one-shot reset of the current connections.
    p.reset_connections();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(T, s3.read(&mut buf))
        .await
        .expect("the reset arrives");
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            || matches!(r, Ok(0)),
        "expected a reset, got {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_refuses_and_cuts_then_up_serves_again_on_the_same_port() {
    let p = proxy_to_echo().await;
    let mut s = connect(&p).await;
    round_trip(&mut s, b"warm").await;
    p.down().await;
    assert!(p.is_down());
    assert!(ends(&mut s).await, "down cuts existing connections");
    assert!(
        TcpStream::connect(p.listen_addr()).await.is_err(),
        "down refuses new connections"
    );
    p.up().await.unwrap();
    let mut s2 = connect(&p).await;
    assert_eq!(round_trip(&mut s2, b"again").await.0, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slicing_and_slow_close_keep_data_intact_but_take_their_time() {
    let p = proxy_to_echo().await;
    p.add_fault(
        ProxyFault::new(
            "slices",
            FaultKind::Slicer {
                average: 64,
                variation: 32,
                delay: Duration::from_millis(2),
            },
        )
        .direction(Direction::Upstream),
    )
    .unwrap();
    p.add_fault(
        ProxyFault::new(
            "late-fin",
            FaultKind::SlowClose {
                delay: Duration::from_millis(300),
            },
        )
        .direction(Direction::Downstream),
    )
    .unwrap();
    let mut s = connect(&p).await;
    let data = pattern(4096);
    let (back, took) = round_trip(&mut s, &data).await;
    assert!(back == data, "sliced data must arrive intact");
    // 4096 bytes in pieces of at most 96 bytes: at least 42 pieces, 41 pauses of 2 ms.
    assert!(
        took >= Duration::from_millis(80),
        "slicing took only {took:?}"
    );
    let t0 = Instant::now();
    s.shutdown().await.unwrap();
    assert!(ends(&mut s).await);
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "the close came back after {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_bound_resets_extra_clients() {
    let echo = echo_server().await;
    let p = Proxy::new(loopback(0), echo.to_string())
        .max_connections(1)
        .spawn()
        .await
        .unwrap();
    let mut a = connect(&p).await;
    round_trip(&mut a, b"one").await;
    // Over the bound: reset at accept (the reset may even beat the end of connect).
    if let Ok(Ok(mut b)) = tokio::time::timeout(T, TcpStream::connect(p.listen_addr())).await {
        assert!(
            ends(&mut b).await,
            "the second connection is over the bound"
        );
    }
    assert_eq!(p.stats().refused, 1);
    assert_eq!(round_trip(&mut a, b"still").await.0, b"still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_creates_proxies_adds_faults_and_refuses_wrong_methods() {
    let echo = echo_server().await;
    let listener = TcpListener::bind(loopback(0)).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let api = ProxyApi::new(Seed::new(1));
    let server = tokio::spawn(api.clone().serve(listener, stop.clone()));
    let call = |m: &'static str, path: &str, body: Option<String>| {
        let url = format!("{base}{path}");
        async move { probe::http(m, &url, body.as_deref(), T).await.unwrap() }
    };

    let r = call(
        "POST",
        "/proxies",
        Some(format!(r#"{{"name":"echo","upstream":"{echo}"}}"#)),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let listen: SocketAddr = info["listen"].as_str().unwrap().parse().unwrap();
    assert!(
        listen.ip().is_loopback(),
        "proxies listen on loopback by default"
    );
    let dup = call(
        "POST",
        "/proxies",
        Some(format!(r#"{{"name":"echo","upstream":"{echo}"}}"#)),
    )
    .await;
    assert_eq!(dup.status, 409);
    let list = call("GET", "/proxies", None).await;
    assert!(
        list.status == 200 && list.body.contains("\"echo\""),
        "{list:?}"
    );

    let r = call(
        "POST",
        "/proxies/echo/faults",
        Some(r#"{"name":"lag","kind":"latency","latency":"120ms","direction":"upstream"}"#.into()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let p = api.get("echo").unwrap();
    let mut s = connect(&p).await;
    let (_, took) = round_trip(&mut s, b"ping").await;
    assert!(
        took >= Duration::from_millis(120),
        "fault added over HTTP must act: {took:?}"
    );
    let bad = call(
        "POST",
        "/proxies/echo/faults",
        Some(r#"{"name":"x","kind":"warp"}"#.into()),
    )
    .await;
    assert!(
        bad.status == 400 || bad.status == 422,
        "unknown kind refused: {bad:?}"
    );
    assert_eq!(
        call("DELETE", "/proxies/echo/faults/lag", None)
            .await
            .status,
        204
    );
    assert_eq!(
        call("DELETE", "/proxies/echo/faults/lag", None)
            .await
            .status,
        404
    );

    assert_eq!(call("POST", "/proxies/echo/down", None).await.status, 200);
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "down over HTTP refuses connections"
    );
    assert_eq!(call("POST", "/proxies/echo/up", None).await.status, 200);
    let mut s = connect(&p).await;
    assert_eq!(round_trip(&mut s, b"up").await.0, b"up");
    call(
        "POST",
        "/proxies/echo/faults",
        Some(r#"{"name":"hole","kind":"blackhole"}"#.into()),
    )
    .await;
    assert_eq!(call("POST", "/reset", None).await.status, 204);
    assert!(p.faults().is_empty(), "reset removes every fault");

    for (m, path) in [
        ("PUT", "/proxies"),
        ("GET", "/reset"),
        ("GET", "/proxies/echo/down"),
        ("PATCH", "/proxies/echo"),
    ] {
        assert_eq!(
            call(m, path, None).await.status,
            405,
            "{m} {path} must be refused"
        );
    }
    assert_eq!(call("GET", "/proxies/nope", None).await.status, 404);
    assert_eq!(call("DELETE", "/proxies/echo", None).await.status, 204);
    assert!(api.get("echo").is_none());

    stop.cancel();
    tokio::time::timeout(T, server)
        .await
        .expect("the API stops")
        .unwrap()
        .unwrap();
}

/// A reset drops what a blackhole held, also when the blackhole goes right after the cut and the
/// connection is busy (its task is being polled as the two come): nothing held reaches the
/// client. 20 rounds; each a client writing without pause to an echo server whose answers the
/// blackhole holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_blackhole_held_passes_after_a_reset() {
    for round in 0..20 {
        let p = proxy_to_echo().await;
        let mut s = connect(&p).await;
        round_trip(&mut s, b"warm").await;
        let (mut rd, mut wr) = s.into_split();
        p.add_fault(ProxyFault::new("hole", FaultKind::Blackhole).direction(Direction::Downstream))
            .unwrap();
        let writing = tokio::spawn(async move {
            let chunk = [7u8; 64];
            while wr.write_all(&chunk).await.is_ok() {
                tokio::task::yield_now().await;
            }
        });
        let deadline = Instant::now() + T;
        while p.stats().bytes_up < 4 + 64 * 50 {
            assert!(
                Instant::now() < deadline,
                "the client's data passes upstream"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        p.reset_connections();
        p.clear_faults();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(T, rd.read(&mut buf))
            .await
            .expect("the reset arrives");
        writing.abort();
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "round {round}: {r:?}: bytes held by the blackhole passed after the reset"
        );
        p.stop().await;
    }
}
