//! Connection loss, through squall-chaos's TCP fault proxy in front of the real RabbitMQ: the
//! handle reconnects with backoff, consumers resubscribe and get what was unsettled again,
//! settling a delivery of the lost connection fails with `LeaseExpired`, and publishing while
//! disconnected fails fast with `Unavailable` and works again once the broker is reachable.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use squall_amqp::AmqpBackend;
use squall_chaos::proxy::api::loopback;
use squall_chaos::proxy::{Direction, FaultKind, Proxy, ProxyFault, ProxyHandle};
use squall_core::{ErrorKind, Message, Publisher, Subscriber, Subscription};
use squall_testkit::{Must, expect_err, recv};
use support::{Scope, amqp_url, eventually, with_options};

const T: Duration = Duration::from_secs(10);

fn msg(id: &str) -> Message {
    Message::builder("r.job")
        .unwrap()
        .id(id)
        .unwrap()
        .payload(id.to_string())
        .build()
}

/// A proxy to the scope's broker, and a handle through it on the scope's exchange that
/// reconnects with a backoff from 50 ms to `reconnect_max`.
async fn through_proxy(scope: &Scope, reconnect_max: &str) -> (ProxyHandle, AmqpBackend) {
    let u = url::Url::parse(&scope.base).unwrap();
    let upstream = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(5672));
    let proxy = Proxy::new(loopback(0), upstream)
        .name("amqp")
        .spawn()
        .await
        .expect("starting the proxy");
    let mut via = u;
    via.set_host(Some("127.0.0.1")).unwrap();
    via.set_port(Some(proxy.listen_addr().port())).unwrap();
    let opts = format!(
        "exchange={}&reconnect_min=50ms&reconnect_max={reconnect_max}",
        scope.exchange
    );
    let b = AmqpBackend::connect_url(&with_options(via.as_str(), &opts))
        .await
        .must("connecting through the proxy");
    (proxy, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_is_rebuilt_and_unsettled_messages_come_again() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "reconnect", "");
    let (proxy, b) = through_proxy(&scope, "500ms").await;
    // Registered for cleanup: the group queue is durable.
    let direct = scope.backend().await.must("connecting directly");
    let sub = Subscription::new("r.>")
        .unwrap()
        .group("workers")
        .unwrap()
        .durable(true)
        .max_in_flight(2);
    let _declare = direct
        .subscribe(sub.clone())
        .await
        .must("declaring the group");
    drop(_declare);
    let mut c = b.subscribe(sub).await.must("subscribing through the proxy");
    for id in ["a", "b", "c"] {
        b.publish(msg(id)).await.must("publishing");
    }
    let first = recv(c.as_mut(), T, "first").await;
    let second = recv(c.as_mut(), T, "second").await;
    let acked = first.message().id().to_string();
    first.ack().await.must("acking before the reset");

    proxy.reset_connections();
    assert!(
        eventually(T, || b.reconnects() >= 1).await,
        "no reconnect within {T:?}"
    );
    expect_err(
        second.ack().await,
        &[ErrorKind::LeaseExpired],
        "acking a delivery of the lost connection",
    );

    // Everything not acked before the reset arrives again, possibly after stale deliveries and
    // one `Unavailable` report. The message acked just before the reset may come again too: an
    // AMQP ack is not confirmed, so one in flight when the connection died can be lost
    // (at-least-once).
    let mut want: BTreeSet<String> = ["a", "b", "c"]
        .iter()
        .map(|s| s.to_string())
        .filter(|id| *id != acked)
        .collect();
    let mut again = 0;
    let mut reports = 0;
    let deadline = tokio::time::Instant::now() + T;
    while !want.is_empty() {
        let next = tokio::time::timeout_at(deadline, c.next())
            .await
            .unwrap_or_else(|_| panic!("still missing {want:?} after the reconnect"))
            .expect("the consumer stays open");
        match next {
            Ok(d) => {
                let id = d.message().id().to_string();
                if d.ack().await.is_ok() && !want.remove(&id) {
                    assert_eq!(id, acked, "{id} arrived twice after the reset");
                    again += 1;
                }
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                reports += 1;
            }
        }
    }
    assert!(reports <= 1, "{reports} disconnect reports for one reset");
    assert!(
        again <= 1,
        "the message acked before the reset came {again} more times"
    );
    let ack = b
        .publish(msg("after"))
        .await
        .must("publishing after the reconnect");
    assert!(!ack.duplicate);
    let d = recv(c.as_mut(), T, "a message after the reconnect").await;
    assert_eq!(d.message().id().as_str(), "after");
    d.ack().await.must("acking");
    Publisher::close(&b).await.must("closing");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_while_disconnected_fails_fast_then_recovers() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "outage", "");
    let (proxy, b) = through_proxy(&scope, "200ms").await;
    b.publish(msg("before"))
        .await
        .must("publishing before the outage");
    proxy.down().await;
    assert!(
        eventually(T, || !b.is_connected()).await,
        "the handle did not notice the outage"
    );
    let t0 = tokio::time::Instant::now();
    let e = expect_err(
        b.publish(msg("during")).await.map(|_| ()),
        &[ErrorKind::Unavailable],
        "publishing during the outage",
    );
    assert!(e.is_retryable());
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "failing took {:?}",
        t0.elapsed()
    );
    proxy.up().await.expect("proxy up again");
    assert!(b.wait_connected(T).await, "no reconnect after the outage");
    b.publish(msg("after"))
        .await
        .must("publishing after the outage");
    Publisher::close(&b).await.must("closing");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_owed_by_a_lost_connection_fail_instead_of_hanging() {
    let Some(url) = amqp_url() else { return };
    let scope = Scope::new(&url, "lost-confirms", "");
    let (proxy, b) = through_proxy(&scope, "200ms").await;
    b.publish(msg("first")).await.must("a confirmed publish");
    // Nothing comes back from the broker any more: every confirm from here on is owed.
    proxy
        .add_fault(
            ProxyFault::new("no-confirms", FaultKind::Blackhole).direction(Direction::Downstream),
        )
        .expect("adding the fault");
    let n = 200;
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(b.send(msg(&format!("m{i}"))).await.must("sending"));
    }
    // The cut comes before the blackhole goes: nothing it held may reach the client.
    proxy.reset_connections();
    proxy.clear_faults();
    for (i, p) in pending.into_iter().enumerate() {
        let r = tokio::time::timeout(T, p)
            .await
            .unwrap_or_else(|_| panic!("confirm {i} neither came nor failed within {T:?}"));
        let e = expect_err(r, &[ErrorKind::Unavailable], &format!("confirm {i}"));
        assert!(e.to_string().contains("may or may not"), "{e}");
    }
    tokio::time::timeout(T, b.flush())
        .await
        .expect("flush returns once every confirm is settled")
        .must("flushing");
    assert!(b.wait_connected(T).await, "no reconnect");
    b.publish(msg("again"))
        .await
        .must("publishing after the reconnect");
    proxy.stop().await;
}
