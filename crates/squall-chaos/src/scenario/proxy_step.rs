//! Proxy faults of a phase: `[[phase.proxy]]` entries and the `[proxy]` section saying which
//! clients connect through a fault proxy.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::proxy::{Direction, FaultKind, ProxyFault};

fn yes() -> bool {
    true
}

/// `[proxy]`: which clients of the workload connect through a fault proxy in front of the target.
/// Each side that does gets its own proxy (named after the side), so a phase can cut one side
/// and leave the other alone. Without this section, a scenario whose phases have proxy faults
/// puts both sides behind proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Producers connect through the `producers` proxy (default true).
    #[serde(default = "yes")]
    pub producers: bool,
    /// Consumers connect through the `consumers` proxy (default true).
    #[serde(default = "yes")]
    pub consumers: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            producers: true,
            consumers: true,
        }
    }
}

impl ProxyConfig {
    /// Whether `side` connects through a proxy.
    pub fn covers(&self, side: Side) -> bool {
        match side {
            Side::Producers => self.producers,
            Side::Consumers => self.consumers,
            Side::Both => self.producers || self.consumers,
        }
    }
}

/// Which proxy a step acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The producers' proxy.
    Producers,
    /// The consumers' proxy.
    Consumers,
    /// Every proxy the scenario has.
    #[default]
    Both,
}

impl Side {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Producers => "producers",
            Side::Consumers => "consumers",
            Side::Both => "both",
        }
    }

    /// Whether a step on `self` acts on the proxy of `side` (producers or consumers).
    pub fn includes(self, side: Side) -> bool {
        self == Side::Both || self == side
    }
}

/// What a proxy step does: a [`FaultKind`], or `down` (stop listening and close every
/// connection; listen again when the phase ends).
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyAction {
    /// The proxy refuses connections and closes the ones it has.
    Down,
    /// A fault on the proxy's connections.
    Fault(FaultKind),
}

const KINDS: &str = "down, latency, bandwidth, blackhole, reset, slow_close, slicer";

impl Serialize for ProxyAction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ProxyAction::Down => serde_json::json!({ "kind": "down" }).serialize(s),
            ProxyAction::Fault(k) => k.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ProxyAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let Some(obj) = v.as_object() else {
            return Err(D::Error::custom(format!(
                "a proxy fault is a table with a `kind` ({KINDS})"
            )));
        };
        match obj.get("kind").and_then(|k| k.as_str()) {
            None => Err(D::Error::custom(format!("missing field `kind` ({KINDS})"))),
            Some("down") => match obj.keys().find(|k| *k != "kind") {
                Some(extra) => Err(D::Error::custom(format!(
                    "unknown field `{extra}`: a `down` fault has no parameters"
                ))),
                None => Ok(ProxyAction::Down),
            },
            Some(k) if !KINDS.split(", ").any(|x| x == k) => Err(D::Error::custom(format!(
                "unknown proxy fault kind `{k}`, expected one of {KINDS}"
            ))),
            Some(_) => {
                crate::rules::no_extra_keys(&v, &["blackhole", "reset"])
                    .map_err(D::Error::custom)?;
                serde_json::from_value::<FaultKind>(v)
                    .map(ProxyAction::Fault)
                    .map_err(D::Error::custom)
            }
        }
    }
}

impl ProxyAction {
    /// Lowercase name.
    pub fn name(&self) -> &'static str {
        match self {
            ProxyAction::Down => "down",
            ProxyAction::Fault(FaultKind::Latency { .. }) => "latency",
            ProxyAction::Fault(FaultKind::Bandwidth { .. }) => "bandwidth",
            ProxyAction::Fault(FaultKind::Blackhole) => "blackhole",
            ProxyAction::Fault(FaultKind::Reset) => "reset",
            ProxyAction::Fault(FaultKind::SlowClose { .. }) => "slow_close",
            ProxyAction::Fault(FaultKind::Slicer { .. }) => "slicer",
        }
    }
}

/// `[[phase.proxy]]`: one proxy fault for the length of a phase.
///
/// ```toml
/// [[phase.proxy]]
/// side = "producers"          # producers, consumers or both (default)
/// direction = "upstream"      # upstream (client → broker), downstream or both (default)
/// fault = { kind = "latency", latency = "100ms", jitter = "30ms" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyStep {
    /// Which proxy.
    #[serde(default)]
    pub side: Side,
    /// Which way bytes are affected (ignored by `down` and `reset`).
    #[serde(default)]
    pub direction: Direction,
    /// What.
    pub fault: ProxyAction,
}

impl ProxyStep {
    /// The proxy fault this step installs under `name`, or `None` for `down`.
    pub fn proxy_fault(&self, name: &str) -> Option<ProxyFault> {
        match &self.fault {
            ProxyAction::Down => None,
            ProxyAction::Fault(k) => {
                Some(ProxyFault::new(name, k.clone()).direction(self.direction))
            }
        }
    }

    /// Short label: `producers latency upstream`.
    pub fn label(&self) -> String {
        let mut s = format!("{} {}", self.side.as_str(), self.fault.name());
        if self.direction != Direction::Both && matches!(self.fault, ProxyAction::Fault(_)) {
            s.push(' ');
            s.push_str(self.direction.as_str());
        }
        s
    }
}
