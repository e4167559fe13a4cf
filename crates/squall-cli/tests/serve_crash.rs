//! `squall serve` (a real child process, fsync log storage) is SIGKILLed three times while one
//! client publishes and another consumes in a durable group. After each restart the same client
//! handles reconnect by themselves. Checks: every confirmed message is delivered (no loss), and
//! duplicates stay within the documented at-least-once window (counted and printed).

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use squall_client::{Client, ClientConfig, WhenDisconnected};
use squall_core::{Message, Publisher, Subscriber, Subscription};
use support::{free_port, spawn_serve as start};

const MESSAGES: u64 = 3000;
const KILLS: usize = 3;

fn config(port: u16) -> ClientConfig {
    let mut c = ClientConfig::from_url(&format!("squall://127.0.0.1:{port}")).unwrap();
    c.when_disconnected = WhenDisconnected::Wait;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port);
    let publisher = Client::connect(config(port)).await.unwrap();
    let consumer_client = Client::connect(config(port)).await.unwrap();
    let sub = Subscription::new("crash.>")
        .unwrap()
        .group("crash")
        .unwrap()
        .durable(true)
        .ack_wait(Duration::from_secs(3));
    let mut consumer = consumer_client.subscribe(sub).await.unwrap();

    let received: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let rx = received.clone();
    let consuming = tokio::spawn(async move {
        while let Some(d) = consumer.next().await {
            let Ok(d) = d else { continue };
            *rx.lock()
                .unwrap()
                .entry(d.message().id().to_string())
                .or_default() += 1;
            // An ack may fail across a restart (the lease died with the connection): the message is
            // then redelivered, which the duplicate count shows.
            let _ = d.ack().await;
        }
    });

    let confirmed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let conf = confirmed.clone();
    let p = publisher.clone();
    let producing = tokio::spawn(async move {
        let mut pending = std::collections::VecDeque::new();
        for i in 0..MESSAGES {
            let id = format!("m-{i}");
            let m = Message::builder(format!("crash.k{}", i % 7))
                .unwrap()
                .id(&id)
                .unwrap()
                .payload(vec![7u8; 512])
                .build();
            match p.send(m).await {
                Ok(ack) => pending.push_back((id, ack)),
                Err(e) => panic!("send {i} refused: {e}"),
            }
            if pending.len() >= 64 {
                let (id, ack) = pending.pop_front().unwrap();
                if ack.await.is_ok() {
                    conf.lock().unwrap().insert(id);
                }
            }
        }
        for (id, ack) in pending {
            if ack.await.is_ok() {
                conf.lock().unwrap().insert(id);
            }
        }
    });

    for kill in 0..KILLS {
        let target = (kill as u64 + 1) * MESSAGES / (KILLS as u64 + 2);
        let deadline = Instant::now() + Duration::from_secs(60);
        while (confirmed.lock().unwrap().len() as u64) < target {
            assert!(
                Instant::now() < deadline,
                "publishing stalled before kill {kill}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().unwrap();
        child = start(dir.path(), port);
    }
    tokio::time::timeout(Duration::from_secs(120), producing)
        .await
        .expect("publishing finished")
        .unwrap();

    let confirmed: HashSet<String> = confirmed.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = confirmed
            .iter()
            .filter(|id| !received.lock().unwrap().contains_key(*id))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} confirmed messages never delivered after {KILLS} SIGKILLs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received.lock().unwrap().clone();
    let duplicates: u32 = got.values().map(|n| n - 1).sum();
    println!(
        "{} confirmed of {MESSAGES}, all delivered; {} distinct received, {duplicates} duplicate deliveries, {} publisher reconnects, {} consumer reconnects",
        confirmed.len(),
        got.len(),
        publisher.reconnects(),
        consumer_client.reconnects()
    );
    assert_eq!(
        confirmed.len() as u64,
        MESSAGES,
        "with Wait mode every publish is eventually confirmed"
    );
    assert!(
        publisher.reconnects() >= KILLS as u64,
        "the publisher reconnected by itself after each kill"
    );
    // At-least-once: redeliveries come from leases held at the moment of a kill and acks lost with
    // it; bounded by what was in flight (prefetch 64 + unsynced progress per kill).
    assert!(
        duplicates <= (KILLS as u32) * 1000,
        "duplicates {duplicates} beyond the documented window"
    );
    consuming.abort();
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Two servers over one data directory would corrupt each other's segments: the second one must
/// refuse to start, exit non-zero and name the directory and the first server's PID.
#[test]
fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path(), free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args([
            "serve",
            "--admin",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .expect("running a second squall serve");
    first.kill().unwrap();
    first.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second server must fail: {stderr}"
    );
    assert!(
        stderr.contains(&format!("is in use by process {}", first.id())),
        "the error names the holder's PID: {stderr}"
    );
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "the error names the directory: {stderr}"
    );
}
