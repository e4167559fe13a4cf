//! Circuit breaker transitions, around a handler in the router and around a publisher.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{Log, ms_since, publish, start};
use squall_broker::Broker;
use squall_core::{Error, ErrorKind, Message, PendingAck, Publisher, Result, Subscription};
use squall_middleware::breaker::{
    BreakerConfig, BreakerOpen, BreakerPublisher, BreakerState, CircuitBreaker, CircuitBreakerLayer,
};
use squall_middleware::retry::{Backoff, RetryPolicy};
use squall_middleware::{HandlerError, Incoming, Route, Router, handler_fn, permanent};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

fn config() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_secs(10),
        half_open_calls: 1,
    }
}

fn msg() -> Incoming {
    Incoming::new(Message::builder("a").unwrap().build())
}

/// Guards every transition of the layer: closed → (3 retryable failures) → open (fail fast,
/// deferred, the handler not called) → (10 s) → half-open (one trial) → failure → open again
/// → (10 s) → trial succeeds → closed. Permanent errors do not count.
#[tokio::test(start_paused = true)]
async fn layer_transitions_closed_open_half_open_closed() {
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let (h2, c2) = (healthy.clone(), calls.clone());
    let breaker = CircuitBreaker::new("db", config());
    let svc = CircuitBreakerLayer::new(breaker.clone()).layer(handler_fn(move |m: Incoming| {
        c2.fetch_add(1, Ordering::SeqCst);
        let ok = h2.load(Ordering::SeqCst);
        async move {
            if m.message().payload() == "bad-input" {
                return Err(permanent("bad input"));
            }
            if ok {
                Ok(())
            } else {
                Err(HandlerError::msg("db down"))
            }
        }
    }));
    let call = |m: Incoming| svc.clone().oneshot(m);

    for _ in 0..5 {
        let bad = Incoming::new(Message::builder("a").unwrap().payload("bad-input").build());
        assert!(call(bad).await.unwrap_err().is_permanent());
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "permanent errors do not count"
    );
    for _ in 0..3 {
        assert!(call(msg()).await.unwrap_err().is_retryable());
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let calls_when_opened = calls.load(Ordering::SeqCst);
    let e = call(msg()).await.unwrap_err();
    assert_eq!(
        e.deferred(),
        Some(Duration::from_secs(10)),
        "deferred until trial time"
    );
    assert!(e.find::<BreakerOpen>().is_some());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        calls_when_opened,
        "fail fast: not called"
    );

    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    assert!(
        call(msg()).await.unwrap_err().is_retryable(),
        "the trial call ran and failed"
    );
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "a failed trial reopens"
    );

    tokio::time::advance(Duration::from_secs(10)).await;
    healthy.store(true, Ordering::SeqCst);
    call(msg()).await.unwrap();
    assert_eq!(breaker.state(), BreakerState::Closed, "a good trial closes");
    call(msg()).await.unwrap();
}

/// Guards: half-open admits only `half_open_calls` trials at once; others fail fast.
#[tokio::test(start_paused = true)]
async fn half_open_admits_one_trial_at_a_time() {
    let breaker = CircuitBreaker::new("svc", config());
    for _ in 0..3 {
        breaker.try_acquire().unwrap().failure();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let trial = breaker.try_acquire().expect("the trial");
    assert!(
        breaker.try_acquire().is_err(),
        "a second caller waits for the trial"
    );
    drop(trial); // abandoned: frees the slot, decides nothing
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    let late = breaker.try_acquire().expect("the slot is free again");
    late.success();
    assert_eq!(breaker.state(), BreakerState::Closed);
}

/// Guards: in the router, an open breaker defers messages (no dead letters, although the
/// outage outlasts `max_attempts` × backoff) and they succeed once a trial closes it.
#[tokio::test(start_paused = true)]
async fn in_a_router_an_open_circuit_defers_until_the_dependency_is_back() {
    let broker = Broker::in_memory().unwrap();
    let t0 = Instant::now();
    let handled: Log<u64> = Log::default();
    let h2 = handled.clone();
    let svc = CircuitBreakerLayer::new(CircuitBreaker::new("dep", config())).layer(handler_fn(
        move |_m: Incoming| {
            let now = ms_since(t0);
            let h = h2.clone();
            async move {
                if now < 15_000 {
                    return Err(HandlerError::msg("dependency down"));
                }
                h.push(now);
                Ok(())
            }
        },
    ));
    let policy = RetryPolicy::new(Backoff::constant(Duration::from_secs(1))).max_attempts(4);
    let sub = Subscription::new("d.>").unwrap().group("d").unwrap();
    let running = start(
        Router::new(Arc::new(broker.clone()))
            .route(Route::new("d", sub, svc).workers(3).retry(policy)),
    );
    for i in 0..3 {
        publish(&broker, "d.x", None, &i.to_string()).await;
    }
    running.until(|r| r.succeeded == 3).await;
    let report = running.stop().await;
    let r = &report.routes[0];
    assert_eq!(r.dead_lettered, 0, "nobody ran out of attempts: {r:?}");
    // Three failures open it at 0 s; the trial at 10 s fails (down until 15 s) and reopens
    // it; the trial at 20 s succeeds and closes it; the deferred two follow at once.
    assert_eq!(r.failed, 4, "three failures and one failed trial: {r:?}");
    assert!(r.deferred >= 2, "the others waited: {r:?}");
    assert_eq!(handled.all(), [20_000, 20_000, 20_000]);
}

/// A publisher failing while `down` is set.
struct Flaky {
    down: AtomicBool,
    sends: AtomicU32,
}

#[async_trait]
impl Publisher for Flaky {
    async fn send(&self, _msg: Message) -> Result<PendingAck> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Unavailable, "broker unreachable"));
        }
        Ok(PendingAck::ready(Ok(squall_core::PublishAck {
            stream: None,
            sequence: 1,
            durability: squall_core::Durability::Memory,
            duplicate: false,
        })))
    }
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Guards the publisher wrapper: retryable publish errors open it; while open, sends fail fast
/// with `Unavailable` without reaching the inner publisher; after `open_for` a good trial
/// closes it. Invalid messages (not retryable) never count.
#[tokio::test(start_paused = true)]
async fn publisher_fails_fast_while_open() {
    let inner = Arc::new(Flaky {
        down: AtomicBool::new(true),
        sends: AtomicU32::new(0),
    });
    let p = BreakerPublisher::from_arc(inner.clone(), CircuitBreaker::new("out", config()));
    let m = || Message::builder("x").unwrap().build();
    for _ in 0..3 {
        assert_eq!(
            p.publish(m()).await.unwrap_err().kind(),
            ErrorKind::Unavailable
        );
    }
    assert_eq!(p.breaker().state(), BreakerState::Open);
    let e = p.publish(m()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(
        e.to_string().contains("circuit breaker `out` is open"),
        "{e}"
    );
    assert_eq!(inner.sends.load(Ordering::SeqCst), 3, "fail fast: not sent");
    tokio::time::advance(Duration::from_secs(10)).await;
    inner.down.store(false, Ordering::SeqCst);
    p.publish(m()).await.unwrap();
    assert_eq!(p.breaker().state(), BreakerState::Closed);
}
