//! Request-reply: a user lookup service answers on `user.info`, a client asks with a timeout.
//!
//! The articles' NATS `replyServer` answers `User info for <id>` and `requestClient` calls
//! `nc.Request("user.info", "123", 2*time.Second)`. Here the service is a group on the embedded
//! broker (fsync log in a temp directory; run several and they share the load) that answers each
//! request with `Message::reply_to` — addressed to the request's reply subject and carrying its
//! correlation id — and acks it. The client's `request` waits at most its timeout; a request to a
//! subject nobody serves fails at once with `NoResponders` instead of waiting the timeout out.
//!
//! Run: `cargo run -p squall --example request_reply`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use squall::broker::Broker;
use squall::broker::storage::{LogConfig, LogStorage, SyncMode};
use squall::prelude::*;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        sync: SyncMode::Fsync,
        ..LogConfig::default()
    };
    let broker = Broker::builder()
        .storage(LogStorage::open(dir.path(), config)?)
        .open()?;

    // The user service.
    let users: HashMap<&str, &str> = [("123", "Alice"), ("456", "Bob")].into();
    let mut requests = broker
        .subscribe(Subscription::new("user.info")?.group("user-service")?)
        .await?;
    let stop = CancellationToken::new();
    let service = {
        let (broker, stop) = (broker.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = requests.next() => match r {
                        Some(r) => r?,
                        None => break,
                    },
                };
                let id = String::from_utf8_lossy(req.message().payload()).into_owned();
                let answer = match users.get(id.as_str()) {
                    Some(name) => format!("User info for {id}: {name}"),
                    None => format!("No user {id}"),
                };
                broker
                    .publish(Message::reply_to(req.message(), answer)?)
                    .await?;
                req.ack().await?;
            }
            requests.close().await?;
            Ok::<(), squall::Error>(())
        })
    };

    // The client.
    let mut answered = 0;
    for id in ["123", "456", "789"] {
        let ask = Message::builder("user.info")?.payload(id).build();
        let reply = broker.request(ask, Duration::from_secs(2)).await?;
        println!(
            "request {id}: {} (correlation id {})",
            String::from_utf8_lossy(reply.payload()),
            reply.correlation_id().unwrap_or("-")
        );
        answered += 1;
    }
    let started = Instant::now();
    let nobody = Message::builder("user.nobody")?.payload("123").build();
    let refused = match broker.request(nobody, Duration::from_secs(2)).await {
        Err(e) if e.kind() == ErrorKind::NoResponders => {
            println!(
                "request to user.nobody: {e} (after {:?}, not the 2 s timeout)",
                started.elapsed()
            );
            1
        }
        other => return Err(format!("expected NoResponders, got {other:?}").into()),
    };

    stop.cancel();
    service.await??;
    broker.close().await?;
    println!(
        "request_reply: {answered} requests answered, {refused} refused at once (no responders)"
    );
    Ok(())
}
