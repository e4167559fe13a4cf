//! [`ChaosBackend`]: any [`Backend`] wrapped so the [`Faults`] registry's rules strike its
//! messages at the five [`Point`]s.
//!
//! | point | applied | verdicts |
//! |---|---|---|
//! | `publish` | in [`Publisher::send`], before the inner send | delay, drop (confirm fails `Unavailable`: lost in transit), lie-drop (fake confirm), duplicate (sent twice, same id), corrupt, hold (shuffled release), error, partition, restart (not sent: `Unavailable`) |
//! | `confirm` | decided at send (in send order), applied when the inner confirm arrives | delay, drop (stored, but the producer gets `Unavailable`), error, partition, restart (sent, then the restart begins: the confirm says what the closing backend made of it) |
//! | `deliver` | in [`Consumer::next`] | delay, drop (never handed over; the lease expires), duplicate, corrupt, hold, error (delivery dropped, `Err` returned), partition, restart (not handed over; its lease dies with the old backend) |
//! | `ack` | on every settle (ack, nack, reject, extend) | delay, drop (not forwarded, reported `Ok`: the lease expires and the message is redelivered), duplicate, error, partition, restart (not forwarded: `Unavailable`) |
//! | `connect` | [`Subscriber::subscribe`] and reopening after [`ChaosBackend::restart`] | delay, error, partition |
//!
//! ## Restart
//! A wrapper built with a reopen function ([`ChaosBuilder::with_restart`],
//! [`ChaosBuilder::reopen`]) can be restarted: by [`ChaosBackend::restart`], or by a rule whose
//! fault is [`Fault::Restart`]. A restart releases held publishes, closes the inner backend, stays
//! down for the verdict's downtime (sends, requests and subscribes fail with `Unavailable`),
//! passes the `connect` rules and installs a fresh backend from the reopen function; consumers
//! opened through the wrapper resubscribe on it. A verdict starts the restart in the background
//! (one at a time: verdicts while one is under way change nothing more) and retries the reopen
//! function with backoff until it succeeds or the wrapper is closed. A wrapper without a reopen
//! function never draws for restart rules, and [`Faults::add`] refuses them while no wrapper
//! using the registry has one.
//!
//! Requests ([`Requester::request`]) go through the `publish` rules whose faults fit a request:
//! delay, drop and lie-drop (the request is lost: `Timeout` after its timeout), corrupt, error,
//! partition (not duplicate, hold or restart).
//!
//! squall never lies about confirms except through the explicit [`crate::rules::Fault::LieDrop`].
//!
//! A duplicated delivery is the same lease handed over twice: whichever copy is settled second
//! gets what the inner backend says about a settled lease (`LeaseExpired` on the embedded broker).
//! A duplicated publish re-sends the same message id, so a backend with deduplication stores it
//! once and confirms the copy with `duplicate = true`.

mod consumer;
mod hold;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use squall_core::{
    Backend, Capabilities, Consumer, Durability, Error, ErrorKind, Message, MessageId, PendingAck,
    PublishAck, Publisher, Requester, Result, Subject, Subscriber, Subscription,
};
use tokio::sync::watch;

use crate::faults::{Faults, ReopenTicket};
use crate::rules::{Fault, PartitionMode, Point, Site, Verdict, flip_bit};

pub use consumer::ChaosConsumer;

/// Configures a [`ChaosBackend`]; see [`ChaosBackend::builder`].
pub struct ChaosBuilder {
    inner: Arc<dyn Backend>,
    faults: Faults,
    label: Option<Arc<str>>,
    factory: Option<Factory>,
}

impl ChaosBuilder {
    /// Reports publish, confirm and connect sites (and deliveries of subscriptions without a
    /// group) as group `label`, so rules and targets can select this service's traffic.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into().into());
        self
    }

    /// Enables [`ChaosBackend::restart`] and `restart` rules: `factory` opens a fresh inner
    /// backend (the reopen function).
    pub fn with_restart<F, Fut>(mut self, factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Arc<dyn Backend>>> + Send + 'static,
    {
        self.factory = Some(Arc::new(move || Box::pin(factory())));
        self
    }

    /// Like [`with_restart`](Self::with_restart), with a reopen function already boxed.
    pub fn reopen(mut self, factory: Factory) -> Self {
        self.factory = Some(factory);
        self
    }

    /// The wrapper.
    pub fn build(self) -> ChaosBackend {
        let ticket = self.factory.as_ref().map(|_| self.faults.reopener());
        ChaosBackend {
            shared: Arc::new(Shared {
                name: format!("chaos+{}", self.inner.name()),
                faults: self.faults,
                label: self.label,
                factory: self.factory,
                _ticket: ticket,
                inner: RwLock::new(self.inner),
                restarting: AtomicBool::new(false),
                reopening: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                generation: watch::Sender::new(0),
                hold: Mutex::new(hold::HoldBuffer::default()),
            }),
        }
    }
}

impl std::fmt::Debug for ChaosBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosBuilder")
            .field("label", &self.label)
            .finish()
    }
}

/// The reopen function: opens a fresh inner backend for [`ChaosBackend::restart`] and `restart`
/// verdicts.
pub type Factory = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Backend>>> + Send + Sync>;

/// A backend whose messages suffer the faults of a [`Faults`] registry. Cheap to clone.
///
/// ```
/// use std::sync::Arc;
/// use squall_chaos::{chaos_backend::ChaosBackend, faults::Faults, rng::Seed};
/// use squall_chaos::rules::{Fault, Point, Rule};
/// use squall_core::{Backend, ErrorKind, Message, Publisher};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let broker: Arc<dyn Backend> = Arc::new(squall_broker::Broker::in_memory()?);
/// let faults = Faults::new(Seed::new(7));
/// let chaos = ChaosBackend::new(broker, faults.clone());
/// let _lossy = faults.add(Rule::new("lose-all", Point::Publish, Fault::Drop))?;
/// let err = chaos.publish(Message::builder("orders.1")?.payload("x").build()).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Unavailable); // lost in transit, and the producer knows
/// # Ok::<(), squall_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct ChaosBackend {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) faults: Faults,
    /// The group name publish, confirm and connect sites report (and deliveries without one).
    pub(crate) label: Option<Arc<str>>,
    name: String,
    factory: Option<Factory>,
    /// Registers this wrapper as able to restart while it lives (with a factory only).
    _ticket: Option<ReopenTicket>,
    /// Swapped by `restart`; read (cloned out) for every call, never held across an await.
    inner: RwLock<Arc<dyn Backend>>,
    /// True between closing the old inner backend and installing the new one.
    restarting: AtomicBool,
    /// True while a restart is under way (one at a time).
    reopening: AtomicBool,
    /// Set by `close`: a restart under way gives up, and what it opened is closed.
    closed: AtomicBool,
    /// Bumped when a restart completes; consumers resubscribe when it changes.
    pub(crate) generation: watch::Sender<u64>,
    /// Publishes held for reordering; bounded by the hold verdicts' counts.
    hold: Mutex<hold::HoldBuffer>,
}

impl ChaosBackend {
    /// Wraps `inner`. Rules installed in `faults` (now or later) apply at once.
    pub fn new(inner: Arc<dyn Backend>, faults: Faults) -> Self {
        ChaosBackend::builder(inner, faults).build()
    }

    /// Starts configuring a wrapper of `inner` (label, restart factory).
    pub fn builder(inner: Arc<dyn Backend>, faults: Faults) -> ChaosBuilder {
        ChaosBuilder {
            inner,
            faults,
            label: None,
            factory: None,
        }
    }

    /// The registry the rules come from.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The current inner backend.
    pub fn inner(&self) -> Arc<dyn Backend> {
        self.shared
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Simulates a service restart: releases held publishes, closes the inner backend, waits
    /// `downtime`, applies the `connect` rules, and installs a fresh backend from the factory.
    /// Meanwhile sends fail with `Unavailable`; consumers opened through this wrapper resubscribe
    /// on the new backend. If reopening fails the wrapper stays down (sends keep failing with
    /// `Unavailable`) until a later restart succeeds. Fails with `Unavailable` while another
    /// restart is under way, and with `Unsupported` without a factory.
    pub async fn restart(&self, downtime: Duration) -> Result<()> {
        let factory = self.shared.factory.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "this ChaosBackend has no restart factory (build it with ChaosBackend::builder(..).with_restart(..))",
            )
        })?;
        if self.shared.reopening.swap(true, Ordering::AcqRel) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "chaos: a restart is already under way",
            ));
        }
        self.go_down(downtime).await;
        let r = self.reopen_once(&factory).await;
        self.shared.reopening.store(false, Ordering::Release);
        r
    }

    /// How many restarts completed.
    pub fn restarts(&self) -> u64 {
        *self.shared.generation.borrow()
    }

    /// Whether the wrapper is down: a restart closed the inner backend and has not reopened it.
    pub fn is_restarting(&self) -> bool {
        self.shared.is_restarting()
    }

    /// Releases held publishes, marks the wrapper down, closes the inner backend and waits
    /// `downtime`.
    async fn go_down(&self, downtime: Duration) {
        self.release_held().await;
        self.shared.restarting.store(true, Ordering::Release);
        let old = self.inner();
        if let Err(e) = old.close().await {
            tracing::debug!("closing the inner backend for a restart: {e}");
        }
        tokio::time::sleep(downtime).await;
    }

    /// Passes the `connect` rules and installs a fresh backend from `factory`.
    async fn reopen_once(&self, factory: &Factory) -> Result<()> {
        self.connect_gate(self.shared.label.as_deref()).await?;
        let new = factory().await?;
        if self.shared.closed.load(Ordering::Acquire) {
            let _ = new.close().await;
            return Ok(());
        }
        *self.shared.inner.write().unwrap_or_else(|p| p.into_inner()) = new;
        self.shared.restarting.store(false, Ordering::Release);
        self.shared.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Carries out a `restart` verdict: starts a restart in the background, unless one is under
    /// way or there is no factory. The reopen is retried with backoff (50 ms doubling to 1 s)
    /// until it succeeds, the wrapper is closed, or every handle to it is gone.
    pub(crate) fn trigger_restart(&self, downtime: Duration) {
        let Some(factory) = self.shared.factory.clone() else {
            return;
        };
        if self.shared.reopening.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.go_down(downtime).await;
            let weak = Arc::downgrade(&me.shared);
            drop(me);
            let mut backoff = Duration::from_millis(50);
            loop {
                let Some(shared) = weak.upgrade() else { return };
                let me = ChaosBackend { shared };
                if me.shared.closed.load(Ordering::Acquire) {
                    break me.shared.reopening.store(false, Ordering::Release);
                }
                match me.reopen_once(&factory).await {
                    Ok(()) => break me.shared.reopening.store(false, Ordering::Release),
                    Err(e) => tracing::warn!(
                        "chaos restart of {}: reopening failed, retrying in {backoff:?}: {e}",
                        me.shared.name
                    ),
                }
                drop(me);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
    }

    fn live(&self) -> Result<Arc<dyn Backend>> {
        self.shared.live()
    }

    fn site_parts(msg: &Message) -> (Subject, MessageId) {
        (msg.subject().clone(), msg.id().clone())
    }

    /// Applies `connect` rules for a consumer of `group`.
    async fn connect_gate(&self, group: Option<&str>) -> Result<()> {
        let site = Site::new(Point::Connect).group(group);
        match self.shared.decide(&site) {
            Verdict::Delay(d) => tokio::time::sleep(d).await,
            Verdict::Error(k) => return Err(Error::new(k, "chaos: injected connect error")),
            Verdict::Partition(PartitionMode::Fail) => return Err(partitioned()),
            Verdict::Partition(PartitionMode::Hang) => self.shared.faults.wait_healed(&site).await,
            _ => {}
        }
        Ok(())
    }

    /// Sends `msg` to the inner backend with a `confirm` decision taken now.
    async fn send_inner(&self, msg: Message, twice: bool) -> Result<PendingAck> {
        let inner = self.live()?;
        let (subject, id) = Self::site_parts(&msg);
        let label = self.shared.label.clone();
        let site = Site {
            point: Point::Confirm,
            subject: Some(&subject),
            group: label.as_deref(),
            message_id: Some(&id),
        };
        let confirm = self.shared.decide(&site);
        let pending = if twice {
            let first = inner.send(msg.clone()).await?;
            // Dropping a PendingAck never cancels its publish: the copy is still sent.
            drop(inner.send(msg).await);
            first
        } else {
            inner.send(msg).await?
        };
        if let Verdict::Restart(downtime) = confirm {
            // Between the send and its confirm: the confirm says what the closing backend made
            // of the message.
            self.trigger_restart(downtime);
            return Ok(pending);
        }
        if confirm == Verdict::Pass {
            return Ok(pending);
        }
        let faults = self.shared.faults.clone();
        Ok(PendingAck::future(async move {
            let r = pending.await;
            match confirm {
                Verdict::Delay(d) => {
                    tokio::time::sleep(d).await;
                    r
                }
                Verdict::Drop => r.and_then(|_| {
                    Err(Error::new(
                        ErrorKind::Unavailable,
                        "chaos: the confirm was lost in transit (the message may be stored)",
                    ))
                }),
                Verdict::Error(k) => {
                    r.and_then(|_| Err(Error::new(k, "chaos: injected confirm error")))
                }
                Verdict::Partition(PartitionMode::Fail) => r.and_then(|_| Err(partitioned())),
                Verdict::Partition(PartitionMode::Hang) => {
                    let site = Site {
                        point: Point::Confirm,
                        subject: Some(&subject),
                        group: label.as_deref(),
                        message_id: Some(&id),
                    };
                    faults.wait_healed(&site).await;
                    r
                }
                _ => r,
            }
        }))
    }
}

impl Shared {
    /// The registry's verdict for `site`; a wrapper that cannot restart never draws for
    /// `restart` rules (and a custom rule's `Restart` verdict passes).
    pub(crate) fn decide(&self, site: &Site<'_>) -> Verdict {
        if self.factory.is_some() {
            return self.faults.decide(site);
        }
        match self
            .faults
            .decide_where(site, |f| !matches!(f, Fault::Restart { .. }))
        {
            Verdict::Restart(_) => Verdict::Pass,
            v => v,
        }
    }

    pub(crate) fn live(&self) -> Result<Arc<dyn Backend>> {
        if self.is_restarting() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "chaos: the backend is restarting",
            ));
        }
        Ok(self.inner.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    pub(crate) fn is_restarting(&self) -> bool {
        self.restarting.load(Ordering::Acquire)
    }
}

/// What the operation that triggered a restart gets.
pub(crate) fn restarting(what: &str) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("chaos: the backend restarts; {what}"),
    )
}

pub(crate) fn partitioned() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "chaos: partitioned from the backend",
    )
}

/// A confirm for a message that was never stored ([`Verdict::LieDrop`] only).
fn fake_ack() -> PublishAck {
    PublishAck {
        stream: None,
        sequence: 0,
        durability: Durability::Memory,
        duplicate: false,
    }
}

#[async_trait]
impl Publisher for ChaosBackend {
    async fn send(&self, mut msg: Message) -> Result<PendingAck> {
        let (subject, id) = Self::site_parts(&msg);
        let site = Site {
            point: Point::Publish,
            subject: Some(&subject),
            group: self.shared.label.as_deref(),
            message_id: Some(&id),
        };
        let mut twice = false;
        match self.shared.decide(&site) {
            Verdict::Pass => {}
            Verdict::Delay(d) => tokio::time::sleep(d).await,
            Verdict::Drop => {
                return Ok(PendingAck::ready(Err(Error::new(
                    ErrorKind::Unavailable,
                    "chaos: the message was lost in transit",
                ))));
            }
            Verdict::LieDrop => return Ok(PendingAck::ready(Ok(fake_ack()))),
            Verdict::Duplicate => twice = true,
            Verdict::Corrupt(n) => {
                flip_bit(&mut msg, n);
            }
            Verdict::Hold(h) => return self.hold(msg, h).await,
            Verdict::Error(k) => return Err(Error::new(k, "chaos: injected publish error")),
            Verdict::Partition(PartitionMode::Fail) => return Err(partitioned()),
            Verdict::Partition(PartitionMode::Hang) => self.shared.faults.wait_healed(&site).await,
            Verdict::Restart(downtime) => {
                self.trigger_restart(downtime);
                return Err(restarting("the message was not sent"));
            }
        }
        self.send_inner(msg, twice).await
    }

    async fn flush(&self) -> Result<()> {
        self.release_held().await;
        self.live()?.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        self.release_held().await;
        self.inner().close().await
    }
}

#[async_trait]
impl Subscriber for ChaosBackend {
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        let c = ChaosConsumer::open(self.clone(), sub).await?;
        Ok(Box::new(c))
    }
}

#[async_trait]
impl Requester for ChaosBackend {
    async fn request(&self, mut msg: Message, timeout: Duration) -> Result<Message> {
        let (subject, id) = Self::site_parts(&msg);
        let site = Site {
            point: Point::Publish,
            subject: Some(&subject),
            group: self.shared.label.as_deref(),
            message_id: Some(&id),
        };
        let fits = |f: &Fault| {
            !matches!(
                f,
                Fault::Duplicate | Fault::Hold { .. } | Fault::Restart { .. }
            )
        };
        match self.shared.faults.decide_where(&site, fits) {
            Verdict::Delay(d) => tokio::time::sleep(d).await,
            Verdict::Drop | Verdict::LieDrop => {
                tokio::time::sleep(timeout).await;
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("chaos: the request was lost; no reply within {timeout:?}"),
                ));
            }
            Verdict::Corrupt(n) => {
                flip_bit(&mut msg, n);
            }
            Verdict::Error(k) => return Err(Error::new(k, "chaos: injected request error")),
            Verdict::Partition(PartitionMode::Fail) => return Err(partitioned()),
            Verdict::Partition(PartitionMode::Hang) => {
                if tokio::time::timeout(timeout, self.shared.faults.wait_healed(&site))
                    .await
                    .is_err()
                {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("chaos: partitioned; no reply within {timeout:?}"),
                    ));
                }
            }
            Verdict::Pass | Verdict::Duplicate | Verdict::Hold(_) | Verdict::Restart(_) => {}
        }
        self.live()?.request(msg, timeout).await
    }
}

impl Backend for ChaosBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }
    fn name(&self) -> &str {
        &self.shared.name
    }
}

impl std::fmt::Debug for ChaosBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaosBackend")
            .field("name", &self.shared.name)
            .field("label", &self.shared.label)
            .finish()
    }
}

#[cfg(test)]
mod tests;
