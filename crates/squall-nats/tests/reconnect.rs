//! A JetStream consumer whose connection is reset while its pull request is open on a server
//! that stays up (through the chaos lab's fault proxy): it pulls again on the new connection,
//! and what the server may still hold for the old request never brings more than
//! `max_in_flight` unsettled deliveries between them. (A server that restarted and forgot the
//! request is `restart.rs`'s.)

mod support;

use std::time::Duration;

use squall_core::{Delivery, Message, Publisher, Subscriber, Subscription};
use squall_nats::NatsBackend;
use squall_testkit::peers::eventually_async;
use support::{JS_TEST_OPTIONS, Scope, nats_url, proxied, tag, with_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_pulls_again_within_max_in_flight() {
    let Some(base) = nats_url() else { return };
    let (proxy, proxied) = proxied(&base, "reconnect").await;
    let scope = Scope::new(&base, JS_TEST_OPTIONS);
    // Pull requests that wait a minute: only a pull made after the reset answers in time.
    let options = format!("{JS_TEST_OPTIONS}&pull_expires=60s&group_expiry=10m&fanout_expiry=10m");
    let b = NatsBackend::connect_url(&with_options(&proxied, &options))
        .await
        .expect("connecting through the proxy");
    let subject = format!("t.reconnect.{}", tag());
    let sub = Subscription::new(subject.as_str())
        .and_then(|s| s.group("g"))
        .expect("subscription")
        .max_in_flight(2)
        .ack_wait(Duration::from_secs(30));
    let mut c = b.subscribe(sub).await.expect("subscribing");
    let m = |id: &str| {
        Message::builder(&subject)
            .and_then(|m| m.id(id))
            .expect("message")
            .payload(id.to_string())
            .build()
    };
    b.publish(m("first")).await.expect("publishing");
    next(c.as_mut()).await.ack().await.expect("acking");
    // The pull for two has brought one and stays open on the server for the other.
    proxy.reset_connections();
    for i in 0..6 {
        let (b, m) = (b.clone(), m(&format!("after-{i}")));
        let sent = eventually_async(Duration::from_secs(20), Duration::from_millis(100), || {
            let (b, m) = (b.clone(), m.clone());
            async move { b.publish(m).await.is_ok() }
        })
        .await;
        assert!(sent, "publishing after-{i} after the reset");
    }
    let held = [next(c.as_mut()).await, next(c.as_mut()).await];
    // Two are held unsettled: nothing more may come until one is settled.
    let third = tokio::time::timeout(Duration::from_secs(3), next(c.as_mut())).await;
    assert!(
        third.is_err(),
        "a third delivery with max_in_flight 2 and two held: {:?}",
        third.map(|d| d.message().id().to_string())
    );
    for d in held {
        d.ack().await.expect("acking");
    }
    c.close().await.expect("closing the consumer");
    b.close().await.expect("closing the backend");
    for s in b.streams() {
        scope.also_delete(&s);
    }
    proxy.stop().await;
}

/// The next delivery within 10 s, past the errors a consumer reports while disconnected.
async fn next(c: &mut dyn squall_core::Consumer) -> Delivery {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, c.next()).await {
            Ok(Some(Ok(d))) => return d,
            Ok(Some(Err(e))) => println!("reported while reconnecting: {e}"),
            Ok(None) => panic!("the consumer ended"),
            Err(_) => panic!("no delivery within 10 s"),
        }
    }
}
