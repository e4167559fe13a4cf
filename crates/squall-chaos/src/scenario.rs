//! Scenarios: a TOML file naming the target, the workload, a timeline of phases with the faults
//! that start with each, and the success criteria.
//!
//! ```toml
//! # What it shows, and its success criteria, in a comment at the top.
//! name = "loss-resilience"
//! description = "publishes and confirms are lost; producers retry; nothing confirmed is lost"
//! drain = "20s"            # after the last phase: how long to wait for every delivery
//!
//! [target]
//! kind = "server"          # a `squall serve` the lab starts (or "url" with url = "squall://...",
//!                          # or "external": any broker, see `Target`)
//! sync = "fsync"           # fsync, buffered or memory
//!
//! [workload]               # see `Workload` for every key
//! producers = 2
//! rate = 1000
//! count = 9000
//! retries = 8
//! poison = 0.01            # fraction of messages the consumers reject (dead-letter check)
//!
//! [proxy]                  # optional: which clients connect through a fault proxy
//! producers = true
//! consumers = false
//!
//! [[phase]]
//! name = "baseline"
//! duration = "3s"
//!
//! [[phase]]
//! name = "lossy"
//! duration = "4s"
//! actions = ["kill9"]      # process faults at the phase's start: kill9, pause, resume, start, restart
//!
//! [[phase.rule]]           # message-level faults, installed at the phase's start, removed at its end
//! name = "lose-publishes"
//! point = "publish"        # publish, confirm (publish-confirm), deliver, ack, connect
//! probability = 0.2
//! groups = ["producers"]   # sites' groups: "producers" for publish/confirm, the consumer group
//!                          # for deliver, ack and connect
//! fault = { kind = "drop" }   # delay, drop, lie_drop, duplicate, corrupt, reorder (hold), error,
//!                             # partition, restart (close and reopen the client: { kind = "restart", downtime = "1s" })
//!
//! [[phase.proxy]]          # proxy faults for the phase's length
//! side = "producers"       # producers, consumers or both
//! direction = "upstream"   # upstream (client → broker), downstream or both
//! fault = { kind = "latency", latency = "100ms", jitter = "20ms" }  # or down, bandwidth,
//!                          # blackhole, reset, slow_close, slicer
//!
//! [criteria]               # see `Criteria`
//! max_lost = 0
//! all_accounted = true
//!
//! [[criteria.phase]]       # per-phase delivery fractions and latency
//! name = "baseline"
//! min_delivered = 1.0
//! ```
//!
//! Unknown keys are refused with the key named; [`Scenario::parse`] also checks what TOML cannot
//! (rule parameters, proxy steps on a side that has no proxy, criteria naming unknown phases).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::Criteria;
use crate::rules::Rule;
use crate::workload::Workload;

mod proxy_step;

pub use proxy_step::{ProxyAction, ProxyConfig, ProxyStep, Side};

/// What the lab tests.
///
/// An external broker (`kind = "external"`) is any broker a URL names, with shell commands for
/// process faults:
///
/// ```toml
/// [target]
/// kind = "external"
/// url = "nats://127.0.0.1:4222?jetstream=1"   # any backend URL the caller can connect to
/// stop = "systemctl kill -s KILL nats-server"  # kill9 (and the first half of restart)
/// start = "systemctl start nats-server"        # start (and the second half of restart)
/// pause = "docker pause nats"                  # optional: pause / resume
/// resume = "docker unpause nats"
/// ready = "127.0.0.1:4222"                     # after start/resume: host:port (TCP), http://… or
///                                              # none; default: TCP to the URL's host:port
/// timeout = "60s"                              # bounds each command and the ready check
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `server`: a `squall serve` the lab starts on a fresh data directory (process faults
    /// allowed). `url`: an already running server (no process faults). `external`: any broker
    /// at `url`, process faults by commands.
    pub kind: TargetKind,
    /// For `server`: `fsync`, `buffered` or `memory`.
    #[serde(default = "default_sync")]
    pub sync: String,
    /// For `url` and `external`.
    #[serde(default)]
    pub url: Option<String>,
    /// For `external`: starts the broker (`start` and `restart` actions).
    #[serde(default)]
    pub start: Option<String>,
    /// For `external`: stops the broker (`kill9` and `restart` actions).
    #[serde(default)]
    pub stop: Option<String>,
    /// For `external`: freezes the broker (`pause`).
    #[serde(default)]
    pub pause: Option<String>,
    /// For `external`: thaws it (`resume`).
    #[serde(default)]
    pub resume: Option<String>,
    /// For `external`: readiness after start and resume: `host:port`, `http://…` or `none`
    /// (default: a TCP connect to the URL's `host:port`).
    #[serde(default)]
    pub ready: Option<String>,
    /// For `external`: bound of each command and of the ready check.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_sync() -> String {
    "fsync".into()
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Kinds of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A `squall serve` child process.
    Server,
    /// A server at `url`.
    Url,
    /// Any broker at `url`, with start/stop commands for process faults.
    External,
}

/// A process fault, applied at the start of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL the server.
    Kill9,
    /// SIGSTOP: the process stays, answers nothing.
    Pause,
    /// SIGCONT after a pause.
    Resume,
    /// Start the server again (after a kill).
    Start,
    /// Kill and start at once.
    Restart,
}

impl TargetKind {
    /// The name in scenarios.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Server => "server",
            TargetKind::Url => "url",
            TargetKind::External => "external",
        }
    }
}

impl Action {
    /// The name in scenarios (`kill9`, `pause`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill9 => "kill9",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Start => "start",
            Action::Restart => "restart",
        }
    }
}

/// One phase of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Name (shown per phase in the report).
    pub name: String,
    /// Length.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Process faults at its start.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Message-level rules (`[[phase.rule]]`), installed in the run's fault registry at the
    /// phase's start and removed at its end. The phase is their window: a rule here may not have
    /// a `window` of its own.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Proxy faults (`[[phase.proxy]]`), added at the phase's start and removed at its end.
    #[serde(default, rename = "proxy")]
    pub proxy: Vec<ProxyStep>,
}

impl Phase {
    /// Whether the phase injects message-level or proxy faults.
    pub fn has_faults(&self) -> bool {
        !self.rules.is_empty() || !self.proxy.is_empty()
    }
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// What is tested.
    pub target: Target,
    /// The load.
    #[serde(default)]
    pub workload: Workload,
    /// Which clients connect through fault proxies (`[proxy]`); see [`Scenario::proxies`].
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// The timeline.
    #[serde(rename = "phase")]
    pub phases: Vec<Phase>,
    /// After the last phase: how long to wait for every confirmed message to be delivered.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain: Duration,
    /// Success criteria.
    #[serde(default)]
    pub criteria: Criteria,
}

fn default_drain() -> Duration {
    Duration::from_secs(30)
}

/// Why a scenario file is refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not valid TOML for a scenario; the message names the key.
    #[error("scenario {path}: {error}")]
    Parse {
        /// File.
        path: String,
        /// Cause (not a `source`: its text is in the message, and printing the error chain
        /// would repeat it).
        error: toml::de::Error,
    },
    /// Parsed, but inconsistent.
    #[error("scenario {path}: {problem} (set `{key}`)")]
    Invalid {
        /// File.
        path: String,
        /// Key to fix.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl Scenario {
    /// Parses and validates a scenario; `path` is only for messages.
    pub fn parse(text: &str, path: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|error| ScenarioError::Parse {
            path: path.into(),
            error,
        })?;
        let invalid = |key, problem: String| ScenarioError::Invalid {
            path: path.into(),
            key,
            problem,
        };
        if s.phases.is_empty() {
            return Err(invalid(
                "phase",
                "a scenario needs at least one [[phase]]".into(),
            ));
        }
        if s.target.kind != TargetKind::Server && s.target.url.is_none() {
            return Err(invalid(
                "target.url",
                format!("target kind `{}` needs a url", s.target.kind.as_str()),
            ));
        }
        if s.target.kind == TargetKind::Url && s.phases.iter().any(|p| !p.actions.is_empty()) {
            return Err(invalid(
                "phase.actions",
                "process faults need a target the lab starts (kind = \"server\") or commands for an external broker (kind = \"external\")".into(),
            ));
        }
        s.check_external()
            .map_err(|(key, problem)| invalid(key, problem))?;
        if !["fsync", "buffered", "memory"].contains(&s.target.sync.as_str()) {
            return Err(invalid(
                "target.sync",
                format!("`{}` is not fsync, buffered or memory", s.target.sync),
            ));
        }
        if s.workload.count == 0
            || s.workload.producers == 0
            || s.workload.consumers == 0
            || s.workload.groups.is_empty()
        {
            return Err(invalid(
                "workload",
                "count, producers, consumers and groups must be non-zero".into(),
            ));
        }
        if !(0.0..=1.0).contains(&s.workload.poison) {
            return Err(invalid(
                "workload.poison",
                format!("{} is not a fraction within 0..=1", s.workload.poison),
            ));
        }
        if s.workload.max_deliveries == Some(0) {
            return Err(invalid(
                "workload.max_deliveries",
                "at least 1 (or leave it unset: redeliver forever)".into(),
            ));
        }
        let proxies = s.proxies();
        let mut names = std::collections::HashSet::new();
        for p in &s.phases {
            if !names.insert(p.name.as_str()) {
                return Err(invalid(
                    "phase.name",
                    format!("two phases are called `{}`", p.name),
                ));
            }
            let mut rules = std::collections::HashSet::new();
            for r in &p.rules {
                if !rules.insert(r.name.as_str()) {
                    return Err(invalid(
                        "phase.rule.name",
                        format!("phase `{}` has two rules called `{}`", p.name, r.name),
                    ));
                }
                if r.window.is_some() {
                    return Err(invalid(
                        "phase.rule.window",
                        format!(
                            "rule `{}` of phase `{}`: the phase is the rule's window",
                            r.name, p.name
                        ),
                    ));
                }
                r.validate().map_err(|e| {
                    invalid("phase.rule", format!("phase `{}`: {}", p.name, e.message()))
                })?;
            }
            for (i, step) in p.proxy.iter().enumerate() {
                if !proxies.is_some_and(|c| c.covers(step.side)) {
                    return Err(invalid(
                        "proxy",
                        format!(
                            "phase `{}` has a proxy fault on {} but they do not connect through a proxy",
                            p.name,
                            step.side.as_str()
                        ),
                    ));
                }
                if let Some(f) = step.proxy_fault(&format!("{}-{i}", p.name)) {
                    f.validate().map_err(|e| {
                        invalid("phase.proxy.fault", format!("phase `{}`: {e}", p.name))
                    })?;
                }
            }
        }
        if proxies.is_some() && s.target.kind == TargetKind::Url && s.target.url.is_none() {
            return Err(invalid(
                "target.url",
                "a proxy needs the target's address".into(),
            ));
        }
        for c in &s.criteria.phase {
            if !names.contains(c.name.as_str()) {
                return Err(invalid(
                    "criteria.phase.name",
                    format!("there is no phase called `{}`", c.name),
                ));
            }
        }
        Ok(s)
    }

    /// An external target's commands against the timeline's process faults.
    fn check_external(&self) -> Result<(), (&'static str, String)> {
        let t = &self.target;
        let commands = [&t.start, &t.stop, &t.pause, &t.resume, &t.ready];
        if t.kind != TargetKind::External {
            if commands.iter().any(|c| c.is_some()) {
                return Err((
                    "target.kind",
                    "start, stop, pause, resume and ready are for kind = \"external\"".into(),
                ));
            }
            return Ok(());
        }
        if t.start.is_some() != t.stop.is_some() {
            return Err((
                "target.start",
                "give both start and stop, or neither".into(),
            ));
        }
        if t.pause.is_some() != t.resume.is_some() {
            return Err((
                "target.pause",
                "give both pause and resume, or neither".into(),
            ));
        }
        if t.pause.is_some() && t.start.is_none() {
            return Err((
                "target.start",
                "pause and resume need start and stop too".into(),
            ));
        }
        for a in self.actions() {
            let (key, needed) = match a {
                Action::Kill9 | Action::Start | Action::Restart => ("target.start", &t.start),
                Action::Pause | Action::Resume => ("target.pause", &t.pause),
            };
            if needed.is_none() {
                return Err((
                    key,
                    format!(
                        "the timeline has a `{}` process fault: an external target needs {} commands for it",
                        a.as_str(),
                        if key == "target.start" {
                            "start and stop"
                        } else {
                            "pause and resume"
                        }
                    ),
                ));
            }
        }
        if let Some(r) = &t.ready {
            crate::runner::target::parse_ready(r).map_err(|e| ("target.ready", e.to_string()))?;
        }
        Ok(())
    }

    /// Which clients connect through proxies: the `[proxy]` section, or both sides when it is
    /// absent but some phase has proxy faults, or `None` (no proxy).
    pub fn proxies(&self) -> Option<ProxyConfig> {
        self.proxy
            .or_else(|| {
                self.phases
                    .iter()
                    .any(|p| !p.proxy.is_empty())
                    .then(ProxyConfig::default)
            })
            .filter(|c| c.producers || c.consumers)
    }

    /// Total length of the timeline.
    pub fn timeline(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// A copy whose subjects meet no other run's on a shared broker: the first token of the
    /// workload's subject, and of every rule's subject filter that starts with it, gets `-tag`
    /// appended (`chaos.orders` → `chaos-1a2b3c4d.orders`). Brokers name what they keep for a
    /// subscription after its subject and group together (a JetStream stream per first token, a
    /// RabbitMQ group queue per group and pattern), so a run on a fresh subject starts with empty
    /// queues and its message ids are nobody's duplicates. Groups keep their names, so rules
    /// and reports still say `workers`.
    pub fn isolated(&self, tag: &str) -> Scenario {
        let mut s = self.clone();
        let first = self
            .workload
            .subject
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let rename = |subject: &str| -> String {
            match subject.split_once('.') {
                Some((head, rest)) if head == first => format!("{head}-{tag}.{rest}"),
                None if subject == first => format!("{subject}-{tag}"),
                _ => subject.to_string(),
            }
        };
        s.workload.subject = rename(&self.workload.subject);
        for p in &mut s.phases {
            for r in &mut p.rules {
                if let Some(pattern) = &r.subject {
                    // Renaming one literal token keeps a valid pattern valid.
                    if let Ok(renamed) = squall_core::Pattern::new(rename(pattern.as_str())) {
                        r.subject = Some(renamed);
                    }
                }
            }
        }
        s
    }

    /// Whether some phase has a message-level `restart` rule.
    pub fn has_restart_rules(&self) -> bool {
        self.phases
            .iter()
            .flat_map(|p| &p.rules)
            .any(|r| matches!(r.fault, crate::rules::Fault::Restart { .. }))
    }

    /// The process actions of the timeline, in order.
    pub fn actions(&self) -> impl Iterator<Item = Action> + '_ {
        self.phases.iter().flat_map(|p| p.actions.iter().copied())
    }

    /// A shorter version for CI: phases, message count, `min_confirmed` and per-phase
    /// `min_received` scaled by `factor`
    /// (0 < factor ≤ 1; phases last at least 300 ms, at least 100 messages are sent).
    pub fn scaled(mut self, factor: f64) -> Scenario {
        for p in &mut self.phases {
            p.duration = p.duration.mul_f64(factor).max(Duration::from_millis(300));
        }
        let count = ((self.workload.count as f64 * factor) as u64).max(100);
        if let Some(min) = self.criteria.min_confirmed.as_mut() {
            *min = ((*min as f64 * factor).ceil() as u64).min(count);
        }
        for c in &mut self.criteria.phase {
            if let Some(min) = c.min_received.as_mut() {
                *min = (*min as f64 * factor).ceil() as u64;
            }
        }
        self.workload.count = count;
        self
    }
}

#[cfg(test)]
mod tests;
