//! Helpers shared by the integration tests: a running router, a backend that hides some of the
//! broker's native features, a recorder of handler events with paused-clock timestamps.

#![allow(dead_code)] // each test file uses a different subset

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use squall_broker::Broker;
use squall_core::{
    Backend, Capabilities, Consumer, Message, PendingAck, Publisher, Requester, Result, Subscriber,
    Subscription, Support,
};
use squall_middleware::{RouteReport, Router, RouterStats, RunReport};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A router running in a task.
pub struct Running {
    pub stats: RouterStats,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<RunReport>>,
}

pub fn start(router: Router) -> Running {
    let stats = router.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(router.run(shutdown.clone()));
    Running {
        stats,
        shutdown,
        task,
    }
}

impl Running {
    /// Waits (on counter changes, not on time) until route 0 satisfies `f`.
    pub async fn until(&self, f: impl Fn(&RouteReport) -> bool) {
        self.stats.wait_until(|r| f(&r[0])).await;
    }

    /// Signals shutdown and returns the report.
    pub async fn stop(self) -> RunReport {
        self.shutdown.cancel();
        self.task.await.expect("router task").expect("router run")
    }
}

/// Time since `t0`, in whole milliseconds (the paused clock makes these exact).
pub fn ms_since(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

/// Thread-safe list of things handlers saw.
#[derive(Clone)]
pub struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T> Default for Log<T> {
    fn default() -> Self {
        Log(Arc::default())
    }
}

impl<T: Clone> Log<T> {
    pub fn push(&self, t: T) {
        self.0.lock().unwrap().push(t);
    }
    pub fn all(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// The embedded broker with some native features declared missing, as a backend lacking them
/// would declare them: the runtime must then do the work itself.
pub struct Limited {
    pub broker: Broker,
    pub caps: Capabilities,
}

impl Limited {
    /// No native dead letters.
    pub fn without_dead_letters(broker: Broker) -> Self {
        let mut caps = broker.capabilities();
        caps.dead_letter = Support::Missing;
        Limited { broker, caps }
    }

    /// No native dead letters and no delayed nacks (delayed delivery remains).
    pub fn without_delayed_nacks(broker: Broker) -> Self {
        let mut l = Limited::without_dead_letters(broker);
        l.caps.nack_delay = Support::Missing;
        l
    }
}

#[async_trait]
impl Publisher for Limited {
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        self.broker.send(msg).await
    }
    async fn flush(&self) -> Result<()> {
        self.broker.flush().await
    }
    async fn close(&self) -> Result<()> {
        Publisher::close(&self.broker).await
    }
}

#[async_trait]
impl Subscriber for Limited {
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        self.broker.subscribe(sub).await
    }
}

#[async_trait]
impl Requester for Limited {
    async fn request(&self, msg: Message, timeout: Duration) -> Result<Message> {
        self.broker.request(msg, timeout).await
    }
}

impl Backend for Limited {
    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }
    fn name(&self) -> &str {
        "limited-embedded"
    }
}

/// Publishes a message to `subject` with `key` and `payload`.
pub async fn publish(p: &dyn Publisher, subject: &str, key: Option<&str>, payload: &str) {
    let mut b = Message::builder(subject)
        .unwrap()
        .payload(payload.to_string());
    if let Some(k) = key {
        b = b.key(k).unwrap();
    }
    p.publish(b.build()).await.expect("publish");
}

/// The group's settled state in the default stream: (in flight, waiting, lag).
pub async fn group_state(broker: &Broker, stream: &str, group: &str) -> (usize, usize, u64) {
    let s = broker.stream_stats(stream).await.unwrap();
    let g = s
        .groups
        .iter()
        .find(|g| g.name == group)
        .unwrap_or_else(|| panic!("no group {group} in {s:?}"));
    (g.in_flight, g.waiting, g.lag)
}
