//! A real `squall serve` for the client's integration tests: a [`squall_server::Server`] on
//! 127.0.0.1 (port 0 at first), over a [`MemoryStorage`] that outlives restarts, so a restart on
//! the same port brings back the same streams and durable groups.

#![allow(dead_code)] // each test crate uses a different part

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use squall_broker::Broker;
use squall_broker::storage::MemoryStorage;
use squall_client::{Client, ClientConfig, ConnectionState, ReconnectPolicy};
use squall_core::{Error, ErrorKind, Result};
use squall_server::{Server, ServerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server and what it needs to be restarted on the same port and storage.
pub struct TestServer {
    pub addr: SocketAddr,
    pub storage: Arc<MemoryStorage>,
    pub broker: Broker,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<()>>>,
}

fn server_config(listen: SocketAddr) -> ServerConfig {
    ServerConfig {
        listen,
        heartbeat: Duration::from_millis(500),
        shutdown_grace: Duration::from_millis(500),
        ..ServerConfig::default()
    }
}

impl TestServer {
    /// A fresh storage and a server on a free port.
    pub async fn start() -> TestServer {
        let storage = MemoryStorage::new();
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), storage)
            .await
            .expect("starting the test server")
    }

    async fn start_on(listen: SocketAddr, storage: Arc<MemoryStorage>) -> Result<TestServer> {
        let broker = Broker::builder().storage(storage.clone()).open()?;
        // The old listener may take a moment to let go of the port.
        let mut tries = 0;
        let server = loop {
            match Server::bind(server_config(listen), broker.clone()).await {
                Ok(s) => break s,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("rebinding {listen}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Ok(TestServer {
            addr,
            storage,
            broker,
            shutdown,
            task: Some(task),
        })
    }

    /// Stops the server (Goodbye to every client, drain, close) and closes its broker.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let done = tokio::time::timeout(Duration::from_secs(10), task).await;
            done.expect("the server stops within its grace period")
                .expect("server task")
                .expect("server run");
        }
        self.broker.close().await.expect("closing the broker");
    }

    /// Starts again on the same port and storage (after [`stop`](Self::stop)).
    pub async fn restart(&mut self) -> Result<()> {
        if self.task.is_some() {
            self.stop().await;
        }
        *self = Self::start_on(self.addr, self.storage.clone()).await?;
        Ok(())
    }

    /// A client configuration for this server with short timeouts and a quick reconnect.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(format!("squall://{}", self.addr));
        c.connect_timeout = Duration::from_secs(2);
        c.request_timeout = Duration::from_secs(10);
        c.reconnect = ReconnectPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            jitter: true,
            max_attempts: None,
        };
        c
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.client_config())
            .await
            .expect("connecting to the test server")
    }
}

/// Waits until `client` reports a state matching `pred`, at most `within`.
pub async fn wait_state(
    client: &Client,
    within: Duration,
    pred: impl Fn(&ConnectionState) -> bool,
) -> Result<()> {
    let mut state = client.state();
    let reached = tokio::time::timeout(within, state.wait_for(|s| pred(s)))
        .await
        .map(|r| r.is_ok());
    match reached {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::closed("the client's connection task")),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "client state still {} after {within:?}",
                *client.state().borrow()
            ),
        )),
    }
}

/// Waits until `client` has reconnected more than `before` times and is connected.
pub async fn wait_reconnected(client: &Client, before: u64, within: Duration) -> Result<()> {
    let mut state = client.state();
    let reconnected = async {
        loop {
            if client.reconnects() > before && client.is_connected() {
                return Ok(());
            }
            if state.changed().await.is_err() {
                return Err(Error::closed("the client's connection task"));
            }
        }
    };
    tokio::time::timeout(within, reconnected)
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("the client did not reconnect within {within:?}"),
            ))
        })
}

/// A TCP proxy in front of the server that can cut every connection at once and refuse new
/// ones, as a crash or a partition would (no Goodbye, frames lost mid-flight), or swallow what
/// the server sends (acks lost while the server keeps storing).
pub struct Proxy {
    pub addr: SocketAddr,
    /// Bumped by every cut; a connection ends when it changes.
    generation: tokio::sync::watch::Sender<u64>,
    /// Read-locked by every forwarding write, which checks the generation under it; a cut
    /// takes it for writing to bump the generation, so once `cut` returns nothing of an older
    /// connection is forwarded any more.
    gate: Arc<tokio::sync::RwLock<()>>,
    accepting: Arc<std::sync::atomic::AtomicBool>,
    mute: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, gen_rx) = tokio::sync::watch::channel(0u64);
        let accepting = Arc::new(AtomicBool::new(true));
        let mute = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let (open, muted, gates) = (accepting.clone(), mute.clone(), gate.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !open.load(SeqCst) {
                    continue; // refused: dropped at once
                }
                let mut cut = gen_rx.clone();
                let born = *cut.borrow_and_update();
                let now = cut.clone();
                let (muted, gate) = (muted.clone(), gates.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let never = Arc::new(AtomicBool::new(false));
                    tokio::select! {
                        _ = pipe(cr, sw, never, (&gate, &now, born)) => {}
                        _ = pipe(sr, cw, muted, (&gate, &now, born)) => {}
                        _ = cut.wait_for(|g| *g != born) => {} // cut: every socket dropped
                    }
                });
            }
        });
        Proxy {
            addr,
            generation,
            gate,
            accepting,
            mute,
            task,
        }
    }

    /// Drops every connection and refuses new ones.
    /// Once this returns, nothing more passes on the connections cut (a write under way
    /// finishes first).
    pub async fn cut(&self) {
        self.accepting
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let _gate = self.gate.write().await;
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn revive(&self) {
        self.accepting
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Swallows (or again forwards) everything the server sends. Unmuting is for connections
    /// made afterwards: one that has swallowed bytes never forwards again (its stream would
    /// resume mid-frame, and an ack held up in it could slip through before a `cut` that
    /// follows takes effect).
    pub fn mute_server(&self, mute: bool) {
        self.mute.store(mute, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    muted: Arc<std::sync::atomic::AtomicBool>,
    (gate, generation, born): (
        &tokio::sync::RwLock<()>,
        &tokio::sync::watch::Receiver<u64>,
        u64,
    ),
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let mut swallowed = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if swallowed || muted.load(std::sync::atomic::Ordering::SeqCst) {
            swallowed = true;
            continue;
        }
        let open = gate.read().await;
        if *generation.borrow() != born || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        drop(open);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
