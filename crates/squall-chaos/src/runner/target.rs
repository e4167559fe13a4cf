//! The system under test, behind one trait: where the runner gets its clients and applies
//! process faults.
//!
//! The runner never builds clients or processes itself; it asks a [`Target`], which a
//! [`TargetFactory`] opens from the scenario. Built in ([`open_builtin`]):
//! - [`ServeTarget`]: a `squall serve` child the lab starts on a fresh data directory and a free
//!   loopback port; process faults act on that child by PID, never on anything else;
//! - [`UrlTarget`]: a squall server that is already running (no process faults).
//!
//! Another broker plugs in as another [`Target`]: a factory that opens, say, a NATS adapter for
//! a `--backend nats://...` URL, with the scenario's start and stop commands
//! ([`crate::process::ExternalBroker`]) for its process faults, goes into
//! [`RunOptions::target`](super::RunOptions::target) and the runner uses it unchanged — clients
//! through fault proxies included, as long as [`Target::endpoint`] names the TCP address the
//! clients dial.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use squall_client::{Client, ClientConfig, WhenDisconnected};
use squall_core::Backend;

use super::{RunError, RunOptions};
use crate::process::{ManagedProcess, ProcessSpec};
use crate::scenario::{Action, Scenario, TargetKind};

/// The system under test.
#[async_trait]
pub trait Target: Send + Sync {
    /// What is tested, for the report (`squall serve (fsync, 127.0.0.1:4470)`).
    fn describe(&self) -> String;

    /// The TCP address (`host:port`) clients dial: what a fault proxy in front of the target
    /// forwards to. `None`: there is no single such address, so scenarios with a proxy are
    /// refused.
    fn endpoint(&self) -> Option<String>;

    /// A new client of the target, dialling `via` (a fault proxy's listening address) instead
    /// of the target's own address when given. `name` says which side it serves (`producers`,
    /// `consumers`, `observer`). The client should reconnect by itself and hold publishes while
    /// disconnected, as a resilient application's client does: the lab measures how the system
    /// recovers, not how fast a client gives up.
    async fn connect(&self, via: Option<&str>, name: &str) -> Result<Arc<dyn Backend>, RunError>;

    /// Applies a process fault. Targets without process control answer
    /// [`RunError::Unsupported`].
    async fn act(&mut self, action: Action) -> Result<(), RunError>;

    /// Stops what the target started; a no-op for what it did not.
    async fn shutdown(&mut self);
}

/// Opens the target of a scenario.
pub type TargetFactory = Arc<
    dyn Fn(&Scenario, &RunOptions) -> BoxFuture<'static, Result<Box<dyn Target>, RunError>>
        + Send
        + Sync,
>;

/// The built-in targets: `kind = "server"` → [`ServeTarget`], `kind = "url"` → [`UrlTarget`].
pub async fn open_builtin(s: &Scenario, opts: &RunOptions) -> Result<Box<dyn Target>, RunError> {
    match s.target.kind {
        TargetKind::Server => Ok(Box::new(
            ServeTarget::start(opts.squall_bin.clone(), &s.target.sync).await?,
        )),
        TargetKind::Url => {
            let url =
                s.target.url.clone().ok_or_else(|| {
                    RunError::Target("target kind `url` needs `target.url`".into())
                })?;
            Ok(Box::new(UrlTarget::new(&url)?))
        }
    }
}

/// A squall client for the lab: waits for the server while disconnected and reconnects quickly
/// (recovery time is what the lab measures).
async fn squall_client(mut config: ClientConfig, name: &str) -> Result<Arc<dyn Backend>, RunError> {
    config.name = format!("squall-chaos-{name}");
    config.when_disconnected = WhenDisconnected::Wait;
    config.reconnect.max = Duration::from_millis(500);
    let addr = config.addr.clone();
    let c = Client::connect(config)
        .await
        .map_err(|e| RunError::Target(format!("connecting to {addr}: {e}")))?;
    Ok(Arc::new(c))
}

/// A `squall serve` child process on a fresh data directory and a free loopback port.
pub struct ServeTarget {
    process: ManagedProcess,
    addr: String,
    sync: String,
    _dir: tempfile::TempDir,
}

impl ServeTarget {
    /// Starts `bin serve` with storage `sync` (`fsync`, `buffered` or `memory`) and waits until
    /// it listens.
    pub async fn start(bin: PathBuf, sync: &str) -> Result<ServeTarget, RunError> {
        let dir = tempfile::Builder::new()
            .prefix("squall-chaos-")
            .tempdir()
            .map_err(super::io("creating the data directory"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(super::io("finding a free port"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut spec = ProcessSpec::new(bin)
            .args(["serve", "--admin", "off", "--sync", sync, "--listen", &addr])
            .ready_tcp(addr.clone())
            .ready_timeout(Duration::from_secs(20))
            .log_to(dir.path().join("serve.log"));
        if sync != "memory" {
            let data = dir.path().join("data");
            spec = spec.arg("--data").arg(data.display().to_string());
        }
        let process = ManagedProcess::start(spec)
            .await
            .map_err(|e| RunError::Target(e.to_string()))?;
        Ok(ServeTarget {
            process,
            addr,
            sync: sync.to_string(),
            _dir: dir,
        })
    }
}

#[async_trait]
impl Target for ServeTarget {
    fn describe(&self) -> String {
        format!("squall serve ({}, squall://{})", self.sync, self.addr)
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.addr.clone())
    }

    async fn connect(&self, via: Option<&str>, name: &str) -> Result<Arc<dyn Backend>, RunError> {
        squall_client(ClientConfig::new(via.unwrap_or(&self.addr)), name).await
    }

    async fn act(&mut self, action: Action) -> Result<(), RunError> {
        let p = &mut self.process;
        let r = match action {
            Action::Kill9 => p.kill9().await,
            Action::Pause => p.pause().await,
            Action::Resume => p.resume(),
            // After a kill: start the same command again (a no-op kill first).
            Action::Start | Action::Restart => p.restart().await,
        };
        r.map_err(|e| RunError::Target(format!("{action:?}: {e}")))
    }

    async fn shutdown(&mut self) {
        if let Err(e) = self.process.stop().await {
            tracing::warn!("stopping squall serve: {e}");
        }
    }
}

/// A squall server that is already running.
pub struct UrlTarget {
    config: ClientConfig,
    url: String,
}

impl UrlTarget {
    /// The server at `url` (`squall://host:port[?...]`).
    pub fn new(url: &str) -> Result<UrlTarget, RunError> {
        let config = ClientConfig::from_url(url).map_err(|e| RunError::Target(e.to_string()))?;
        Ok(UrlTarget {
            config,
            url: url.to_string(),
        })
    }
}

#[async_trait]
impl Target for UrlTarget {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.config.addr.clone())
    }

    async fn connect(&self, via: Option<&str>, name: &str) -> Result<Arc<dyn Backend>, RunError> {
        let mut config = self.config.clone();
        if let Some(addr) = via {
            config.addr = addr.to_string();
        }
        squall_client(config, name).await
    }

    async fn act(&mut self, action: Action) -> Result<(), RunError> {
        Err(RunError::Unsupported(format!(
            "{action:?}: the lab did not start {} and cannot signal it",
            self.url
        )))
    }

    async fn shutdown(&mut self) {}
}
