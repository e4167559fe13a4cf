//! Losing the way to SQS, through squall-chaos's TCP fault proxy in front of the server at
//! `SQUALL_SQS_URL`: while the proxy is down, publishing fails within `request_timeout` with
//! `Unavailable` naming the endpoint, and a consumer reports the problem once through `next`
//! and keeps trying with backoff; once the proxy is up again both work, and a delivery held
//! across the outage can still be acked (HTTP has no connection whose loss ends a lease).
//!
//! A long poll cut by the outage may still be answered by SQS into the closed connection: a
//! message published while it waits is then received by nobody and comes again when its
//! visibility timeout (`ack_wait + lease_grace`) ends. The subscription here keeps that short
//! (2 s + 1 s), so such a message arrives, as a second attempt, within the test's window.

mod support;

use std::time::{Duration, Instant};

use squall_chaos::proxy::Proxy;
use squall_chaos::proxy::api::loopback;
use squall_core::{ErrorKind, Message, Publisher, Subscriber, Subscription};
use squall_sqs::{Endpoint, SqsBackend, SqsConfig};
use squall_testkit::{Must, expect_err, recv};
use support::{Scope, sqs_url};

const T: Duration = Duration::from_secs(10);

fn msg(id: &str) -> Message {
    Message::builder("r.jobs")
        .and_then(|b| b.id(id))
        .expect("message")
        .payload(id.to_string())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_reported_and_recovered_from() {
    let Some(base) = sqs_url() else { return };
    let scope = Scope::new(&base, "recon", "");
    let Endpoint::Url { url, .. } = SqsConfig::from_url(&base).expect("url").endpoint else {
        panic!("the test needs an endpoint override");
    };
    let upstream = url.trim_start_matches("http://").to_string();
    let proxy = Proxy::new(loopback(0), upstream)
        .name("sqs")
        .spawn()
        .await
        .expect("starting the proxy");
    let port = proxy.listen_addr().port();
    let region = scope.config().region;
    let via = format!(
        "sqs://127.0.0.1:{port}?region={region}&queue_prefix={}&wait_time=1s&request_timeout=2s\
         &connect_timeout=1s&reconnect_min=50ms&reconnect_max=500ms&lease_grace=1s",
        scope.prefix
    );
    let b = SqsBackend::connect_url(&via)
        .await
        .must("connecting through the proxy");
    let direct = scope.backend().await.must("connecting directly");
    let sub = Subscription::new("r.jobs")
        .and_then(|s| s.group("workers"))
        .expect("subscription")
        .ack_wait(Duration::from_secs(2));
    let mut c = b.subscribe(sub).await.must("subscribing through the proxy");
    direct.publish(msg("before")).await.must("publishing");
    let mut held = recv(c.as_mut(), T, "the message before the outage").await;
    // Held across the outage: longer than the subscription's 2 s lease.
    held.extend(Duration::from_secs(60))
        .await
        .must("extending the held delivery");

    proxy.down().await;
    let t0 = Instant::now();
    let e = expect_err(
        b.publish(msg("during")).await,
        &[ErrorKind::Unavailable],
        "publishing while the proxy is down",
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(e.to_string().contains(&port.to_string()), "{e}");
    match tokio::time::timeout(T, c.next()).await {
        Ok(Some(Err(e))) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
        other => panic!("expected the consumer to report the outage, got {other:?}"),
    }

    proxy.up().await.expect("bringing the proxy up");
    direct
        .publish(msg("after"))
        .await
        .must("publishing directly");
    let d = loop {
        match tokio::time::timeout(T, c.next()).await {
            Ok(Some(Ok(d))) => break d,
            // More reports of the same outage may have queued before it ended.
            Ok(Some(Err(e))) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
            other => panic!("nothing after the outage: {other:?}"),
        }
    };
    assert_eq!(d.message().id().as_str(), "after");
    if d.attempt() > 1 {
        println!(
            "`after` was taken by a long poll the outage cut; it came again, as attempt {}",
            d.attempt()
        );
    }
    d.ack().await.must("acking after the outage");
    held.ack()
        .await
        .must("acking a delivery held across the outage");
    b.publish(msg("again"))
        .await
        .must("publishing through the proxy again");
    let d = recv(c.as_mut(), T, "the message published after the outage").await;
    assert_eq!(d.message().id().as_str(), "again");
    d.ack().await.must("acking");
    proxy.stop().await;
}
