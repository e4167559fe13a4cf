//! The router's metrics, read back through a debugging recorder.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{publish, start};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use squall_broker::Broker;
use squall_core::Subscription;
use squall_middleware::metrics as names;
use squall_middleware::retry::{Backoff, RetryPolicy};
use squall_middleware::{HandlerError, Incoming, Route, Router, handler_fn};

type Entries = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn counter(entries: &Entries, name: &str, route: &str) -> u64 {
    entries
        .iter()
        .find_map(|(key, _, _, value)| {
            let k = key.key();
            let labelled = k.labels().any(|l| l.key() == "route" && l.value() == route);
            match value {
                DebugValue::Counter(v) if k.name() == name && labelled => Some(*v),
                _ => None,
            }
        })
        .unwrap_or(0)
}

/// Guards the counters and the latency histogram, labelled by route and handler: two messages
/// succeed, one fails twice and is dead-lettered (3 processed calls for it).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn processed_failed_retried_dead_lettered_and_latency_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // Current-thread runtime: every task of the router runs on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let broker = Broker::in_memory().unwrap();
    let handler = handler_fn(|m: Incoming| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        if m.message().payload() == "bad" {
            return Err(HandlerError::msg("nope"));
        }
        Ok(())
    });
    let sub = Subscription::new("m.>").unwrap().group("m").unwrap();
    let policy = RetryPolicy::new(Backoff::constant(Duration::from_secs(1))).max_attempts(3);
    let running = start(
        Router::new(Arc::new(broker.clone())).route(
            Route::new("metered", sub, handler)
                .handler_name("h")
                .retry(policy),
        ),
    );
    for p in ["ok", "bad", "ok"] {
        publish(&broker, "m.x", None, p).await;
    }
    running
        .until(|r| r.succeeded == 2 && r.dead_lettered == 1)
        .await;
    running.stop().await;

    let entries: Entries = snap.snapshot().into_vec(); // one snapshot: histograms drain
    assert_eq!(counter(&entries, names::PROCESSED, "metered"), 5);
    assert_eq!(counter(&entries, names::FAILED, "metered"), 3);
    assert_eq!(counter(&entries, names::RETRIED, "metered"), 2);
    assert_eq!(counter(&entries, names::DEAD_LETTERED, "metered"), 1);
    let latencies: Vec<f64> = entries
        .into_iter()
        .filter(|(k, ..)| {
            k.key().name() == names::DURATION && k.key().labels().any(|l| l.value() == "h")
        })
        .flat_map(|(.., v)| match v {
            DebugValue::Histogram(h) => h.into_iter().map(|x| x.into_inner()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(latencies.len(), 5);
    assert!(
        latencies.iter().all(|&s| (s - 0.030).abs() < 1e-6),
        "{latencies:?}"
    );
}
