//! Scenarios: a TOML file naming the target, the workload, a timeline of phases with the faults
//! that start with each, and the success criteria.
//!
//! ```toml
//! name = "broker-kill"
//! description = "kill -9 the broker mid-load, restart it, lose nothing confirmed"
//!
//! [target]
//! kind = "server"        # a `squall serve` the lab starts (or "url" with url = "squall://...")
//! sync = "fsync"
//!
//! [workload]
//! producers = 2
//! rate = 2000
//! count = 20000
//!
//! [[phase]]
//! name = "baseline"
//! duration = "3s"
//!
//! [[phase]]
//! name = "kill"
//! duration = "2s"
//! actions = ["kill9"]    # at the phase's start
//!
//! [[phase]]
//! name = "recover"
//! duration = "5s"
//! actions = ["start"]
//!
//! [criteria]
//! max_lost = 0
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::Criteria;
use crate::workload::Workload;

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
    #[error("scenario {path}: {source}")]
    Parse {
        /// File.
        path: String,
        /// Cause.
        source: toml::de::Error,
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
        let s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: path.into(),
            source,
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
        Ok(s)
    }

    /// Total length of the timeline.
    pub fn timeline(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// A shorter version for CI: phases and message count scaled by `factor` (0 < factor ≤ 1).
    pub fn scaled(mut self, factor: f64) -> Scenario {
        for p in &mut self.phases {
            p.duration = p.duration.mul_f64(factor).max(Duration::from_millis(300));
        }
        let count = ((self.workload.count as f64 * factor) as u64).max(100);
        if let Some(min) = self.criteria.min_confirmed.as_mut() {
            *min = (*min).min(count);
        }
        self.workload.count = count;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_parses_and_bad_ones_name_the_key() {
        let ok = r#"
            name = "t"
            [target]
            kind = "server"
            [[phase]]
            name = "a"
            duration = "2s"
            actions = ["kill9"]
        "#;
        let s = Scenario::parse(ok, "t.toml").unwrap();
        assert_eq!(s.timeline(), Duration::from_secs(2));
        assert_eq!(s.phases[0].actions, vec![Action::Kill9]);
        assert_eq!(s.workload, Workload::default());

        let e = Scenario::parse(&ok.replace("\"server\"", "\"url\""), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("target.url"), "{e}");
        let e = Scenario::parse(
            &ok.replace("duration = \"2s\"", "duration = \"2s\"\nbogus = 1"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Scenario::parse(&ok.replace("kill9", "explode"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("explode"), "{e}");
    }
}
