//! The fault proxy in front of the machine's real brokers, speaking their raw protocols:
//! NATS (`SQUALL_NATS_URL`, e.g. `nats://127.0.0.1:4222`) and RabbitMQ (`SQUALL_AMQP_URL`,
//! `host:port` or an `amqp://` URL). Each test prints a notice and returns when its variable is
//! unset, and fails instead when `SQUALL_REQUIRE_PEERS=1`.

use std::time::{Duration, Instant};

use squall_chaos::proxy::api::loopback;
use squall_chaos::proxy::{Direction, FaultKind, Proxy, ProxyFault, ProxyHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// `host:port` from `var`, or `None` (with a notice) when unset and not required.
fn peer(var: &str, default_port: u16) -> Option<String> {
    squall_testkit::peer_url(var, "the proxy against this broker")
        .map(|u| host_port(&u, default_port))
}

/// `nats://user:pw@host:port/x` or `host:port` → `host:port`.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hp = rest.split('/').next().unwrap_or(rest);
    if hp.contains(':') {
        hp.to_string()
    } else {
        format!("{hp}:{default_port}")
    }
}

async fn proxy(upstream: String) -> ProxyHandle {
    Proxy::new(loopback(0), upstream)
        .name("peer")
        .spawn()
        .await
        .unwrap()
}

/// Sends a PING and waits for the PONG, skipping other lines (`+OK`, `INFO` updates).
async fn ping(
    r: &mut BufReader<tokio::net::tcp::ReadHalf<'_>>,
    w: &mut tokio::net::tcp::WriteHalf<'_>,
    wait: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    w.write_all(b"PING\r\n").await.unwrap();
    let fut = async {
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                panic!("NATS closed the connection");
            }
            if line.starts_with("PONG") {
                return;
            }
        }
    };
    tokio::time::timeout(wait, fut)
        .await
        .ok()
        .map(|_| t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_speaks_through_the_proxy_and_suffers_its_faults() {
    let Some(upstream) = peer("SQUALL_NATS_URL", 4222) else {
        return;
    };
    let p = proxy(upstream).await;
    let mut s = tokio::time::timeout(T, TcpStream::connect(p.listen_addr()))
        .await
        .unwrap()
        .unwrap();
    let (r, mut w) = s.split();
    let mut r = BufReader::new(r);
    let mut info = String::new();
    tokio::time::timeout(T, r.read_line(&mut info))
        .await
        .expect("INFO in time")
        .unwrap();
    assert!(
        info.starts_with("INFO {"),
        "NATS greets with INFO, got {info:?}"
    );
    w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .await
        .unwrap();
    let base = ping(&mut r, &mut w, T)
        .await
        .expect("PONG through the proxy");

    p.add_fault(ProxyFault::new(
        "lag",
        FaultKind::Latency {
            latency: Duration::from_millis(100),
            jitter: Duration::ZERO,
        },
    ))
    .unwrap();
    let slow = ping(&mut r, &mut w, T).await.expect("PONG with latency");
    assert!(
        slow >= Duration::from_millis(200),
        "two directions of 100 ms, yet {slow:?} (baseline {base:?})"
    );
    p.clear_faults();

    p.add_fault(ProxyFault::new("hole", FaultKind::Blackhole).direction(Direction::Downstream))
        .unwrap();
    assert_eq!(
        ping(&mut r, &mut w, Duration::from_millis(500)).await,
        None,
        "a blackhole hides the PONG"
    );
    p.clear_faults();
    // The held PONG (and the next) arrive once the blackhole is gone.
    assert!(ping(&mut r, &mut w, T).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_answers_the_amqp_header_through_the_proxy() {
    let Some(upstream) = peer("SQUALL_AMQP_URL", 5672) else {
        return;
    };
    let p = proxy(upstream).await;
    let mut s = tokio::time::timeout(T, TcpStream::connect(p.listen_addr()))
        .await
        .unwrap()
        .unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let mut head = [0u8; 11];
    tokio::time::timeout(T, s.read_exact(&mut head))
        .await
        .expect("Connection.Start in time")
        .unwrap();
    assert_eq!(head[0], 1, "a method frame");
    assert_eq!(&head[1..3], &[0, 0], "on channel 0");
    assert_eq!(
        &head[7..11],
        &[0, 10, 0, 10],
        "Connection.Start is class 10, method 10"
    );

    // Reset: the broker connection is cut, the client sees it.
    p.reset_connections();
    // RabbitMQ waits for Start-Ok, so only the reset can end this stream (as an error, or as
    // EOF if the broker's own close wins the race): it must arrive in time.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut rest))
        .await
        .expect("the reset arrives");
    assert_eq!(p.stats().accepted, 1);
}

#[test]
fn peer_urls_reduce_to_host_and_port() {
    assert_eq!(host_port("nats://127.0.0.1:4222", 4222), "127.0.0.1:4222");
    assert_eq!(
        host_port("amqp://guest:guest@localhost:5673/%2f", 5672),
        "localhost:5673"
    );
    assert_eq!(host_port("127.0.0.1", 5672), "127.0.0.1:5672");
}
