//! Shared test fixtures: events that carry their key and per-key index, a publisher wrapper that
//! checks the relay's promises as it sends (and can inject delays and failures), and a consumer
//! drain that checks what the broker stored.

#![allow(dead_code, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use squall_broker::Broker;
use squall_core::{
    Error, ErrorKind, Message, PendingAck, Publisher, Result, StartPosition, Subscriber,
    Subscription,
};
use squall_outbox::{Relay, RelayConfig, RelayStats, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An event of `key` (or none) with its index among its key's events in the payload `key|n`.
pub fn event(key: Option<&str>, n: usize) -> Message {
    let b = Message::builder("orders.created")
        .unwrap()
        .header("content-type", "text/plain")
        .unwrap()
        .payload(format!("{}|{n}", key.unwrap_or("-")));
    match key {
        Some(k) => b.key(k).unwrap().build(),
        None => b.build(),
    }
}

/// `(key, n)` from an [`event`].
pub fn parse(msg: &Message) -> (Option<String>, usize) {
    let s = std::str::from_utf8(msg.payload()).unwrap();
    let mut parts = s.split('|');
    let k = parts.next().unwrap();
    let n = parts.next().unwrap().parse().unwrap();
    (msg.key().map(str::to_string).filter(|_| k != "-"), n)
}

/// A deterministic xorshift generator; tests print their seed.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Faults the [`Checker`] injects.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Each ack waits a random time up to this.
    pub max_ack_delay: Duration,
    /// Per mille of sends refused with a retryable error before reaching the broker.
    pub refuse_per_mille: u64,
    /// Per mille of sends stored by the broker and then reported as a retryable failure
    /// (the outcome is unknown to the relay, as with a lost confirm).
    pub lose_ack_per_mille: u64,
    /// Every send is refused (an outage) while set.
    pub down: bool,
}

#[derive(Default)]
struct State {
    rng: Option<Rng>,
    faults: Faults,
    /// Ids sent and not yet confirmed or failed.
    in_flight: HashSet<String>,
    /// Confirmed `(key, n)`.
    confirmed: HashSet<(String, usize)>,
    sends: HashMap<String, u32>,
    duplicate_acks: Vec<String>,
    violations: Vec<String>,
}

/// Wraps a publisher and records every breach of the relay's promises:
/// - a key's row sent before the key's previous row was confirmed,
/// - a row sent again while a send of it is still in flight (concurrent double publish).
#[derive(Clone)]
pub struct Checker {
    inner: Arc<dyn Publisher>,
    state: Arc<Mutex<State>>,
}

impl Checker {
    pub fn new(inner: Arc<dyn Publisher>, seed: u64, faults: Faults) -> Self {
        Checker {
            inner,
            state: Arc::new(Mutex::new(State {
                rng: Some(Rng::new(seed)),
                faults,
                ..State::default()
            })),
        }
    }
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
    /// Fails with the number of breaches and the first few.
    pub fn assert_clean(&self, context: &str) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "{context}: {} breaches, first: {:?}",
            v.len(),
            &v[..v.len().min(5)]
        );
    }
    pub fn duplicate_acks(&self) -> Vec<String> {
        self.state.lock().unwrap().duplicate_acks.clone()
    }
    /// Sends per message id.
    pub fn sends(&self) -> HashMap<String, u32> {
        self.state.lock().unwrap().sends.clone()
    }
}

#[async_trait]
impl Publisher for Checker {
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        let id = msg.id().to_string();
        let (key, n) = parse(&msg);
        let (delay, refuse, lose) = {
            let mut st = self.state.lock().unwrap();
            *st.sends.entry(id.clone()).or_default() += 1;
            if !st.in_flight.insert(id.clone()) {
                st.violations
                    .push(format!("{id} sent while a send of it was in flight"));
            }
            if let Some(k) = &key
                && n > 0
                && !st.confirmed.contains(&(k.clone(), n - 1))
            {
                st.violations
                    .push(format!("{k}|{n} sent before {k}|{} was confirmed", n - 1));
            }
            let f = st.faults;
            let rng = st.rng.as_mut().unwrap();
            let delay = if f.max_ack_delay.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_micros(rng.below(f.max_ack_delay.as_micros() as u64 + 1))
            };
            let refuse = f.down || rng.below(1000) < f.refuse_per_mille;
            let lose = rng.below(1000) < f.lose_ack_per_mille;
            (delay, refuse, lose)
        };
        if refuse {
            self.state.lock().unwrap().in_flight.remove(&id);
            return Err(Error::new(ErrorKind::Unavailable, "injected: broker down"));
        }
        let pending = self.inner.send(msg).await?;
        let state = self.state.clone();
        Ok(PendingAck::future(async move {
            tokio::time::sleep(delay).await;
            let r = pending.await;
            let mut st = state.lock().unwrap();
            st.in_flight.remove(&id);
            match r {
                Ok(_) if lose => Err(Error::new(ErrorKind::Timeout, "injected: confirm lost")),
                Ok(ack) => {
                    if ack.duplicate {
                        st.duplicate_acks.push(id);
                    }
                    if let Some(k) = key {
                        st.confirmed.insert((k, n));
                    }
                    Ok(ack)
                }
                Err(e) => Err(e),
            }
        }))
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Reads every message the broker holds on `orders.>` (a fresh group from the first), expecting
/// exactly `expected`; fails on a shortfall or a surplus.
pub async fn drain(broker: &Broker, expected: usize) -> Vec<Message> {
    let group = format!(
        "check-{}",
        squall_core::MessageId::generate().as_str().replace('-', "")
    );
    let mut consumer = broker
        .subscribe(
            Subscription::new("orders.>")
                .unwrap()
                .group(&group)
                .unwrap()
                .start(StartPosition::First)
                .max_in_flight(10_000),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < expected {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} messages stored", out.len()))
            .expect("consumer open")
            .unwrap();
        out.push(d.message().clone());
        d.ack().await.unwrap();
    }
    let extra = tokio::time::timeout(Duration::from_millis(100), consumer.next()).await;
    assert!(extra.is_err(), "more than {expected} messages stored");
    out
}

/// Checks each id appears once and each key's events arrive as 0, 1, 2...
pub fn assert_once_and_in_order(msgs: &[Message]) {
    let mut ids = HashSet::new();
    let mut next: HashMap<String, usize> = HashMap::new();
    for m in msgs {
        assert!(ids.insert(m.id().clone()), "{} stored twice", m.id());
        if let (Some(k), n) = parse(m) {
            let want = next.entry(k.clone()).or_default();
            assert_eq!(n, *want, "key {k}: got {n}, expected {want}");
            *want += 1;
        }
    }
}

/// Publishes to the broker through a checker without faults.
pub fn checked(broker: &Broker) -> Checker {
    Checker::new(Arc::new(broker.clone()), 1, Faults::default())
}

/// The checker as the relay's publisher.
pub fn publisher(c: &Checker) -> Arc<dyn Publisher> {
    Arc::new(c.clone())
}

/// Short intervals so tests await events, not timers.
pub fn fast() -> RelayConfig {
    RelayConfig {
        poll_interval: Duration::from_millis(20),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..RelayConfig::default()
    }
}

/// A relay running in its own task.
pub struct Running {
    pub stop: CancellationToken,
    pub task: JoinHandle<squall_outbox::Result<()>>,
    pub stats: watch::Receiver<RelayStats>,
}

pub fn start(
    store: impl Into<Store>,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
) -> Running {
    let relay = Relay::new(store, publisher, config).unwrap();
    let stop = CancellationToken::new();
    Running {
        stats: relay.stats(),
        task: tokio::spawn(relay.run(stop.clone())),
        stop,
    }
}

impl Running {
    /// Waits (at most 20 s) until the stats satisfy `f`.
    pub async fn until(&mut self, what: &str, f: impl Fn(&RelayStats) -> bool) -> RelayStats {
        let done = tokio::time::timeout(Duration::from_secs(20), self.stats.wait_for(|s| f(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match done {
            Ok(stats) => stats.unwrap(),
            Err(_) => panic!("timed out waiting for {what}: {:?}", *self.stats.borrow()),
        }
    }

    /// Shuts the relay down; it must end cleanly.
    pub async fn stop(self) -> RelayStats {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
        self.stats.borrow().clone()
    }
}
