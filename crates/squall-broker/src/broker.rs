//! [`Broker`]: the handle users hold; routing of subjects to streams; publish; request-reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{
    Backend, Capabilities, Consumer, Durability, Error, ErrorKind, Message, PendingAck, PublishAck,
    Publisher, Requester, Result, Subject, Subscriber, Subscription, Support, headers,
};
use tokio::sync::{broadcast, oneshot};

use crate::clock::Clock;
use crate::config::{BrokerConfig, StreamConfig};
use crate::events::BrokerEvent;
use crate::group::{Ctx, DeadLetterJob, Group};
use crate::storage::{MemoryStorage, Storage};
use crate::stream::{Appended, Stream, StreamStats};

/// Subjects with this first token are request-reply inboxes: never stored, routed to the waiting
/// requester.
pub const INBOX_PREFIX: &str = "_inbox";

/// The embedded broker. Cheap to clone; every clone is the same broker.
///
/// ```
/// use squall_broker::Broker;
/// use squall_core::{Message, Publisher, Subscriber, Subscription};
///
/// # tokio_test_block_on(async {
/// let broker = Broker::builder().open()?;
/// let mut consumer = broker.subscribe(Subscription::new("orders.>")?.group("billing")?).await?;
/// broker.publish(Message::builder("orders.created")?.payload("hi").build()).await?;
/// let delivery = consumer.next().await.expect("open")?;
/// assert_eq!(&delivery.message().payload()[..], b"hi");
/// delivery.ack().await?;
/// # Ok::<(), squall_core::Error>(()) });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
///
/// ## Handles
/// Clones share one *handle*. [`Broker::handle`] makes another, as a client would open another
/// connection: [`Publisher::close`] closes only its handle (its sends fail with
/// [`ErrorKind::Closed`], consumers opened through it end), while [`Broker::close`] closes the
/// broker for everyone.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
    handle: Arc<AtomicBool>,
}

pub(crate) struct Routes {
    pub by_name: HashMap<String, Arc<Stream>>,
    /// Streams that capture their subjects explicitly, in creation order.
    pub explicit: Vec<Arc<Stream>>,
    /// The catch-all stream.
    pub fallback: Option<Arc<Stream>>,
}

pub(crate) struct Inner {
    pub clock: Clock,
    pub storage: Arc<dyn Storage>,
    pub config: BrokerConfig,
    pub routes: RwLock<Routes>,
    pub inboxes: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    nonce: AtomicU64,
    pub member_ids: AtomicU64,
    pub events: broadcast::Sender<BrokerEvent>,
    pub closed: AtomicBool,
}

/// Configures and opens a [`Broker`].
#[derive(Default)]
pub struct BrokerBuilder {
    storage: Option<Arc<dyn Storage>>,
    config: BrokerConfig,
    clock: Option<Clock>,
}

impl BrokerBuilder {
    /// Where streams are kept (default: a fresh [`MemoryStorage`]).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }
    /// Broker-wide settings.
    pub fn config(mut self, config: BrokerConfig) -> Self {
        self.config = config;
        self
    }
    /// Largest payload accepted.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.config.max_payload = bytes;
        self
    }
    /// The clock (default: [`Clock::new`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Opens the broker: reloads the streams and durable groups the storage holds, then makes sure
    /// the default and dead-letter streams exist. Call within a tokio runtime.
    pub fn open(self) -> Result<Broker> {
        self.config.validate()?;
        let clock = self.clock.unwrap_or_default();
        let storage = self
            .storage
            .unwrap_or_else(|| MemoryStorage::new() as Arc<dyn Storage>);
        let (events, _) = broadcast::channel(self.config.event_capacity);
        let inner = Arc::new(Inner {
            nonce: AtomicU64::new(1),
            clock,
            storage,
            config: self.config,
            routes: RwLock::new(Routes {
                by_name: HashMap::new(),
                explicit: Vec::new(),
                fallback: None,
            }),
            inboxes: Mutex::new(HashMap::new()),
            member_ids: AtomicU64::new(1),
            events,
            closed: AtomicBool::new(false),
        });
        let broker = Broker {
            inner,
            handle: Arc::new(AtomicBool::new(false)),
        };
        broker.reload()?;
        let cfg = broker.inner.config.clone();
        if let Some(d) = cfg.dead_letter_stream {
            broker.create_stream(d)?;
        }
        if let Some(d) = cfg.default_stream {
            broker.create_stream(d)?;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(crate::sweeper::sweeper(Arc::downgrade(&broker.inner)));
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "Broker::open must be called within a tokio runtime",
                ));
            }
        }
        Ok(broker)
    }
}

impl Broker {
    /// Starts configuring a broker.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Broker {
        Broker {
            inner,
            handle: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A new handle on the same broker (see "Handles" above).
    pub fn handle(&self) -> Broker {
        Broker {
            inner: self.inner.clone(),
            handle: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn all_streams(&self) -> Vec<Arc<Stream>> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .values()
            .cloned()
            .collect()
    }

    /// An in-memory broker with default settings.
    pub fn in_memory() -> Result<Broker> {
        Broker::builder().open()
    }

    /// The broker's clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// A receiver of broker events (slow consumers, lease expiries, dead letters, drops).
    pub fn events(&self) -> broadcast::Receiver<BrokerEvent> {
        self.inner.events.subscribe()
    }

    fn reload(&self) -> Result<()> {
        let now = self.inner.clock.now();
        for (name, meta) in self.inner.storage.streams()? {
            let config: StreamConfig = serde_json::from_slice(&meta).map_err(|e| {
                Error::new(
                    ErrorKind::Storage,
                    format!("stream `{name}`: unreadable configuration"),
                )
                .with_source(e)
            })?;
            let store = self.inner.storage.open_stream(&name, &meta)?;
            let mut groups = HashMap::new();
            for (gname, snap) in store.consumers()? {
                let gname: Arc<str> = gname.into();
                match Group::restore(gname.clone(), snap, store.as_ref(), now) {
                    Ok(g) => {
                        self.inner
                            .nonce
                            .fetch_max(g.max_nonce() + 1, Ordering::Relaxed);
                        groups.insert(gname, g);
                    }
                    Err(e) => return Err(Error::new(ErrorKind::Storage, e)),
                }
            }
            let stream = Arc::new(Stream::new(config, store, groups));
            stream.rebuild_dedup(now)?;
            self.install(stream);
        }
        Ok(())
    }

    fn install(&self, stream: Arc<Stream>) {
        let mut routes = self.inner.routes.write().unwrap_or_else(|p| p.into_inner());
        let name = stream.name.to_string();
        let is_fallback = self
            .inner
            .config
            .default_stream
            .as_ref()
            .is_some_and(|d| d.name == name);
        routes.explicit.retain(|s| *s.name != *name);
        if is_fallback {
            routes.fallback = Some(stream.clone());
        } else {
            routes.explicit.push(stream.clone());
        }
        routes.by_name.insert(name, stream);
    }

    /// Creates a stream, or updates the limits of an existing one with the same subjects.
    /// Fails with [`ErrorKind::Conflict`] if its subjects overlap another stream's (the catch-all
    /// default stream excepted) or differ from the existing stream's.
    pub fn create_stream(&self, config: StreamConfig) -> Result<StreamStats> {
        config.validate()?;
        let existing = self.stream(&config.name);
        if let Some(s) = &existing {
            let mut st = s.lock();
            if st.config.subjects != config.subjects {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "stream `{}` exists with subjects {:?}",
                        config.name, st.config.subjects
                    ),
                ));
            }
            let meta = serde_json::to_vec(&config).expect("stream config serialises");
            self.inner.storage.open_stream(&config.name, &meta)?;
            st.config = config;
            return Ok(s.stats(&st, self.inner.clock.now()));
        }
        let is_fallback = self
            .inner
            .config
            .default_stream
            .as_ref()
            .is_some_and(|d| d.name == config.name);
        if !is_fallback {
            let routes = self.inner.routes.read().unwrap_or_else(|p| p.into_inner());
            for other in &routes.explicit {
                let st = other.lock();
                for a in &config.subjects {
                    if let Some(b) = st.config.subjects.iter().find(|b| a.overlaps(b)) {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "stream `{}`: subjects `{a}` overlap `{b}` of stream `{}`",
                                config.name, other.name
                            ),
                        ));
                    }
                }
            }
        }
        let meta = serde_json::to_vec(&config).expect("stream config serialises");
        let store = self.inner.storage.open_stream(&config.name, &meta)?;
        let stream = Arc::new(Stream::new(config, store, HashMap::new()));
        let stats = stream.stats(&stream.lock(), self.inner.clock.now());
        self.install(stream);
        Ok(stats)
    }

    /// Deletes a stream with its messages and groups.
    pub fn delete_stream(&self, name: &str) -> Result<()> {
        let mut routes = self.inner.routes.write().unwrap_or_else(|p| p.into_inner());
        let Some(s) = routes.by_name.remove(name) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no stream `{name}`"),
            ));
        };
        routes.explicit.retain(|x| !Arc::ptr_eq(x, &s));
        if routes.fallback.as_ref().is_some_and(|f| Arc::ptr_eq(f, &s)) {
            routes.fallback = None;
        }
        drop(routes);
        s.lock().groups.clear();
        s.notify.notify_waiters();
        self.inner.storage.delete_stream(name)?;
        Ok(())
    }

    pub(crate) fn stream(&self, name: &str) -> Option<Arc<Stream>> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .get(name)
            .cloned()
    }

    /// The stream that stores messages published to `subject`.
    pub(crate) fn route(&self, subject: &Subject) -> Result<Arc<Stream>> {
        let routes = self.inner.routes.read().unwrap_or_else(|p| p.into_inner());
        for s in &routes.explicit {
            if s.lock().config.subjects.iter().any(|p| p.matches(subject)) {
                return Ok(s.clone());
            }
        }
        routes.fallback.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no stream captures subject `{subject}`; create one, or enable the default stream (`broker.default_stream`)"),
            )
        })
    }

    /// Statistics of one stream (expired leases are processed first).
    pub async fn stream_stats(&self, name: &str) -> Result<StreamStats> {
        let s = self
            .stream(name)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no stream `{name}`")))?;
        let now = self.inner.clock.now();
        let (stats, jobs) = {
            let mut st = s.lock();
            let mut ctx = Ctx::new(&s.name, s.store.as_ref());
            for g in st.groups.values_mut() {
                g.expire_leases(now, &mut ctx);
                g.flush_ops(s.store.as_ref())?;
            }
            let jobs = std::mem::take(&mut ctx.jobs);
            self.report_expired(&s, ctx.expired_leases);
            (s.stats(&st, now), jobs)
        };
        if jobs.is_empty() {
            return Ok(stats);
        }
        // A failed join means the task panicked; the job's messages are requeued on expiry.
        let _ = self.dead_letter(s.clone(), jobs).await;
        let st = s.lock();
        Ok(s.stats(&st, self.inner.clock.now()))
    }

    /// Statistics of every stream, by name.
    pub async fn stats(&self) -> Result<Vec<StreamStats>> {
        let mut names: Vec<String> = self
            .inner
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .keys()
            .cloned()
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(self.stream_stats(&n).await?);
        }
        Ok(out)
    }

    pub(crate) fn next_nonce(&self) -> u64 {
        self.inner.nonce.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn emit(&self, event: BrokerEvent) {
        // No receiver is fine: events are advisory.
        let _ = self.inner.events.send(event);
    }

    pub(crate) fn report_expired(&self, s: &Stream, expired: Vec<(Arc<str>, u64, u32)>) {
        for (group, sequence, attempts) in expired {
            metrics::counter!("squall_lease_expired_total", "stream" => s.name.to_string())
                .increment(1);
            tracing::debug!(stream = %s.name, %group, sequence, attempts, "lease expired");
            self.emit(BrokerEvent::LeaseExpired {
                stream: s.name.to_string(),
                group: group.to_string(),
                sequence,
                attempts,
            });
        }
    }

    /// Publishes dead letters prepared under the lock, then settles (or requeues) their originals.
    ///
    /// Runs in its own task, so that a caller whose future is dropped mid-way (a `select!`, a
    /// `now_or_never`) cannot leave a message marked as being dead-lettered forever: the job
    /// always finishes. Callers await the returned handle to observe completion.
    pub(crate) fn dead_letter(
        &self,
        s: Arc<Stream>,
        jobs: Vec<DeadLetterJob>,
    ) -> tokio::task::JoinHandle<()> {
        let broker = self.clone();
        tokio::spawn(async move { broker.run_dead_letters(&s, jobs).await })
    }

    async fn run_dead_letters(&self, s: &Stream, jobs: Vec<DeadLetterJob>) {
        for job in jobs {
            let result = match self.send_message(job.message).await {
                Ok(p) => p.await,
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                tracing::error!(stream = %s.name, group = %job.group, seq = job.seq, to = %job.to,
                    "dead letter not published, will retry: {e}");
            }
            let now = self.inner.clock.now();
            let mut st = s.lock();
            if let Some(g) = st.groups.get_mut(&job.group) {
                g.finish_dead_letter(job.seq, result.is_ok(), now);
                if let Err(e) = g.flush_ops(s.store.as_ref()) {
                    tracing::error!(stream = %s.name, group = %job.group, "recording progress failed: {e}");
                }
            }
            if result.is_ok() {
                if let Err(e) = s.remove_consumed(&st) {
                    tracing::warn!(stream = %s.name, "work-queue removal failed: {e}");
                }
                metrics::counter!("squall_dead_lettered_total", "stream" => s.name.to_string())
                    .increment(1);
                self.emit(BrokerEvent::DeadLettered {
                    stream: s.name.to_string(),
                    group: job.group.to_string(),
                    sequence: job.seq,
                    reason: job.reason,
                });
            }
            drop(st);
            s.notify.notify_waiters();
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::closed("broker handle"));
        }
        Ok(())
    }

    pub(crate) async fn send_message(&self, msg: Message) -> Result<PendingAck> {
        self.check_open()?;
        if msg.payload().len() > self.inner.config.max_payload {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "payload of {} bytes exceeds the limit of {} (set `broker.max_payload`)",
                    msg.payload().len(),
                    self.inner.config.max_payload
                ),
            ));
        }
        if msg.subject().tokens().next() == Some(INBOX_PREFIX) {
            return Ok(PendingAck::ready(self.deliver_to_inbox(msg)));
        }
        let stream = self.route(msg.subject())?;
        let name = stream.name.to_string();
        match stream.append(&msg, self.inner.clock.now())? {
            Appended::Duplicate { seq } => {
                // The original's durability may still be pending; never claim more than the store
                // guarantees for a record it has accepted without an explicit barrier.
                let durability = stream.store.durability().min(Durability::Written);
                Ok(PendingAck::ready(Ok(PublishAck {
                    stream: Some(name),
                    sequence: seq,
                    durability,
                    duplicate: true,
                })))
            }
            Appended::Stored {
                seq,
                commit,
                dropped,
            } => {
                if dropped > 0 {
                    self.emit(BrokerEvent::RetentionDropped {
                        stream: name.clone(),
                        count: dropped,
                    });
                }
                self.pending_ack(name, seq, commit)
            }
        }
    }

    fn pending_ack(
        &self,
        name: String,
        seq: u64,
        commit: crate::storage::Commit,
    ) -> Result<PendingAck> {
        match commit {
            crate::storage::Commit::Done(durability) => Ok(PendingAck::ready(Ok(PublishAck {
                stream: Some(name),
                sequence: seq,
                durability,
                duplicate: false,
            }))),
            pending => Ok(PendingAck::future(async move {
                let durability = pending.wait().await.map_err(Error::from)?;
                Ok(PublishAck {
                    stream: Some(name),
                    sequence: seq,
                    durability,
                    duplicate: false,
                })
            })),
        }
    }

    fn deliver_to_inbox(&self, msg: Message) -> Result<PublishAck> {
        let waiter = self
            .inner
            .inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(msg.subject().as_str());
        match waiter.map(|tx| tx.send(msg).is_ok()) {
            Some(true) => Ok(PublishAck {
                stream: None,
                sequence: 0,
                durability: Durability::Memory,
                duplicate: false,
            }),
            _ => Err(Error::new(
                ErrorKind::NoResponders,
                "nobody waits on this reply subject (the requester may have timed out)",
            )),
        }
    }

    /// Whether some live subscription would receive `subject`.
    fn has_responders(&self, stream: &Stream, subject: &Subject) -> bool {
        stream
            .lock()
            .groups
            .values()
            .any(|g| !g.members.is_empty() && g.config.pattern.matches(subject))
    }

    /// Stops the broker for every handle: publishes fail with [`ErrorKind::Closed`], consumers
    /// end, the sweeper stops, stores are synced.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let streams: Vec<Arc<Stream>> = self
            .inner
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .values()
            .cloned()
            .collect();
        let mut first_err = None;
        for s in streams {
            {
                let mut st = s.lock();
                for g in st.groups.values_mut() {
                    if let Err(e) = g.flush_ops(s.store.as_ref()) {
                        first_err.get_or_insert(e);
                    }
                }
            }
            s.notify.notify_waiters();
            if let Err(e) = s.store.sync() {
                first_err.get_or_insert(e);
            }
        }
        self.inner
            .inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Whether the broker, or this handle, was closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) || self.handle.load(Ordering::Acquire)
    }

    /// Whether the broker itself was closed (by any handle's [`Broker::close`]).
    pub fn is_broker_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Publisher for Broker {
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        self.send_message(msg).await
    }

    /// Brings every stream to its durability (an fsync barrier for log storage in fsync mode).
    async fn flush(&self) -> Result<()> {
        let streams: Vec<Arc<Stream>> = self
            .inner
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .values()
            .cloned()
            .collect();
        for s in streams {
            let store = s.store.clone();
            tokio::task::spawn_blocking(move || store.sync())
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Internal, "sync task failed").with_source(e)
                })??;
        }
        Ok(())
    }

    /// Closes this handle (and its clones): later sends fail with [`ErrorKind::Closed`] and its
    /// consumers end. Other handles and the broker go on; see [`Broker::close`] for the broker.
    async fn close(&self) -> Result<()> {
        if !self.handle.swap(true, Ordering::AcqRel) {
            for s in self.all_streams() {
                s.notify.notify_waiters();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for Broker {
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(crate::consumer::BrokerConsumer::open(
            self.clone(),
            sub,
        )?))
    }
}

#[async_trait]
impl Requester for Broker {
    async fn request(&self, mut msg: Message, timeout: Duration) -> Result<Message> {
        self.check_open()?;
        let stream = self.route(msg.subject())?;
        if !self.has_responders(&stream, msg.subject()) {
            return Err(Error::new(
                ErrorKind::NoResponders,
                format!("no subscriber for `{}`", msg.subject()),
            ));
        }
        let inbox = format!("{INBOX_PREFIX}.{}", squall_core::MessageId::generate());
        let (tx, rx) = oneshot::channel();
        self.inner
            .inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(inbox.clone(), tx);
        let correlation = msg
            .correlation_id()
            .map(str::to_string)
            .unwrap_or_else(|| msg.id().to_string());
        let prepared = msg
            .headers_mut()
            .insert(headers::REPLY_TO, &inbox)
            .and_then(|()| {
                msg.headers_mut()
                    .insert(headers::CORRELATION_ID, &correlation)
            });
        let result = match prepared {
            Ok(()) => match self.publish(msg).await {
                Ok(_) => match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(_)) => Err(Error::closed("broker")),
                    Err(_) => Err(Error::new(
                        ErrorKind::Timeout,
                        format!("no reply within {timeout:?}"),
                    )),
                },
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.inner
            .inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&inbox);
        result
    }
}

impl Backend for Broker {
    fn capabilities(&self) -> Capabilities {
        let durability = self
            .inner
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .values()
            .map(|s| s.store.durability())
            .max()
            .unwrap_or(Durability::Memory);
        let mut caps = Capabilities::all_native(self.inner.config.max_payload, durability);
        if self.inner.storage.kind() == "memory" {
            caps.persistence = Support::Missing;
        }
        caps
    }

    fn name(&self) -> &str {
        "embedded"
    }
}
