//! [`ExternalTarget`]: any broker behind a URL, reached through a [`Connector`] the caller
//! supplies (this crate depends on no adapter), with process faults carried out by shell
//! commands ([`ExternalBroker`]); and the URL helpers it needs: [`host_port`], [`via`],
//! [`redact`].
//!
//! | action | command |
//! |---|---|
//! | `kill9` | `stop` |
//! | `start` | `start`, then the ready check |
//! | `restart` | `stop`, then `start` and the ready check |
//! | `pause` / `resume` | `pause` / `resume` (then the ready check); without them: unsupported |
//!
//! Fault-proxy scenarios against `kafka://` are refused: Kafka clients bootstrap through the
//! URL, then dial the broker's advertised listener, past a proxy in the URL's place.
//!
//! The broker is shared with the rest of the world, so [`Target::shared_broker`] is true: the
//! runner gives the run's subjects a unique first token ([`Scenario::isolated`]). At the end
//! ([`Target::shutdown`]) a broker the run left stopped or paused is started or resumed again.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use squall_core::Backend;
pub use squall_core::options::redact;

use super::{RunError, Target};
use crate::chaos_backend::Factory;
use crate::process::{ExternalBroker, Ready};
use crate::scenario::{Action, Scenario};

/// Connects to the backend a URL names (`nats://…`, `amqp://…`): supplied by the caller, e.g.
/// the `squall` CLI's `backends::connect`.
pub type Connector =
    Arc<dyn Fn(&str) -> BoxFuture<'static, squall_core::Result<Arc<dyn Backend>>> + Send + Sync>;

/// What the process-fault commands are called where the user gives them, for errors:
/// `target.start` in a scenario, `--start` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandNames {
    /// The start command.
    pub start: &'static str,
    /// The stop command.
    pub stop: &'static str,
    /// The pause command.
    pub pause: &'static str,
    /// The resume command.
    pub resume: &'static str,
}

impl CommandNames {
    /// The keys of a scenario's `[target]`.
    pub const SCENARIO: CommandNames = CommandNames {
        start: "target.start",
        stop: "target.stop",
        pause: "target.pause",
        resume: "target.resume",
    };
}

/// A broker at a URL, with optional start/stop/pause/resume commands for process faults.
pub struct ExternalTarget {
    url: String,
    connector: Connector,
    broker: Option<ExternalBroker>,
    names: CommandNames,
    /// Stopped by the run and not started since.
    down: bool,
    /// Paused by the run and not resumed since.
    paused: bool,
}

impl ExternalTarget {
    /// The broker at `url`, reached through `connector`; no process faults until
    /// [`commands`](Self::commands) are given.
    pub fn new(url: impl Into<String>, connector: Connector) -> Self {
        ExternalTarget {
            url: url.into(),
            connector,
            broker: None,
            names: CommandNames::SCENARIO,
            down: false,
            paused: false,
        }
    }

    /// The commands that stop, start (and pause, resume) the broker.
    pub fn commands(mut self, broker: ExternalBroker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// What errors call the commands (default: the scenario's keys).
    pub fn names(mut self, names: CommandNames) -> Self {
        self.names = names;
        self
    }

    /// The default readiness check for `url`: a TCP connect to its `host:port`, if it has one.
    pub fn default_ready(url: &str) -> Ready {
        host_port(url).map_or(Ready::Immediately, Ready::Tcp)
    }

    fn missing(&self, action: Action) -> Option<(&'static str, &'static str)> {
        let b = self.broker.as_ref();
        match action {
            Action::Kill9 | Action::Start | Action::Restart => {
                b.is_none().then_some((self.names.start, self.names.stop))
            }
            Action::Pause | Action::Resume => b
                .is_none_or(|b| b.pause.is_none() || b.resume.is_none())
                .then_some((self.names.pause, self.names.resume)),
        }
    }

    fn unsupported(&self, actions: &str, (a, b): (&str, &str)) -> RunError {
        RunError::Unsupported(format!(
            "process faults ({actions}) on {} need the commands that do them: give {a} and {b}, or run a scenario without process faults",
            redact(&self.url)
        ))
    }
}

fn action_name(a: Action) -> &'static str {
    a.as_str()
}

#[async_trait]
impl Target for ExternalTarget {
    fn describe(&self) -> String {
        let how = match &self.broker {
            Some(_) => "external broker; process faults by its commands",
            None => "external broker",
        };
        format!("{} ({how})", redact(&self.url))
    }

    fn endpoint(&self) -> Option<String> {
        host_port(&self.url)
    }

    fn shared_broker(&self) -> bool {
        true
    }

    fn kill_label(&self) -> &'static str {
        "stop"
    }

    fn check(&self, s: &Scenario) -> Result<(), RunError> {
        if s.proxies().is_some() && dials_advertised_address(&self.url) {
            // The figures of the run would certify a fault that never reached the clients'
            // connections.
            return Err(RunError::Unsupported(format!(
                "fault-proxy phases cannot run against {}: Kafka clients dial the broker's \
                 advertised listener after bootstrap, which a proxy in front of the URL's \
                 address does not carry (`squall certify --front LISTEN=UPSTREAM` cuts the link \
                 of a broker that advertises the proxy's address); run a scenario without proxy \
                 faults",
                redact(&self.url)
            )));
        }
        let mut missing = Vec::new();
        let mut names = Vec::new();
        for a in s.actions() {
            if let Some(m) = self.missing(a) {
                names.push(action_name(a));
                if !missing.contains(&m) {
                    missing.push(m);
                }
            }
        }
        names.dedup();
        match missing.first() {
            None => Ok(()),
            Some(m) => Err(self.unsupported(&names.join(", "), *m)),
        }
    }

    async fn connect(&self, via: Option<&str>, name: &str) -> Result<Arc<dyn Backend>, RunError> {
        let url = match via {
            Some(addr) => self::via(&self.url, addr)?,
            None => self.url.clone(),
        };
        (self.connector)(&url).await.map_err(|e| {
            RunError::Target(format!(
                "connecting the {name} to {}: {e}",
                redact(&self.url)
            ))
        })
    }

    fn reopener(&self, via: Option<&str>, _name: &str) -> Option<Factory> {
        let url = match via {
            Some(addr) => self::via(&self.url, addr).ok()?,
            None => self.url.clone(),
        };
        let connector = self.connector.clone();
        Some(Arc::new(move || connector(&url)))
    }

    async fn act(&mut self, action: Action) -> Result<(), RunError> {
        if let Some(m) = self.missing(action) {
            return Err(self.unsupported(action_name(action), m));
        }
        let Some(b) = self.broker.clone() else {
            return Err(self.unsupported(action_name(action), (self.names.start, self.names.stop)));
        };
        let r = match action {
            Action::Kill9 => b.stop().await.map(|()| self.down = true),
            Action::Start => b.start().await.map(|()| self.down = false),
            Action::Restart => {
                self.down = true;
                b.restart().await.map(|()| self.down = false)
            }
            Action::Pause => b.pause().await.map(|_| self.paused = true),
            Action::Resume => b.resume().await.map(|_| self.paused = false),
        };
        r.map_err(|e| RunError::Target(format!("{}: {e}", action_name(action))))
    }

    async fn shutdown(&mut self) {
        let Some(b) = &self.broker else { return };
        if self.paused {
            match b.resume().await {
                Ok(_) => self.paused = false,
                Err(e) => tracing::warn!("resuming {} after the run: {e}", redact(&self.url)),
            }
        }
        if self.down {
            match b.start().await {
                Ok(()) => self.down = false,
                Err(e) => tracing::warn!("starting {} after the run: {e}", redact(&self.url)),
            }
        }
    }
}

/// A URL's parts around its host: `scheme://`, `user@` (possibly empty), host, and the rest
/// (path and query).
fn split(url: &str) -> Option<(&str, &str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (auth, host) = match authority.rfind('@') {
        Some(i) => authority.split_at(i + 1),
        None => ("", authority),
    };
    Some((scheme, auth, host, tail))
}

/// Whether the clients of `url` dial, after bootstrapping through the URL's address, the
/// address the broker advertises (Kafka): a fault proxy in the URL's place then carries the
/// bootstrap only, and only a proxy at the advertised address cuts their link.
pub fn dials_advertised_address(url: &str) -> bool {
    url.starts_with("kafka://")
}

/// The `host:port` a URL's clients dial: the authority after `scheme://` and any `user@`, up to
/// the path or query; the scheme's usual port when none is given (`nats` 4222, `amqp` 5672,
/// `amqps` 5671, `kafka` 9092). `None` without a scheme, a host, or with several hosts.
pub fn host_port(url: &str) -> Option<String> {
    let (scheme, _, host, _) = split(url)?;
    if host.is_empty() || host.contains(',') {
        return None;
    }
    let has_port = match host.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        Some((h, p)) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty(),
        None => false,
    };
    if has_port {
        return Some(host.to_string());
    }
    let port = match scheme {
        "nats" => 4222,
        "amqp" => 5672,
        "amqps" => 5671,
        "kafka" => 9092,
        _ => return None,
    };
    Some(format!("{host}:{port}"))
}

/// `url` with its `host:port` replaced by `addr` (a fault proxy's listening address); user,
/// path and query are kept.
pub fn via(url: &str, addr: &str) -> Result<String, RunError> {
    match (host_port(url), split(url)) {
        (Some(_), Some((scheme, auth, _, tail))) => Ok(format!("{scheme}://{auth}{addr}{tail}")),
        _ => Err(RunError::Unsupported(format!(
            "a fault proxy needs one host:port in the URL to stand in for: {}",
            redact(url)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_their_address_take_a_proxy_and_hide_their_password() {
        assert_eq!(
            host_port("nats://127.0.0.1:4222?jetstream=1").as_deref(),
            Some("127.0.0.1:4222")
        );
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1/%2f").as_deref(),
            Some("127.0.0.1:5672")
        );
        assert_eq!(host_port("kafka://a:1,b:2"), None);
        assert_eq!(host_port("squall://h"), None, "no usual port for squall");
        assert_eq!(host_port("no-scheme"), None);
        assert_eq!(
            host_port("nats://h:1?name=a@b").as_deref(),
            Some("h:1"),
            "an @ in the query is not a user"
        );
        assert_eq!(
            via("amqp://guest:guest@127.0.0.1:5672/%2f", "127.0.0.1:9999").unwrap(),
            "amqp://guest:guest@127.0.0.1:9999/%2f"
        );
        assert_eq!(
            via("nats://127.0.0.1:4222?jetstream=1", "127.0.0.1:9").unwrap(),
            "nats://127.0.0.1:9?jetstream=1"
        );
        assert_eq!(
            via("sqs://127.0.0.1:4566?region=us-east-1", "127.0.0.1:9").unwrap(),
            "sqs://127.0.0.1:9?region=us-east-1"
        );
        assert!(via("kafka://a:1,b:2", "127.0.0.1:9").is_err());
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("nats://tok@h:1"), "nats://***@h:1");
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
