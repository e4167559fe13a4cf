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
//! kind = "server"          # a `squall serve` the lab starts (or "url" with url = "squall://...")
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
//! fault = { kind = "drop" }   # delay, drop, lie_drop, duplicate, corrupt, reorder (hold), error, partition
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `server`: a `squall serve` the lab starts on a fresh data directory (process faults
    /// allowed). `url`: an already running server (no process faults).
    pub kind: TargetKind,
    /// For `server`: `fsync`, `buffered` or `memory`.
    #[serde(default = "default_sync")]
    pub sync: String,
    /// For `url`.
    #[serde(default)]
    pub url: Option<String>,
}

fn default_sync() -> String {
    "fsync".into()
}

/// Kinds of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A `squall serve` child process.
    Server,
    /// A server at `url`.
    Url,
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
        if s.target.kind == TargetKind::Url && s.target.url.is_none() {
            return Err(invalid(
                "target.url",
                "target kind `url` needs a url".into(),
            ));
        }
        if s.target.kind == TargetKind::Url && s.phases.iter().any(|p| !p.actions.is_empty()) {
            return Err(invalid(
                "phase.actions",
                "process faults need a target the lab starts (kind = \"server\")".into(),
            ));
        }
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
