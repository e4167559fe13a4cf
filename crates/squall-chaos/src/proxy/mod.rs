//! A TCP fault proxy: put it between any client and any broker and degrade the link.
//!
//! [`Proxy::start`] listens, connects each accepted client to the upstream address, and copies
//! bytes both ways through a fixed buffer. [`ProxyFault`]s, added and removed while connections
//! are live, act per direction ([`Direction::Upstream`] is client → server):
//!
//! | kind | effect |
//! |---|---|
//! | `latency` | each chunk is forwarded `latency ± jitter` after it was read (order kept) |
//! | `bandwidth` | at most `bytes_per_sec` forwarded (token bucket) |
//! | `blackhole` | nothing forwarded, nothing read: the connection stays open and data waits in kernel buffers plus at most [`MAX_QUEUED_CHUNKS`] × [`CHUNK`] bytes here; after removal it flows again, intact |
//! | `reset` | every connection is closed with a TCP RST (linger 0) at once, and new ones right after accept, while the fault is installed |
//! | `slow_close` | a peer's close (FIN) is passed on `delay` later |
//! | `slicer` | writes are cut into pieces of `average ± variation` bytes with `delay` between them |
//!
//! [`ProxyHandle::down`] stops listening (new connections are refused) and closes every
//! connection; [`ProxyHandle::up`] listens again on the same address. [`ProxyHandle::reset_connections`]
//! resets the current connections once. [`api`] serves all of it over HTTP. A connection that
//! is cut (reset or closed) forwards nothing more from that instant, not even what a blackhole
//! removed right after the cut was holding.
//!
//! Bounds: at most `max_connections` connections (more are reset at accept and counted in
//! [`ProxyStats::refused`]); per direction one [`CHUNK`]-byte read buffer and at most
//! [`MAX_QUEUED_CHUNKS`] chunks in flight.

pub mod api;
mod conn;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::rng::Seed;

/// The copy buffer per direction, in bytes.
pub const CHUNK: usize = 16 * 1024;
/// Chunks read but not yet written, per direction, at most.
pub const MAX_QUEUED_CHUNKS: usize = 8;
/// Default bound on concurrent connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client to server.
    Upstream,
    /// Server to client.
    Downstream,
    /// Both ways.
    #[default]
    Both,
}

impl Direction {
    fn covers(self, flow: Direction) -> bool {
        self == Direction::Both || self == flow
    }
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
            Direction::Both => "both",
        }
    }
}

/// What a proxy fault does; see the table in the module docs. Unknown keys are refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// Delay every chunk.
    Latency {
        /// Base delay.
        #[serde(with = "humantime_serde")]
        latency: Duration,
        /// Uniform spread around it (clamped at zero).
        #[serde(default, with = "humantime_serde")]
        jitter: Duration,
    },
    /// Limit throughput.
    Bandwidth {
        /// Bytes per second (at least 1).
        bytes_per_sec: u64,
    },
    /// Forward nothing, keep the connection.
    Blackhole,
    /// Reset every connection, existing and new.
    Reset,
    /// Pass a close on late.
    SlowClose {
        /// How late.
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// Cut writes into small pieces.
    Slicer {
        /// Mean piece size in bytes (at least 1).
        average: usize,
        /// Uniform spread of the size.
        #[serde(default)]
        variation: usize,
        /// Pause between pieces.
        #[serde(default, with = "humantime_serde")]
        delay: Duration,
    },
}

/// A named fault on one proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyFault {
    /// Unique per proxy.
    pub name: String,
    /// Which way it acts (ignored by `reset`).
    #[serde(default)]
    pub direction: Direction,
    /// What it does.
    #[serde(flatten)]
    pub kind: FaultKind,
}

impl ProxyFault {
    /// A fault acting both ways.
    pub fn new(name: impl Into<String>, kind: FaultKind) -> Self {
        ProxyFault {
            name: name.into(),
            direction: Direction::Both,
            kind,
        }
    }
    /// Acting only in `direction`.
    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Checks the name and the parameters (what [`ProxyHandle::add_fault`] refuses).
    pub fn validate(&self) -> Result<(), ProxyError> {
        let bad = |m: &str| Err(ProxyError::Invalid(format!("fault `{}`: {m}", self.name)));
        match self.kind {
            _ if self.name.is_empty() => bad("a fault needs a name"),
            FaultKind::Bandwidth { bytes_per_sec: 0 } => bad("bytes_per_sec must be at least 1"),
            FaultKind::Slicer { average: 0, .. } => bad("average must be at least 1"),
            _ => Ok(()),
        }
    }
}

/// Why a proxy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A name is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// A name is unknown.
    #[error("{0} not found")]
    NotFound(String),
    /// A definition is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Binding or accepting failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Counters of one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ProxyStats {
    /// Connections accepted and connected upstream.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections reset at accept (the bound, an upstream that refused, or a `reset` fault).
    pub refused: u64,
    /// Bytes forwarded client → server.
    pub bytes_up: u64,
    /// Bytes forwarded server → client.
    pub bytes_down: u64,
}

/// Builds and starts a [`ProxyHandle`].
#[derive(Debug, Clone)]
pub struct Proxy {
    name: String,
    listen: SocketAddr,
    upstream: String,
    seed: Seed,
    max_connections: usize,
}

impl Proxy {
    /// A proxy from `listen` (port 0: any free port) to `upstream` (`host:port`, resolved at
    /// each connection).
    pub fn new(listen: SocketAddr, upstream: impl Into<String>) -> Self {
        Proxy {
            name: "proxy".into(),
            listen,
            upstream: upstream.into(),
            seed: Seed::new(0),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
    /// Names it (reports, metrics, the HTTP API).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// The run's seed (jitter and slice sizes are drawn from it).
    pub fn seed(mut self, seed: Seed) -> Self {
        self.seed = seed;
        self
    }
    /// Bounds concurrent connections.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Starts a proxy with the defaults (name `proxy`, seed 0).
    pub async fn start(
        listen: SocketAddr,
        upstream: impl Into<String>,
    ) -> Result<ProxyHandle, ProxyError> {
        Proxy::new(listen, upstream).spawn().await
    }

    /// Binds and starts accepting.
    pub async fn spawn(self) -> Result<ProxyHandle, ProxyError> {
        let listener = TcpListener::bind(self.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: self.name,
            addr,
            upstream: self.upstream,
            seed: self.seed,
            max_connections: self.max_connections,
            faults: watch::Sender::new(Arc::new(Vec::new())),
            conns: Mutex::new(HashMap::new()),
            ended: tokio::sync::Notify::new(),
            next_conn: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            acceptor: Mutex::new(None),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        });
        shared.start_accepting(listener);
        Ok(ProxyHandle {
            inner: Arc::new(HandleInner { shared }),
        })
    }
}

/// How a connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// FIN both ways.
    Close,
    /// RST both ways.
    Reset,
}

/// Control of one live connection.
pub(crate) struct ConnCtl {
    pub(crate) cut: CancellationToken,
    /// The first cut's kind wins.
    pub(crate) how: Mutex<Option<Cut>>,
}

impl ConnCtl {
    pub(crate) fn cut(&self, how: Cut) {
        self.how
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(how);
        self.cut.cancel();
    }
    pub(crate) fn how(&self) -> Option<Cut> {
        *self.how.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct Shared {
    pub(crate) name: String,
    addr: SocketAddr,
    pub(crate) upstream: String,
    pub(crate) seed: Seed,
    max_connections: usize,
    /// The installed faults; pumps read a snapshot per chunk and wait on changes.
    pub(crate) faults: watch::Sender<Arc<Vec<ProxyFault>>>,
    /// Live connections, removed by their task when it ends.
    pub(crate) conns: Mutex<HashMap<u64, Arc<ConnCtl>>>,
    /// Signalled each time a connection ends.
    ended: tokio::sync::Notify,
    next_conn: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) bytes_up: AtomicU64,
    pub(crate) bytes_down: AtomicU64,
    /// The accept task while up; `None` while down.
    acceptor: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    /// Every accept and connection task, waited for by `stop`.
    pub(crate) tasks: TaskTracker,
    /// Stops everything.
    pub(crate) stop: CancellationToken,
}

impl Shared {
    pub(crate) fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnCtl>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_accepting(self: &Arc<Self>, listener: TcpListener) {
        let token = self.stop.child_token();
        let me = self.clone();
        let t = token.clone();
        let task = self
            .tasks
            .spawn(async move { me.accept_loop(listener, t).await });
        *self.acceptor.lock().unwrap_or_else(|p| p.into_inner()) = Some((token, task));
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(proxy = %self.name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let resetting = self
                .faults
                .borrow()
                .iter()
                .any(|f| f.kind == FaultKind::Reset);
            if resetting || self.conns().len() >= self.max_connections {
                self.refused.fetch_add(1, Ordering::Relaxed);
                conn::reset(stream);
                continue;
            }
            let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
            let ctl = Arc::new(ConnCtl {
                cut: self.stop.child_token(),
                how: Mutex::new(None),
            });
            self.conns().insert(id, ctl.clone());
            let me = self.clone();
            self.tasks.spawn(async move {
                conn::serve(&me, id, stream, &ctl).await;
                me.conns().remove(&id);
                me.ended.notify_waiters();
            });
        }
    }

    pub(crate) fn cut_all(&self, how: Cut) {
        for c in self.conns().values() {
            c.cut(how);
        }
    }
}

struct HandleInner {
    shared: Arc<Shared>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// Controls a running proxy. Cheap to clone; the proxy stops when the last clone is dropped
/// (or at [`stop`](Self::stop)).
#[derive(Clone)]
pub struct ProxyHandle {
    inner: Arc<HandleInner>,
}

impl ProxyHandle {
    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The proxy's name.
    pub fn name(&self) -> &str {
        &self.shared().name
    }
    /// Where it listens (clients connect here).
    pub fn listen_addr(&self) -> SocketAddr {
        self.shared().addr
    }
    /// Where it connects.
    pub fn upstream(&self) -> &str {
        &self.shared().upstream
    }

    /// Installs a fault; it acts on live connections at once.
    pub fn add_fault(&self, fault: ProxyFault) -> Result<(), ProxyError> {
        fault.validate()?;
        let mut result = Ok(());
        let is_reset = fault.kind == FaultKind::Reset;
        self.shared().faults.send_if_modified(|fs| {
            if fs.iter().any(|f| f.name == fault.name) {
                result = Err(ProxyError::Exists(format!("fault `{}`", fault.name)));
                return false;
            }
            let mut v = (**fs).clone();
            v.push(fault.clone());
            *fs = Arc::new(v);
            true
        });
        if result.is_ok() && is_reset {
            self.shared().cut_all(Cut::Reset);
        }
        result
    }

    /// Removes a fault; false if there was none of that name.
    pub fn remove_fault(&self, name: &str) -> bool {
        self.shared().faults.send_if_modified(|fs| {
            if !fs.iter().any(|f| f.name == name) {
                return false;
            }
            *fs = Arc::new(fs.iter().filter(|f| f.name != name).cloned().collect());
            true
        })
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.shared().faults.send_replace(Arc::new(Vec::new()));
    }

    /// The installed faults.
    pub fn faults(&self) -> Vec<ProxyFault> {
        self.shared().faults.borrow().as_ref().clone()
    }

    /// Stops listening (new connections are refused) and closes every connection.
    pub async fn down(&self) {
        let acceptor = self
            .shared()
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((token, task)) = acceptor {
            token.cancel();
            let _ = task.await;
        }
        self.shared().cut_all(Cut::Close);
    }

    /// Listens again on the same address (a no-op if up).
    pub async fn up(&self) -> Result<(), ProxyError> {
        if !self.is_down() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.shared().addr).await?;
        let acceptor = self
            .shared()
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if acceptor.is_none() {
            drop(acceptor);
            self.shared().start_accepting(listener);
        }
        Ok(())
    }

    /// Whether it is down.
    pub fn is_down(&self) -> bool {
        self.shared()
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Resets (RST) every current connection once.
    pub fn reset_connections(&self) {
        self.shared().cut_all(Cut::Reset);
    }

    /// The counters.
    pub fn stats(&self) -> ProxyStats {
        let s = self.shared();
        ProxyStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            active: s.conns().len() as u64,
            refused: s.refused.load(Ordering::Relaxed),
            bytes_up: s.bytes_up.load(Ordering::Relaxed),
            bytes_down: s.bytes_down.load(Ordering::Relaxed),
        }
    }

    /// Waits until no connection is open, at most `within`; whether none is. Clients that
    /// were closed end their connections on their own: waiting for that before [`Self::stop`]
    /// keeps a client library still tearing its connection down from taking the stop for an
    /// outage (async-nats 0.51 would then reconnect for ever).
    pub async fn until_idle(&self, within: Duration) -> bool {
        let s = self.shared();
        let idle = async {
            loop {
                let ended = s.ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if s.conns().is_empty() {
                    return;
                }
                ended.await;
            }
        };
        tokio::time::timeout(within, idle).await.is_ok()
    }

    /// Stops accepting, closes every connection and waits for its tasks (at most 5 s).
    pub async fn stop(&self) {
        let s = self.shared();
        s.stop.cancel();
        s.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.tasks.wait()).await;
    }
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("name", &self.name())
            .field("listen", &self.listen_addr())
            .field("upstream", &self.upstream())
            .finish()
    }
}
