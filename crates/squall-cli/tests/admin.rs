//! `squall serve`'s admin API over real HTTP: after `squall pub` published with fsync durability,
//! `GET /metrics` shows the publish counter, the connection gauge and the group-commit metrics
//! (fsyncs, their duration, messages per fsync) with values that match what was published, and
//! `GET /healthz` answers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.0 GET; returns (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The sum of a metric's samples (every label set), or `None` when it is absent.
fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        *found.get_or_insert(0.0) += value;
    }
    found
}

#[test]
fn metrics_show_publishes_connections_and_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_squall"))
            .args(["serve", "--sync", "fsync", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--data")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting squall serve"),
    );
    wait_listening(port);
    wait_listening(admin);

    let out = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["pub", "orders.created", "--count", "50", "--size", "100"])
        .arg("--server")
        .arg(format!("squall://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "squall pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (status, _) = get(admin, "/healthz");
    assert!(status.contains("200"), "/healthz: {status}");
    let (status, text) = get(admin, "/metrics");
    assert!(status.contains("200"), "/metrics: {status}");
    assert_eq!(
        metric(&text, "squall_published_total"),
        Some(50.0),
        "every publish counted:\n{text}"
    );
    assert!(
        metric(&text, "squall_connections").is_some(),
        "the connection gauge is exported:\n{text}"
    );
    let fsyncs = metric(&text, "squall_storage_fsyncs_total").expect("fsyncs counted");
    assert!(fsyncs >= 1.0, "at least one fsync for 50 fsync publishes");
    let batched = metric(&text, "squall_storage_fsync_batch_messages_sum")
        .expect("messages per fsync recorded");
    assert_eq!(
        batched, 50.0,
        "the batches add up to the messages published"
    );
    assert_eq!(
        metric(&text, "squall_storage_fsync_seconds_count"),
        Some(fsyncs),
        "one duration per fsync"
    );
    drop(server);
}
