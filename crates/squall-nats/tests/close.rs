//! Closing lets go of the connection: once a JetStream backend and its consumer are closed and
//! dropped, nothing of them stays connected, also when the link was reset, or down for 2 s with a
//! delivery held, while they were open.
//! Counted at a fault proxy (the chaos lab's) in front of the server, which knows how many
//! connections pass it.

mod support;

use std::time::Duration;

use squall_core::{Message, Publisher, Subscriber, Subscription};
use squall_nats::NatsBackend;
use squall_testkit::peers::eventually_async;
use support::{JS_TEST_OPTIONS, Scope, nats_url, proxied, tag, with_options};

const N: usize = 20;

async fn closed_backend_leaves_nothing(cut: Cut) {
    let Some(base) = nats_url() else { return };
    let (proxy, proxied) = proxied(&base, "close").await;
    let scope = Scope::new(&base, JS_TEST_OPTIONS);
    let b = NatsBackend::connect_url(&with_options(&proxied, JS_TEST_OPTIONS))
        .await
        .expect("connecting through the proxy");
    let subject = format!("t.close.{}", tag());
    let mut c = b
        .subscribe(
            Subscription::new(subject.as_str())
                .unwrap()
                .group("g")
                .unwrap(),
        )
        .await
        .expect("subscribing");
    for i in 0..N {
        b.publish(
            Message::builder(&subject)
                .unwrap()
                .payload(i.to_string())
                .build(),
        )
        .await
        .expect("publishing");
    }
    for _ in 0..N / 2 {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("a delivery within 10 s")
            .expect("the consumer is open")
            .expect("a delivery");
        d.ack().await.expect("acking");
    }
    if cut == Cut::Down {
        // The link goes down while the consumer's pull is open and deliveries are held.
        let held = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("a delivery within 10 s")
            .expect("the consumer is open")
            .expect("a delivery");
        proxy.down().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.up().await.expect("the proxy back up");
        drop(held);
    }
    if cut != Cut::None {
        proxy.reset_connections();
        let again = eventually_async(Duration::from_secs(20), Duration::from_millis(100), || {
            let (b, m) = (
                b.clone(),
                Message::builder(&subject).unwrap().payload("after").build(),
            );
            async move { b.publish(m).await.is_ok() }
        })
        .await;
        assert!(again, "publishing again after the cut");
    }
    assert!(
        proxy.stats().active >= 1,
        "the backend's connection passes the proxy"
    );
    c.close().await.expect("closing the consumer");
    b.close().await.expect("closing the backend");
    for s in b.streams() {
        scope.also_delete(&s);
    }
    drop(c);
    drop(b);
    let gone = proxy.until_idle(Duration::from_secs(15)).await;
    let left = proxy.stats().active;
    proxy.stop().await;
    assert!(
        gone,
        "{left} connection(s) still open 15 s after the backend and its consumer were closed and dropped"
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    None,
    Reset,
    Down,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_backend_leaves_no_connection_behind() {
    closed_backend_leaves_nothing(Cut::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_backend_leaves_no_connection_behind_after_a_cut() {
    closed_backend_leaves_nothing(Cut::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_backend_leaves_no_connection_behind_after_an_outage() {
    closed_backend_leaves_nothing(Cut::Down).await;
}
