//! Connection handling through a real server crash: a private `nats-server` (JetStream on a
//! temporary directory, on a free port of 127.0.0.1) started by this test, killed with SIGKILL
//! and started again on the same port and storage. The adapter's connection reconnects by
//! itself; a durable group redelivers exactly its unacked messages and takes new ones; a core
//! NATS subscription is restored and receives what is published after the restart.
//!
//! The shared server at `SQUALL_NATS_URL` is never touched. Without a `nats-server` binary the
//! tests print a notice and pass (with `SQUALL_REQUIRE_PEERS=1` they fail instead).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use squall_core::{Consumer, Delivery, Message, Publisher, Subscriber, Subscription};
use squall_nats::NatsBackend;
use tokio::time::Instant;

/// A nats-server this test started, stopped only by its own PID.
struct PrivateServer {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateServer {
    fn find() -> Option<PathBuf> {
        let candidates = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")]);
        for dir in candidates {
            let bin = dir.join("nats-server");
            if bin.is_file() {
                return Some(bin);
            }
        }
        assert!(
            !squall_testkit::peers_required(),
            "no nats-server binary and SQUALL_REQUIRE_PEERS=1"
        );
        println!("SKIP: no nats-server binary; not testing restarts");
        None
    }

    async fn start() -> Option<PrivateServer> {
        let bin = Self::find()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let mut s = PrivateServer {
            bin,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        s.spawn().await;
        Some(s)
    }

    async fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the server shuts down cleanly, writing its consumers' state.
    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Stops the server (cleanly, or by SIGKILL) and starts it on the same port and storage.
    async fn restart(&mut self, crash: bool) {
        if crash {
            self.kill();
        } else {
            self.terminate();
        }
        self.spawn().await;
    }

    fn url(&self, options: &str) -> String {
        format!("nats://127.0.0.1:{}?{options}", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn msg(subject: &str, id: &str) -> Message {
    Message::builder(subject)
        .and_then(|b| b.id(id))
        .expect("message")
        .payload(id.to_string())
        .build()
}

/// Publishes until the server confirms, within `limit` (the client reconnects meanwhile).
async fn publish_eventually(b: &NatsBackend, m: Message, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match b.publish(m.clone()).await {
            Ok(_) => return,
            Err(e) => {
                assert!(e.is_retryable(), "a non-retryable error: {e}");
                assert!(
                    Instant::now() < deadline,
                    "not confirmed within {limit:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Receives until `want` deliveries arrived or `limit` passed, skipping (and counting) the
/// errors a consumer reports while disconnected.
async fn receive(c: &mut dyn Consumer, want: usize, limit: Duration) -> (Vec<Delivery>, usize) {
    let deadline = Instant::now() + limit;
    let (mut got, mut errors) = (Vec::new(), 0);
    while got.len() < want {
        match tokio::time::timeout_at(deadline, c.next()).await {
            Ok(Some(Ok(d))) => got.push(d),
            Ok(Some(Err(_))) => errors += 1,
            Ok(None) | Err(_) => break,
        }
    }
    (got, errors)
}

/// Publishes 6, acks 3, holds 3, restarts the server, publishes 2 more; returns how many
/// deliveries of each id arrived after the restart, and the ids acked before it.
async fn durable_group_across_restart(
    crash: bool,
) -> Option<(HashMap<String, u32>, HashSet<String>)> {
    let mut server = PrivateServer::start().await?;
    let b = NatsBackend::connect_url(&server.url("jetstream=1&api_timeout=1s&pull_expires=1s"))
        .await
        .expect("connect");
    let ack_wait = Duration::from_secs(2);
    let sub = Subscription::new("orders.>")
        .and_then(|s| s.group("billing"))
        .expect("sub")
        .durable(true)
        .ack_wait(ack_wait);
    let mut c = b.subscribe(sub).await.expect("subscribe");
    for i in 0..6 {
        let ack = b
            .publish(msg("orders.created", &format!("o-{i}")))
            .await
            .expect("publish");
        assert_eq!(ack.durability, squall_core::Durability::Written);
    }
    let (mut got, _) = receive(c.as_mut(), 6, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 6, "before the restart");
    let mut acked = HashSet::new();
    for d in got.drain(..3) {
        acked.insert(d.message().id().to_string());
        d.ack().await.expect("ack before the restart");
    }
    drop(got);

    server.restart(crash).await;

    for i in 0..2 {
        publish_eventually(
            &b,
            msg("orders.created", &format!("after-{i}")),
            Duration::from_secs(15),
        )
        .await;
    }
    // Everything not acked comes within a lease plus the reconnect; then stay a lease longer
    // to see duplicates.
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut errors = 0;
    loop {
        let want_all = ["o-3", "o-4", "o-5", "after-0", "after-1"]
            .iter()
            .all(|id| seen.contains_key(*id));
        let until = if want_all {
            (Instant::now() + ack_wait * 2).min(deadline)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, c.next()).await {
            Ok(Some(Ok(d))) => {
                let id = d.message().id().to_string();
                // After a crash the consumer's delivery counts may be lost with its state.
                if id.starts_with("o-") && !crash {
                    assert!(d.attempt() >= 2, "{id} arrives as attempt {}", d.attempt());
                }
                *seen.entry(id).or_default() += 1;
                d.ack().await.expect("ack after the restart");
            }
            Ok(Some(Err(_))) => errors += 1,
            Ok(None) | Err(_) => break,
        }
    }
    assert!(errors <= 3, "{errors} errors reported for one outage");
    b.close().await.expect("close flushes");
    Some((seen, acked))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_group_survives_a_clean_restart_exactly() {
    let Some((seen, acked)) = durable_group_across_restart(false).await else {
        return;
    };
    let want: HashMap<String, u32> = ["o-3", "o-4", "o-5", "after-0", "after-1"]
        .iter()
        .map(|id| (id.to_string(), 1))
        .collect();
    assert_eq!(seen, want, "acked before the restart: {acked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_loses_nothing_unacked() {
    let Some((seen, acked)) = durable_group_across_restart(true).await else {
        return;
    };
    for id in ["o-3", "o-4", "o-5", "after-0", "after-1"] {
        assert_eq!(seen.get(id), Some(&1), "{id}: {seen:?}");
    }
    // JetStream writes consumer state lazily: after SIGKILL, acks (and delivery counts) of the
    // last moments can be forgotten and those messages delivered again (at-least-once).
    let again: Vec<&String> = seen.keys().filter(|id| acked.contains(*id)).collect();
    let published: HashSet<String> = (0..6)
        .map(|i| format!("o-{i}"))
        .chain(["after-0".to_string(), "after-1".to_string()])
        .collect();
    assert!(
        seen.keys().all(|id| published.contains(id)),
        "unexpected ids: {seen:?}"
    );
    println!(
        "after SIGKILL: {} of {} acked messages were delivered again",
        again.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_subscription_is_restored_after_a_server_crash() {
    let Some(mut server) = PrivateServer::start().await else {
        return;
    };
    let b = NatsBackend::connect_url(&server.url("api_timeout=1s"))
        .await
        .expect("connect");
    let mut c = b
        .subscribe(Subscription::new("news.>").expect("sub"))
        .await
        .expect("subscribe");
    b.publish(msg("news.a", "before")).await.expect("publish");
    let (got, _) = receive(c.as_mut(), 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    server.restart(true).await;
    // Wait until the connection (and the subscription with it) is back.
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.flush().await.is_err() {
        assert!(Instant::now() < deadline, "no reconnect within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.publish(msg("news.b", "after")).await.expect("publish");
    let (got, _) = receive(c.as_mut(), 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "nothing arrived after the restart");
    assert_eq!(got[0].message().id().as_str(), "after");
}

/// A pull request the restarted server forgot is asked again as soon as the connection is
/// back, not once its `pull_expires` (60 s here) has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_the_restarted_server_forgot_is_asked_again_at_once() {
    let Some(mut server) = PrivateServer::start().await else {
        return;
    };
    let url = server
        .url("jetstream=1&api_timeout=1s&pull_expires=60s&group_expiry=10m&fanout_expiry=10m");
    let b = NatsBackend::connect_url(&url).await.expect("connect");
    let sub = Subscription::new("jobs.>")
        .and_then(|s| s.group("workers"))
        .expect("sub")
        .durable(true);
    let mut c = b.subscribe(sub).await.expect("subscribe");
    b.publish(msg("jobs.a", "before")).await.expect("publish");
    let (got, _) = receive(c.as_mut(), 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "before the restart");
    for d in got {
        d.ack().await.expect("ack before the restart");
    }
    // The consumer's pull request (up to 60 s) is open on the server that now goes away.
    server.restart(false).await;
    publish_eventually(&b, msg("jobs.a", "after"), Duration::from_secs(15)).await;
    let (got, errors) = receive(c.as_mut(), 1, Duration::from_secs(20)).await;
    assert_eq!(
        got.iter()
            .map(|d| d.message().id().to_string())
            .collect::<Vec<_>>(),
        ["after"],
        "what was published after the restart waited for the forgotten pull to expire \
         ({errors} errors reported meanwhile)"
    );
    b.close().await.expect("close");
}
