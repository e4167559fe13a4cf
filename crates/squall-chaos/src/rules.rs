//! Message-level fault rules: where a fault strikes ([`Point`]), what it does ([`Fault`]), what it
//! decided for one message ([`Verdict`]), and the [`Rule`] tying them to a filter, a probability
//! and an active [`Window`].
//!
//! A rule is data (it deserializes from a scenario's TOML) plus, for odd cases, a closure
//! ([`Rule::custom`]). Rules are installed in a [`crate::faults::Faults`] registry, which asks every
//! matching rule for a verdict on each message and applies the first that is not
//! [`Verdict::Pass`].
//!
//! ```
//! use std::time::Duration;
//! use squall_chaos::rules::{DelayDist, Fault, Point, Rule};
//!
//! let rule = Rule::new("slow-billing", Point::Deliver, Fault::Delay(DelayDist::uniform(
//!     Duration::from_millis(5),
//!     Duration::from_millis(50),
//! )))
//! .subject("orders.>")?
//! .group("billing")
//! .probability(0.2)
//! .phase("degraded");
//! rule.validate()?;
//! # Ok::<(), squall_core::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use squall_core::{Error, ErrorKind, Message, MessageId, Pattern, Result, Subject};

use crate::rng::ChaosRng;

mod delay;

pub use delay::DelayDist;

/// A named place in the life of a message where a rule may strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Point {
    /// A producer hands a message to the backend (before the backend sees it).
    Publish,
    /// The backend's confirm travels back to the producer (after the message was stored).
    /// Also written `publish_confirm` or `publish-confirm` in scenarios.
    #[serde(alias = "publish_confirm", alias = "publish-confirm")]
    Confirm,
    /// A leased message travels to the consumer.
    Deliver,
    /// A consumer's settle (ack, nack, reject, extend) travels to the backend.
    Ack,
    /// Opening a consumer, or reopening the backend after a restart.
    Connect,
}

impl Point {
    /// Every point, in a message's order.
    pub const ALL: [Point; 5] = [
        Point::Publish,
        Point::Confirm,
        Point::Deliver,
        Point::Ack,
        Point::Connect,
    ];

    /// Lowercase name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Point::Publish => "publish",
            Point::Confirm => "confirm",
            Point::Deliver => "deliver",
            Point::Ack => "ack",
            Point::Connect => "connect",
        }
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a partition does to the traffic it catches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionMode {
    /// Fail at once with [`ErrorKind::Unavailable`].
    #[default]
    Fail,
    /// Wait until the partition is healed (the rule removed, disabled or out of its window),
    /// then go through. Callers' own timeouts bound the wait.
    Hang,
}

/// An [`ErrorKind`] in rule definitions, written by its [`ErrorKind::as_str`] name
/// (`"unavailable"`, `"timeout"`, `"full"`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind(pub ErrorKind);

const KINDS: [ErrorKind; 17] = [
    ErrorKind::InvalidSubject,
    ErrorKind::InvalidPattern,
    ErrorKind::InvalidMessage,
    ErrorKind::InvalidConfig,
    ErrorKind::NotFound,
    ErrorKind::Conflict,
    ErrorKind::Unsupported,
    ErrorKind::LeaseExpired,
    ErrorKind::Full,
    ErrorKind::Timeout,
    ErrorKind::NoResponders,
    ErrorKind::Closed,
    ErrorKind::Unavailable,
    ErrorKind::Storage,
    ErrorKind::StoragePoisoned,
    ErrorKind::Protocol,
    ErrorKind::Internal,
];

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        KINDS
            .iter()
            .find(|k| k.as_str() == name)
            .map(|k| Kind(*k))
            .ok_or_else(|| {
                let known: Vec<&str> = KINDS.iter().map(|k| k.as_str()).collect();
                serde::de::Error::custom(format!(
                    "unknown error kind `{name}`, expected one of {}",
                    known.join(", ")
                ))
            })
    }
}

/// A decision function for [`Rule::custom`]: called for each matching message with the rule's
/// own random stream.
#[derive(Clone)]
pub struct DecideFn(pub Arc<Decide>);

/// The closure behind a [`DecideFn`].
pub type Decide = dyn Fn(&Site<'_>, &mut ChaosRng) -> Verdict + Send + Sync;

/// Two decision functions are equal when they are the same closure.
impl PartialEq for DecideFn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for DecideFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecideFn")
    }
}

/// What a rule does when it fires.
///
/// In TOML a fault is an inline table tagged by `kind`: `{ kind = "drop" }`,
/// `{ kind = "delay", dist = "fixed", delay = "20ms" }`, `{ kind = "error", error = "unavailable" }`,
/// `{ kind = "reorder", count = 8, max_wait = "50ms" }` (`reorder` is another name of `hold`),
/// `{ kind = "partition", mode = "hang" }`, `{ kind = "restart", downtime = "500ms" }`. Unknown
/// keys are refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Wait before going on.
    Delay(DelayDist),
    /// The message (or confirm, delivery, ack) vanishes; nobody is told it succeeded: a dropped
    /// publish fails its confirm with `Unavailable`, a dropped confirm fails although the message
    /// was stored, a dropped delivery is never handed over (its lease expires), a dropped ack is
    /// not forwarded (the lease expires, the message is redelivered).
    Drop,
    /// Publish only: the message vanishes *and* the producer gets a fake confirm. The one fault
    /// that makes squall lie; use it to build a lossy at-most-once scenario the checker must catch.
    LieDrop,
    /// The message (delivery, ack) goes through twice.
    Duplicate,
    /// One bit of the payload is flipped.
    Corrupt,
    /// Hold-and-reorder: keep up to `count` messages, then release them shuffled (or when the
    /// oldest has waited `max_wait`). Also written `reorder`.
    #[serde(alias = "reorder")]
    Hold {
        /// How many to collect before releasing.
        count: usize,
        /// Release anyway after the first held message waited this long.
        #[serde(with = "humantime_serde")]
        max_wait: Duration,
    },
    /// Fail with this error kind.
    Error {
        /// The kind reported.
        error: Kind,
    },
    /// Everything the rule catches fails (or hangs) until it is healed.
    Partition {
        /// Fail at once or hang.
        #[serde(default)]
        mode: PartitionMode,
    },
    /// Close the backend and reopen it, as a service restart or a dropped connection does:
    /// the wrapper closes its inner backend, stays down for `downtime` (sends fail with
    /// `Unavailable`), reopens it through its reopen function and resubscribes its consumers
    /// (see [`crate::chaos_backend`] for what happens to the message that triggered it). Only a
    /// [`crate::chaos_backend::ChaosBackend`] built with a reopen function can do it:
    /// [`crate::faults::Faults::add`] refuses the rule when no such wrapper uses the registry.
    Restart {
        /// How long the backend stays closed before it is reopened (default: reopen at once).
        #[serde(default, with = "humantime_serde")]
        downtime: Duration,
    },
    /// A closure decides ([`Rule::custom`]). Not expressible in TOML.
    #[serde(skip)]
    Custom(DecideFn),
}

impl Fault {
    /// Shorthand for [`Fault::Error`].
    pub fn error(kind: ErrorKind) -> Self {
        Fault::Error { error: Kind(kind) }
    }

    /// Lowercase name, for metrics labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Delay(_) => "delay",
            Fault::Drop => "drop",
            Fault::LieDrop => "lie_drop",
            Fault::Duplicate => "duplicate",
            Fault::Corrupt => "corrupt",
            Fault::Hold { .. } => "hold",
            Fault::Error { .. } => "error",
            Fault::Partition { .. } => "partition",
            Fault::Restart { .. } => "restart",
            Fault::Custom(_) => "custom",
        }
    }

    /// Whether this fault means something at `point` (see the table in the crate docs);
    /// [`crate::faults::Faults::add`] refuses the others.
    pub fn applies_at(&self, point: Point) -> bool {
        use Point::*;
        match self {
            Fault::Delay(_) | Fault::Error { .. } | Fault::Partition { .. } | Fault::Custom(_) => {
                true
            }
            Fault::Drop => point != Connect,
            Fault::LieDrop => point == Publish,
            Fault::Duplicate => matches!(point, Publish | Deliver | Ack),
            Fault::Corrupt | Fault::Hold { .. } => matches!(point, Publish | Deliver),
            // Reopening passes the `connect` point itself.
            Fault::Restart { .. } => point != Connect,
        }
    }

    fn sample(&self, site: &Site<'_>, rng: &mut ChaosRng) -> Verdict {
        match self {
            Fault::Delay(d) => Verdict::Delay(d.sample(rng)),
            Fault::Drop => Verdict::Drop,
            Fault::LieDrop => Verdict::LieDrop,
            Fault::Duplicate => Verdict::Duplicate,
            Fault::Corrupt => Verdict::Corrupt(rng.random()),
            Fault::Hold { count, max_wait } => Verdict::Hold(Hold {
                count: *count,
                max_wait: *max_wait,
                shuffle: rng.random(),
            }),
            Fault::Error { error } => Verdict::Error(error.0),
            Fault::Partition { mode } => Verdict::Partition(*mode),
            Fault::Restart { downtime } => Verdict::Restart(*downtime),
            Fault::Custom(f) => (f.0)(site, rng),
        }
    }
}

/// How one hold decision releases its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hold {
    /// Release once this many are held.
    pub count: usize,
    /// Release anyway once the oldest held message waited this long.
    pub max_wait: Duration,
    /// Seed of the shuffle used if this message's arrival releases the batch.
    pub shuffle: u64,
}

/// What happens to one message at one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Nothing: go on.
    Pass,
    /// Go on after this long.
    Delay(Duration),
    /// Vanish (see [`Fault::Drop`]).
    Drop,
    /// Vanish with a fake confirm (see [`Fault::LieDrop`]).
    LieDrop,
    /// Go through twice.
    Duplicate,
    /// Flip payload bit number `n % (payload bits)`.
    Corrupt(u64),
    /// Hold and reorder.
    Hold(Hold),
    /// Fail with this kind.
    Error(ErrorKind),
    /// Partitioned: fail or hang until healed.
    Partition(PartitionMode),
    /// Close and reopen the backend, down for this long (see [`Fault::Restart`]).
    Restart(Duration),
}

impl Verdict {
    /// Lowercase name, for metrics labels and the event log.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Delay(_) => "delay",
            Verdict::Drop => "drop",
            Verdict::LieDrop => "lie_drop",
            Verdict::Duplicate => "duplicate",
            Verdict::Corrupt(_) => "corrupt",
            Verdict::Hold(_) => "hold",
            Verdict::Error(_) => "error",
            Verdict::Partition(_) => "partition",
            Verdict::Restart(_) => "restart",
        }
    }
}

/// Flips bit `n % (8 × payload length)` of `msg`'s payload. Returns false (and changes nothing)
/// for an empty payload.
pub fn flip_bit(msg: &mut Message, n: u64) -> bool {
    let len = msg.payload().len() as u64;
    if len == 0 {
        return false;
    }
    let bit = n % (len * 8);
    let mut bytes = msg.payload().to_vec();
    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
    msg.set_payload(bytes);
    true
}

/// When a rule is active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Window {
    /// While the registry's current phase has this name ([`crate::faults::Faults::set_phase`]).
    Phase(String),
    /// From `from` until `until` after the registry's epoch ([`crate::faults::Faults::elapsed`]).
    Between {
        /// Start, inclusive.
        #[serde(with = "humantime_serde")]
        from: Duration,
        /// End, exclusive.
        #[serde(with = "humantime_serde")]
        until: Duration,
    },
}

/// The message and place a decision is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// Where.
    pub point: Point,
    /// The message's subject, if known.
    pub subject: Option<&'a Subject>,
    /// The consumer group (deliver, ack), or the label a chaos backend was given (publish,
    /// confirm, connect).
    pub group: Option<&'a str>,
    /// The message's id, if known.
    pub message_id: Option<&'a MessageId>,
}

impl<'a> Site<'a> {
    /// A site at `point` knowing nothing else.
    pub fn new(point: Point) -> Self {
        Site {
            point,
            subject: None,
            group: None,
            message_id: None,
        }
    }
    /// With `msg`'s subject and id.
    pub fn message(mut self, msg: &'a Message) -> Self {
        self.subject = Some(msg.subject());
        self.message_id = Some(msg.id());
        self
    }
    /// With a group.
    pub fn group(mut self, group: Option<&'a str>) -> Self {
        self.group = group;
        self
    }
    /// With a subject.
    pub fn subject(mut self, subject: &'a Subject) -> Self {
        self.subject = Some(subject);
        self
    }
}

fn one() -> f64 {
    1.0
}

/// A fault at one point, for the messages its filters catch, with a probability.
///
/// Its random stream is derived from the run's seed and its `name`, so names must be unique in
/// a registry, and renaming a rule changes its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name: identifies the rule and selects its random stream.
    pub name: String,
    /// Where it strikes.
    pub point: Point,
    /// Only messages whose subject matches (none: any; a site without a subject never matches
    /// a rule with one).
    #[serde(default)]
    pub subject: Option<Pattern>,
    /// Only these groups (empty: any).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Chance of firing per matching message, 0 to 1 (scaled by the registry's rate).
    #[serde(default = "one")]
    pub probability: f64,
    /// Only while this window is active (none: always).
    #[serde(default)]
    pub window: Option<Window>,
    /// Stop firing after this many injections.
    #[serde(default)]
    pub limit: Option<u64>,
    /// What it does.
    #[serde(deserialize_with = "strict_fault")]
    pub fault: Fault,
}

/// Refuses keys besides `kind` in a table whose `kind` is one of `bare` (serde ignores extra
/// keys of parameterless variants of an internally tagged enum; a scenario must not).
pub(crate) fn no_extra_keys(
    v: &serde_json::Value,
    bare: &[&str],
) -> std::result::Result<(), String> {
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    match obj.get("kind").and_then(|k| k.as_str()) {
        Some(kind) if bare.contains(&kind) => match obj.keys().find(|k| *k != "kind") {
            Some(extra) => Err(format!(
                "unknown field `{extra}`: a `{kind}` fault has no parameters"
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// A [`Fault`] with every unknown key refused.
fn strict_fault<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Fault, D::Error> {
    use serde::de::Error as _;
    let v = serde_json::Value::deserialize(d)?;
    no_extra_keys(&v, &["drop", "lie_drop", "duplicate", "corrupt"]).map_err(D::Error::custom)?;
    Fault::deserialize(v).map_err(D::Error::custom)
}

impl Rule {
    /// A rule firing `fault` at `point` on every message (probability 1, no filter).
    pub fn new(name: impl Into<String>, point: Point, fault: Fault) -> Self {
        Rule {
            name: name.into(),
            point,
            subject: None,
            groups: Vec::new(),
            probability: 1.0,
            window: None,
            limit: None,
            fault,
        }
    }

    /// A rule whose verdict a closure computes (it still obeys filters, window, limit and
    /// probability; the closure gets the rule's own random stream). The closure runs under the
    /// registry's lock: it must be quick and must not call back into the registry. A verdict
    /// that means nothing where it is applied (e.g. `Hold` at `ack`) is treated as `Pass`.
    pub fn custom(
        name: impl Into<String>,
        point: Point,
        decide: impl Fn(&Site<'_>, &mut ChaosRng) -> Verdict + Send + Sync + 'static,
    ) -> Self {
        Rule::new(name, point, Fault::Custom(DecideFn(Arc::new(decide))))
    }

    /// Only subjects matching `pattern`.
    pub fn subject(mut self, pattern: &str) -> Result<Self> {
        self.subject = Some(Pattern::new(pattern)?);
        Ok(self)
    }
    /// Only group `g` (call again to add more).
    pub fn group(mut self, g: impl Into<String>) -> Self {
        self.groups.push(g.into());
        self
    }
    /// Chance of firing, 0 to 1.
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p;
        self
    }
    /// Only during phase `name`.
    pub fn phase(mut self, name: impl Into<String>) -> Self {
        self.window = Some(Window::Phase(name.into()));
        self
    }
    /// Only from `from` until `until` after the registry's epoch.
    pub fn between(mut self, from: Duration, until: Duration) -> Self {
        self.window = Some(Window::Between { from, until });
        self
    }
    /// At most `n` injections.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Checks the probability, the fault's fit to the point, and its parameters.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::config("rule.name", "a rule needs a name"));
        }
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(Error::config(
                "rule.probability",
                format!(
                    "rule `{}`: probability {} is not within 0..=1",
                    self.name, self.probability
                ),
            ));
        }
        if !self.fault.applies_at(self.point) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "rule `{}`: fault `{}` means nothing at point `{}` (set `rule.fault` or `rule.point`)",
                    self.name,
                    self.fault.name(),
                    self.point
                ),
            ));
        }
        match &self.fault {
            Fault::Delay(d) => d.validate(),
            Fault::Hold { count: 0, .. } => Err(Error::config(
                "fault.count",
                "hold count must be at least 1",
            )),
            _ => Ok(()),
        }
    }

    /// Whether the rule's filters and window catch `site` (`phase`: the registry's current
    /// phase; `elapsed`: time since its epoch).
    pub fn matches(&self, site: &Site<'_>, phase: Option<&str>, elapsed: Duration) -> bool {
        if site.point != self.point {
            return false;
        }
        if let Some(p) = &self.subject
            && !site.subject.is_some_and(|s| p.matches(s))
        {
            return false;
        }
        if !self.groups.is_empty()
            && !site
                .group
                .is_some_and(|g| self.groups.iter().any(|x| x == g))
        {
            return false;
        }
        match &self.window {
            None => true,
            Some(Window::Phase(name)) => phase == Some(name.as_str()),
            Some(Window::Between { from, until }) => *from <= elapsed && elapsed < *until,
        }
    }

    /// One decision for a matching `site`: draws from `rng` whether to fire (chance
    /// `probability × rate`) and, if so, the verdict's parameters.
    pub fn decide(&self, site: &Site<'_>, rate: f64, rng: &mut ChaosRng) -> Verdict {
        if rng.random::<f64>() < self.probability * rate {
            self.fault.sample(site, rng)
        } else {
            Verdict::Pass
        }
    }
}

#[cfg(test)]
mod tests;
