//! The server dies while a publisher pipelines and a durable group consumes; it comes back on the
//! same port; the same client handles reconnect by themselves. Checked: every confirmed message
//! is delivered (no loss), a message is stored once (every delivery of an id has one sequence),
//! duplicates stay within what the crate documents (deliveries in flight at the cut), and
//! publishes during the outage fail at once or wait, as configured.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use squall_client::{Client, ClientConfig, WhenDisconnected};
use squall_core::{
    Consumer, ErrorKind, Message, PendingAck, PublishAck, Publisher, Subscriber, Subscription,
};
use support::{Proxy, TestServer, wait_reconnected, wait_state};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const N: usize = 2000;
const PREFETCH: u32 = 32;
const WITHIN: Duration = Duration::from_secs(20);

fn message(prefix: &str, i: usize) -> Message {
    Message::builder(format!("{prefix}.{}", i % 4))
        .unwrap()
        .id(format!("{prefix}-{i}"))
        .unwrap()
        .payload(format!("payload {i}"))
        .build()
}

fn via(server: &TestServer, proxy: Option<&Proxy>, mode: WhenDisconnected) -> ClientConfig {
    let mut c = server.client_config();
    if let Some(p) = proxy {
        c.addr = format!("squall://{}", p.addr);
    }
    c.when_disconnected = mode;
    c.prefetch = PREFETCH;
    c
}

/// Sends `N` messages, pipelined (acks awaited by a second task), paced so an outage falls
/// mid-stream. A send refused during the outage is retried once the client is connected again
/// (what an application does in `Fail` mode). Returns the refusals and, from the ack task, every
/// confirm; `confirmed` counts confirms as they arrive.
fn publish_all(
    client: Client,
    prefix: &'static str,
) -> (JoinHandle<usize>, JoinHandle<Acks>, watch::Receiver<usize>) {
    let (count, confirmed) = watch::channel(0usize);
    let (tx, mut rx) = mpsc::channel::<(String, PendingAck)>(N);
    let acks = tokio::spawn(async move {
        let mut out = Vec::with_capacity(N);
        while let Some((id, pending)) = rx.recv().await {
            let ack = pending.await;
            if ack.is_ok() {
                count.send_modify(|n| *n += 1);
            }
            out.push((id, ack));
        }
        out
    });
    let sends = tokio::spawn(async move {
        let mut refused = 0;
        for i in 0..N {
            let msg = message(prefix, i);
            let id = msg.id().to_string();
            let pending = loop {
                match client.send(msg.clone()).await {
                    Ok(p) => break p,
                    Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Full) => {
                        refused += 1;
                        wait_state(&client, WITHIN, |s| s.is_connected())
                            .await
                            .unwrap();
                    }
                    Err(e) => panic!("sending {id}: {e}"),
                }
            };
            tx.send((id, pending)).await.unwrap();
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        refused
    });
    (sends, acks, confirmed)
}

/// Every confirm, in send order: (id, outcome).
type Acks = Vec<(String, squall_core::Result<PublishAck>)>;

/// Every delivery: id → (sequence, attempt) of each time it arrived.
type Seen = HashMap<String, Vec<(u64, u32)>>;

/// Consumes and acks until every id of `target` (set once the publisher is done: the confirmed
/// ids) arrived. Acks refused with `LeaseExpired` (the connection was lost) are expected: the
/// message comes again.
fn consume(
    mut consumer: Box<dyn Consumer>,
    mut target: watch::Receiver<Option<HashSet<String>>>,
) -> JoinHandle<(Seen, usize)> {
    tokio::spawn(async move {
        let mut seen = Seen::new();
        let mut lost_acks = 0;
        let started = tokio::time::Instant::now();
        loop {
            if let Some(ids) = &*target.borrow_and_update()
                && ids.iter().all(|id| seen.contains_key(id))
            {
                return (seen, lost_acks);
            }
            let d = tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => panic!("consumer error: {e}"),
                    None => panic!("the consumer ended"),
                },
                _ = target.changed() => continue,
                () = tokio::time::sleep_until(started + WITHIN) => {
                    panic!("only {} ids arrived within {WITHIN:?}", seen.len())
                }
            };
            let entry = seen.entry(d.message().id().to_string()).or_default();
            entry.push((d.sequence(), d.attempt()));
            match d.ack().await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::LeaseExpired => lost_acks += 1,
                Err(e) => panic!("ack failed: {e}"),
            }
        }
    })
}

/// No loss, one stored copy per id, duplicates bounded by what was in flight.
fn check(prefix: &str, acks: &Acks, seen: &Seen) {
    assert_eq!(acks.len(), N);
    let mut resent = 0;
    for (id, ack) in acks {
        let ack = ack
            .as_ref()
            .unwrap_or_else(|e| panic!("{id} was not confirmed: {e}"));
        resent += ack.duplicate as usize;
        let deliveries = seen
            .get(id)
            .unwrap_or_else(|| panic!("{id} was confirmed, never delivered"));
        assert!(
            deliveries.iter().all(|(seq, _)| *seq == ack.sequence),
            "{id} stored more than once: acked as {}, delivered as {deliveries:?}",
            ack.sequence
        );
    }
    let duplicates: usize = seen.values().map(|d| d.len() - 1).sum();
    let unexpected = seen.keys().filter(|id| !id.starts_with(prefix)).count();
    assert_eq!(unexpected, 0, "deliveries of ids nobody published");
    assert!(
        duplicates <= 2 * PREFETCH as usize,
        "{duplicates} duplicate deliveries: more than the deliveries in flight at the outage"
    );
    println!(
        "{prefix}: {N} confirmed and delivered; {resent} re-sends acked as duplicates; {duplicates} redeliveries"
    );
}

async fn outage(mode: WhenDisconnected, abrupt: bool) {
    let prefix = match (mode, abrupt) {
        (WhenDisconnected::Fail, true) => "fail_abrupt",
        (WhenDisconnected::Wait, true) => "wait_abrupt",
        (WhenDisconnected::Fail, false) => "fail_graceful",
        (WhenDisconnected::Wait, false) => "wait_graceful",
    };
    let mut server = TestServer::start().await;
    let proxy = if abrupt {
        Some(Proxy::start(server.addr).await)
    } else {
        None
    };
    let publisher = Client::connect(via(&server, proxy.as_ref(), mode))
        .await
        .unwrap();
    let consumer_client = Client::connect(via(&server, proxy.as_ref(), mode))
        .await
        .unwrap();
    let sub = Subscription::new(format!("{prefix}.>"))
        .unwrap()
        .group("workers")
        .unwrap()
        .durable(true)
        .ack_wait(Duration::from_secs(1));
    let (target, targets) = watch::channel(None);
    let consuming = consume(consumer_client.subscribe(sub).await.unwrap(), targets);
    let (sending, acking, mut confirmed) = publish_all(publisher.clone(), prefix);
    timeout(WITHIN, confirmed.wait_for(|n| *n >= N / 4))
        .await
        .unwrap()
        .unwrap();

    // The outage: the server goes away (cut mid-flight, or shut down with Goodbye).
    let (p_before, c_before) = (publisher.reconnects(), consumer_client.reconnects());
    match &proxy {
        Some(p) => {
            p.cut().await;
            server.stop().await;
        }
        None => server.stop().await,
    }
    wait_state(&publisher, WITHIN, |s| !s.is_connected())
        .await
        .unwrap();
    let probe = message("probe", 0);
    let mut held = None;
    match mode {
        WhenDisconnected::Fail => {
            let err = publisher.send(probe).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        }
        WhenDisconnected::Wait => {
            let mut pending = publisher
                .send(probe)
                .await
                .expect("held while disconnected");
            let early = timeout(Duration::from_millis(100), &mut pending).await;
            assert!(
                early.is_err(),
                "confirmed while the server was down: {early:?}"
            );
            held = Some(pending);
        }
    }

    // The server comes back on the same port and storage.
    server.restart().await.unwrap();
    if let Some(p) = &proxy {
        p.revive();
    }
    wait_reconnected(&publisher, p_before, WITHIN)
        .await
        .unwrap();
    wait_reconnected(&consumer_client, c_before, WITHIN)
        .await
        .unwrap();
    if let Some(pending) = held {
        let ack = timeout(WITHIN, pending).await.unwrap().unwrap();
        assert!(!ack.duplicate, "the held probe was sent once");
    }

    let refused = sending.await.unwrap();
    let acks = acking.await.unwrap();
    let confirmed = acks
        .iter()
        .filter(|(_, a)| a.is_ok())
        .map(|(id, _)| id.clone());
    target.send_replace(Some(confirmed.collect()));
    let (seen, lost_acks) = consuming.await.unwrap();
    check(prefix, &acks, &seen);
    if mode == WhenDisconnected::Wait {
        assert_eq!(
            refused, 0,
            "in wait mode no send is refused (the buffer is large enough)"
        );
    }
    println!(
        "{prefix}: {refused} sends refused during the outage; {lost_acks} acks lost with the connection"
    );
    publisher.close().await.unwrap();
    consumer_client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_wait_mode_loses_nothing() {
    outage(WhenDisconnected::Wait, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_fail_mode_refuses_then_recovers() {
    outage(WhenDisconnected::Fail, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_in_wait_mode_loses_nothing() {
    outage(WhenDisconnected::Wait, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_in_fail_mode_refuses_then_recovers() {
    outage(WhenDisconnected::Fail, false).await;
}

/// Publishes stored by the server whose acks were lost are re-sent on the next connection and
/// acked as duplicates with the original sequence: stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_publishes_are_acked_as_duplicates_not_stored_twice() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let publisher = Client::connect(via(&server, Some(&proxy), WhenDisconnected::Wait))
        .await
        .unwrap();
    let sub = Subscription::new("dedup.>")
        .unwrap()
        .group("check")
        .unwrap();
    let mut check = server.broker.subscribe(sub).await.unwrap();
    proxy.mute_server(true);
    let mut pending = Vec::new();
    for i in 0..100 {
        pending.push(publisher.send(message("dedup", i)).await.unwrap());
    }
    let mut stored = HashMap::new();
    while stored.len() < 100 {
        let d = timeout(WITHIN, check.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        stored.insert(d.message().id().to_string(), d.sequence());
        d.ack().await.unwrap();
    }
    let before = publisher.reconnects();
    proxy.cut().await;
    proxy.mute_server(false);
    proxy.revive();
    wait_reconnected(&publisher, before, WITHIN).await.unwrap();
    let mut acks = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        let ack = timeout(WITHIN, p).await.unwrap().unwrap();
        acks.push((
            i,
            ack.duplicate,
            ack.sequence,
            stored[&format!("dedup-{i}")],
        ));
    }
    let wrong: Vec<_> = acks
        .iter()
        .filter(|(_, dup, seq, first)| !dup || seq != first)
        .collect();
    assert!(
        wrong.is_empty(),
        "every message was stored before the cut, so every re-send is a duplicate acked with \
         the original's sequence; (index, duplicate, acked sequence, stored sequence): {wrong:?}"
    );
    let again = timeout(Duration::from_millis(300), check.next()).await;
    assert!(
        again.is_err(),
        "a re-send was stored twice: {:?}",
        again.map(|d| d.map(|d| d.map(|d| d.sequence())))
    );
    publisher.close().await.unwrap();
}

/// With `max_attempts`, a client whose server never returns gives up: what it holds fails with
/// `Unavailable`, its consumers end, and its state is `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_fails_what_it_holds_and_closes() {
    let mut server = TestServer::start().await;
    let mut config = via(&server, None, WhenDisconnected::Wait);
    config.reconnect.max_attempts = Some(3);
    let client = Client::connect(config).await.unwrap();
    let mut consumer = client
        .subscribe(Subscription::new("gone.>").unwrap())
        .await
        .unwrap();
    server.stop().await;
    wait_state(&client, WITHIN, |s| !s.is_connected())
        .await
        .unwrap();
    let held = client.send(message("gone", 1)).await.unwrap();
    let err = timeout(WITHIN, held).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        err.to_string().contains("client.reconnect.max_attempts"),
        "{err}"
    );
    let ended = timeout(WITHIN, consumer.next()).await.unwrap();
    assert!(
        matches!(ended, Some(Err(_))),
        "the consumer hears why: {ended:?}"
    );
    assert!(
        timeout(WITHIN, consumer.next()).await.unwrap().is_none(),
        "then ends"
    );
    wait_state(&client, WITHIN, |s| {
        matches!(s, squall_client::ConnectionState::Closed)
    })
    .await
    .unwrap();
    let err = client.send(message("gone", 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
}
