//! The system under test, behind one trait: where the runner gets its clients and applies
//! process faults.
//!
//! The runner never builds clients or processes itself; it asks a [`Target`], which a
//! [`TargetFactory`] opens from the scenario. Built in ([`open_builtin`]):
//! - [`ServeTarget`]: a `squall serve` child the lab starts on a fresh data directory and a free
//!   loopback port; process faults act on that child by PID, never on anything else;
//! - [`UrlTarget`]: a squall server that is already running (no process faults).
//!
//! Any other broker is an [`ExternalTarget`]: a URL (`nats://…`, `amqp://…`) reached through a
//! [`Connector`] the caller supplies, since this crate depends on no adapter, with the
//! scenario's start and stop commands ([`crate::process::ExternalBroker`]) for its process
//! faults. [`with_connector`] is the factory that opens all three kinds of `[target]`
//! (`server`, `url`, `external`); the `squall` CLI passes it its `backends::connect`, and
//! `squall chaos run --backend URL` opens an [`ExternalTarget`] for the URL whatever the
//! scenario's `[target]` says. Clients reach the broker through fault proxies as long as
//! [`Target::endpoint`] names the TCP address they dial.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use squall_client::{Client, ClientConfig, WhenDisconnected};
use squall_core::Backend;

use super::{RunError, RunOptions};
use crate::chaos_backend::Factory;
use crate::process::{ExternalBroker, ManagedProcess, ProcessSpec, Ready};
use crate::scenario::{Action, Scenario, TargetKind};

pub use super::external::{
    CommandNames, Connector, ExternalTarget, dials_advertised_address, host_port, redact, via,
};

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

    /// The reopen function of the `name` side's chaos wrapper: opens a fresh client as
    /// [`connect`](Self::connect) does, for message-level `restart` rules. `None` (the default):
    /// scenarios with restart rules are refused.
    fn reopener(&self, via: Option<&str>, name: &str) -> Option<Factory> {
        let _ = (via, name);
        None
    }

    /// Whether the broker may hold other runs' queues and messages (one the lab did not start
    /// fresh): the runner then gives the run's subjects a unique first token
    /// ([`Scenario::isolated`]). Default: false.
    fn shared_broker(&self) -> bool {
        false
    }

    /// Refuses, before anything runs, a scenario the target cannot carry out (e.g. process
    /// faults without the commands for them). Default: everything is accepted (and
    /// [`act`](Self::act) may still answer [`RunError::Unsupported`]).
    fn check(&self, s: &Scenario) -> Result<(), RunError> {
        let _ = s;
        Ok(())
    }

    /// What a `kill9` action is called in fault windows and reports (default `kill -9`; an
    /// external broker's stop command may be gentler).
    fn kill_label(&self) -> &'static str {
        "kill -9"
    }

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

/// The built-in targets: `kind = "server"` → [`ServeTarget`], `kind = "url"` → [`UrlTarget`];
/// `kind = "external"` needs a connector ([`with_connector`]) and is refused here.
pub async fn open_builtin(s: &Scenario, opts: &RunOptions) -> Result<Box<dyn Target>, RunError> {
    match s.target.kind {
        TargetKind::External => Err(RunError::Target(
            "target kind `external` needs a connector for its URL: run it with `squall chaos run`, or set RunOptions::target to runner::target::with_connector(..)".into(),
        )),
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

/// The factory of every `[target]` kind: the built-in ones, and `external` through `connector`.
pub fn with_connector(connector: Connector) -> TargetFactory {
    Arc::new(move |s: &Scenario, opts: &RunOptions| {
        let (s, opts, connector) = (s.clone(), opts.clone(), connector.clone());
        Box::pin(async move {
            if s.target.kind != TargetKind::External {
                return open_builtin(&s, &opts).await;
            }
            Ok(Box::new(external(&s, connector)?) as Box<dyn Target>)
        })
    })
}

/// The [`ExternalTarget`] a scenario's `[target]` (`kind = "external"`) describes.
pub fn external(s: &Scenario, connector: Connector) -> Result<ExternalTarget, RunError> {
    let t = &s.target;
    let url = t
        .url
        .clone()
        .ok_or_else(|| RunError::Target("target kind `external` needs `target.url`".into()))?;
    let mut target = ExternalTarget::new(url.clone(), connector);
    if let (Some(start), Some(stop)) = (&t.start, &t.stop) {
        let ready = match t.ready.as_deref() {
            None => ExternalTarget::default_ready(&url),
            Some(r) => parse_ready(r)?,
        };
        let mut b = ExternalBroker::new(start, stop)
            .ready(ready)
            .timeout(t.timeout);
        if let (Some(p), Some(r)) = (&t.pause, &t.resume) {
            b = b.pause_resume(p, r);
        }
        target = target.commands(b);
    }
    Ok(target)
}

/// Whether `s` is `host:port`: a non-empty host, a colon, a port number.
pub fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

/// A `ready` setting: `none`, `http://…` (GET answering 200) or `host:port` (TCP connect).
pub fn parse_ready(r: &str) -> Result<Ready, RunError> {
    if r == "none" {
        Ok(Ready::Immediately)
    } else if r.starts_with("http://") {
        Ok(Ready::Http(r.to_string()))
    } else if is_host_port(r) {
        Ok(Ready::Tcp(r.to_string()))
    } else {
        Err(RunError::Scenario(format!(
            "target.ready `{r}`: expected `none`, an http:// URL or host:port"
        )))
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

/// A reopen function opening [`squall_client`]s with `config`.
fn reopen_squall(config: ClientConfig, name: &str) -> Option<Factory> {
    let name = name.to_string();
    Some(Arc::new(move || {
        let (config, name) = (config.clone(), name.clone());
        Box::pin(async move {
            squall_client(config, &name).await.map_err(|e| {
                squall_core::Error::new(squall_core::ErrorKind::Unavailable, e.to_string())
            })
        })
    }))
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

    fn reopener(&self, via: Option<&str>, name: &str) -> Option<Factory> {
        reopen_squall(ClientConfig::new(via.unwrap_or(&self.addr)), name)
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

    fn reopener(&self, via: Option<&str>, name: &str) -> Option<Factory> {
        let mut config = self.config.clone();
        if let Some(addr) = via {
            config.addr = addr.to_string();
        }
        reopen_squall(config, name)
    }

    async fn act(&mut self, action: Action) -> Result<(), RunError> {
        Err(RunError::Unsupported(format!(
            "{action:?}: the lab did not start {} and cannot signal it",
            self.url
        )))
    }

    async fn shutdown(&mut self) {}
}
