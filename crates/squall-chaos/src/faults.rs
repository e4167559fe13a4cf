//! [`Faults`]: the registry of installed [`Rule`]s that chaos wrappers ask for verdicts, the
//! [`RuleGuard`] that uninstalls a rule on drop, and the bounded log of [`Injection`]s the checker
//! reads.
//!
//! ## Deciding
//! For each message at a point, *every* installed rule whose filters and window catch it draws
//! from its own random stream (seeded from the run's [`Seed`] and the rule's name), and the first
//! non-[`Verdict::Pass`] in install order is applied. Drawing for every matching rule, not only up
//! to the first that fires, keeps each rule's schedule independent of the others: the same seed
//! and the same sequence of decisions give the same verdicts, whatever rules are added beside.
//!
//! ## Production middleware (seed 000)
//! [`Faults::production`] starts *disabled*, with a failure rate of 1 % (every rule's probability
//! is multiplied by the rate) and two rules: publish fails with `Unavailable`, deliveries are
//! delayed up to a second. [`Faults::set_targets`] restricts injection to named groups;
//! [`crate::control`] serves all of this over HTTP.
//!
//! ## Restart rules
//! A [`Fault::Restart`] rule is carried out by the [`crate::chaos_backend::ChaosBackend`]s that
//! can reopen their backend (built with a reopen function); the others never draw for it.
//! [`Faults::add`] refuses a restart rule while no such wrapper uses the registry, so a rule that
//! could never fire is an error, not a silent no-op: build the wrappers first.
//!
//! ## Observability
//! Every injection increments `chaos_injected_total{point,fault,group}` (delays also record
//! `chaos_delay_seconds{point,group}`) and is appended to an in-memory log bounded by
//! [`Faults::set_log_capacity`]; when full, the oldest entry is dropped and counted
//! ([`Faults::dropped_events`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::Serialize;
use squall_core::{Error, ErrorKind, Result, Timestamp};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::rng::{ChaosRng, Seed};
use crate::rules::{DelayDist, Fault, Rule, Site, Verdict};

/// Identifies an installed rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RuleId(pub u64);

/// One fault applied to one message, as the checker reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Injection {
    /// Wall-clock time (the registry's clock).
    pub at: Timestamp,
    /// Time since the registry's epoch.
    #[serde(with = "humantime_serde")]
    pub elapsed: Duration,
    /// Where.
    pub point: crate::rules::Point,
    /// The verdict's name (`drop`, `delay`...).
    pub fault: &'static str,
    /// The rule that fired.
    pub rule: String,
    /// The site's group.
    pub group: Option<String>,
    /// The message's subject.
    pub subject: Option<String>,
    /// The message's id.
    pub message_id: Option<String>,
    /// The sampled delay, error kind, partition mode or corrupted bit seed.
    pub detail: Option<String>,
}

/// A point-in-time view of the registry, for the control API and reports.
#[derive(Debug, Clone, Serialize)]
pub struct FaultsState {
    /// The run's seed.
    pub seed: Seed,
    /// Whether anything is injected.
    pub enabled: bool,
    /// Multiplier of every rule's probability.
    pub rate: f64,
    /// Groups injection is restricted to (empty: all).
    pub targets: Vec<String>,
    /// Current phase.
    pub phase: Option<String>,
    /// Installed rule names, in install order.
    pub rules: Vec<String>,
    /// Injections so far.
    pub injected: u64,
    /// Log entries dropped because the log was full.
    pub dropped_events: u64,
}

type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The default capacity of the injection log.
pub const DEFAULT_LOG_CAPACITY: usize = 100_000;

/// A registry of fault rules. Cheap to clone: clones share the rules.
///
/// ```
/// use squall_chaos::faults::Faults;
/// use squall_chaos::rng::Seed;
/// use squall_chaos::rules::{Fault, Point, Rule, Site, Verdict};
///
/// let faults = Faults::new(Seed::new(1));
/// {
///     let _guard = faults.add(Rule::new("drop-all", Point::Ack, Fault::Drop))?;
///     assert_eq!(faults.decide(&Site::new(Point::Ack)), Verdict::Drop);
/// } // guard dropped: rule removed
/// assert_eq!(faults.decide(&Site::new(Point::Ack)), Verdict::Pass);
/// assert_eq!(faults.events().len(), 1);
/// # Ok::<(), squall_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

struct Shared {
    seed: Seed,
    next_id: AtomicU64,
    /// Bumped on every change of rules or settings; partition hangs wait on it.
    changed: watch::Sender<u64>,
    /// Live wrappers that can carry out `restart` verdicts ([`ReopenTicket`]s).
    reopeners: AtomicUsize,
    /// Locked only for short synchronous sections, never across an await.
    state: Mutex<State>,
}

struct State {
    clock: Clock,
    enabled: bool,
    rate: f64,
    targets: BTreeSet<String>,
    phase: Option<String>,
    epoch: Instant,
    rules: Vec<Installed>,
    log: VecDeque<Injection>,
    log_capacity: usize,
    dropped: u64,
    injected: u64,
}

struct Installed {
    id: RuleId,
    rule: Rule,
    rng: ChaosRng,
    fired: u64,
}

impl Faults {
    /// A lab registry: enabled, rate 1, no rules, wall clock.
    pub fn new(seed: Seed) -> Self {
        Faults {
            shared: Arc::new(Shared {
                seed,
                next_id: AtomicU64::new(1),
                changed: watch::Sender::new(0),
                reopeners: AtomicUsize::new(0),
                state: Mutex::new(State {
                    clock: Arc::new(Timestamp::now),
                    enabled: true,
                    rate: 1.0,
                    targets: BTreeSet::new(),
                    phase: None,
                    epoch: Instant::now(),
                    rules: Vec::new(),
                    log: VecDeque::new(),
                    log_capacity: DEFAULT_LOG_CAPACITY,
                    dropped: 0,
                    injected: 0,
                }),
            }),
        }
    }

    /// The production middleware preset of seed 000: disabled until [`enable`](Self::enable)d,
    /// rate 1 %, and two rules: `production-failure` (publish fails with `Unavailable`) and
    /// `production-delay` (deliveries delayed uniformly up to 1 s).
    pub fn production(seed: Seed) -> Self {
        let f = Faults::new(seed);
        {
            let mut st = f.lock();
            st.enabled = false;
            st.rate = 0.01;
        }
        let rules = [
            Rule::new(
                "production-failure",
                crate::rules::Point::Publish,
                Fault::error(ErrorKind::Unavailable),
            ),
            Rule::new(
                "production-delay",
                crate::rules::Point::Deliver,
                Fault::Delay(DelayDist::uniform(Duration::ZERO, Duration::from_secs(1))),
            ),
        ];
        for r in rules {
            // Valid by construction, names distinct.
            let _ = f.install(r);
        }
        f
    }

    /// Uses `clock` for the injection log's timestamps from now on (e.g. the broker's clock).
    pub fn set_clock(&self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) {
        self.lock().clock = Arc::new(clock);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.shared.changed.send_modify(|g| *g += 1);
    }

    /// The seed every rule's stream derives from.
    pub fn seed(&self) -> Seed {
        self.shared.seed
    }

    /// Installs `rule` until the returned guard is dropped. Fails with `InvalidConfig` for an
    /// invalid rule or a `restart` rule no wrapper can carry out (see the module docs), and
    /// `Conflict` if a rule of that name is installed.
    pub fn add(&self, rule: Rule) -> Result<RuleGuard> {
        let id = self.install(rule)?;
        Ok(RuleGuard {
            faults: Arc::downgrade(&self.shared),
            id,
        })
    }

    /// Installs `rule` until [`remove`](Self::remove)d or [`heal`](Self::heal)ed.
    pub fn install(&self, rule: Rule) -> Result<RuleId> {
        rule.validate()?;
        if matches!(rule.fault, Fault::Restart { .. }) && !self.can_restart() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "rule `{}`: fault `restart` closes and reopens the backend, but no ChaosBackend using this registry can reopen its backend (build it with ChaosBackend::builder(..).with_restart(..) or .reopen(..) before adding the rule)",
                    rule.name
                ),
            ));
        }
        let id = RuleId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        {
            let mut st = self.lock();
            if st.rules.iter().any(|r| r.rule.name == rule.name) {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("a rule named `{}` is already installed", rule.name),
                ));
            }
            let rng = self.shared.seed.stream(&format!("rule:{}", rule.name));
            st.rules.push(Installed {
                id,
                rule,
                rng,
                fired: 0,
            });
        }
        self.bump();
        Ok(id)
    }

    /// Whether some live wrapper using this registry can carry out `restart` verdicts.
    pub fn can_restart(&self) -> bool {
        self.shared.reopeners.load(Ordering::Acquire) > 0
    }

    /// Registers a wrapper able to carry out `restart` verdicts, for as long as the ticket lives.
    pub(crate) fn reopener(&self) -> ReopenTicket {
        self.shared.reopeners.fetch_add(1, Ordering::AcqRel);
        ReopenTicket {
            faults: Arc::downgrade(&self.shared),
        }
    }

    /// Uninstalls a rule; false if it was not installed.
    pub fn remove(&self, id: RuleId) -> bool {
        let removed = {
            let mut st = self.lock();
            let before = st.rules.len();
            st.rules.retain(|r| r.id != id);
            st.rules.len() != before
        };
        if removed {
            self.bump();
        }
        removed
    }

    /// Uninstalls the rule called `name`; false if none was.
    pub fn remove_named(&self, name: &str) -> bool {
        let id = self
            .lock()
            .rules
            .iter()
            .find(|r| r.rule.name == name)
            .map(|r| r.id);
        id.is_some_and(|id| self.remove(id))
    }

    /// Uninstalls every rule: partitions heal, holds release on their next check.
    pub fn heal(&self) {
        self.lock().rules.clear();
        self.bump();
    }

    /// The installed rules, in install order.
    pub fn rules(&self) -> Vec<Rule> {
        self.lock().rules.iter().map(|r| r.rule.clone()).collect()
    }

    /// Starts injecting.
    pub fn enable(&self) {
        self.lock().enabled = true;
        self.bump();
    }
    /// Stops injecting (every decision passes, without drawing).
    pub fn disable(&self) {
        self.lock().enabled = false;
        self.bump();
    }
    /// Whether injecting.
    pub fn is_enabled(&self) -> bool {
        self.lock().enabled
    }

    /// Sets the multiplier of every rule's probability, 0 to 1.
    pub fn set_rate(&self, rate: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(Error::config(
                "rate",
                format!("rate {rate} is not within 0..=1"),
            ));
        }
        self.lock().rate = rate;
        self.bump();
        Ok(())
    }
    /// The multiplier of every rule's probability.
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// Restricts injection to sites whose group is one of `groups` (empty: every site).
    pub fn set_targets<I: IntoIterator<Item = S>, S: Into<String>>(&self, groups: I) {
        self.lock().targets = groups.into_iter().map(Into::into).collect();
        self.bump();
    }
    /// The target groups (empty: all).
    pub fn targets(&self) -> Vec<String> {
        self.lock().targets.iter().cloned().collect()
    }

    /// Sets the current phase, activating rules with a [`crate::rules::Window::Phase`] of
    /// that name.
    pub fn set_phase(&self, phase: Option<&str>) {
        self.lock().phase = phase.map(str::to_string);
        self.bump();
    }
    /// The current phase.
    pub fn phase(&self) -> Option<String> {
        self.lock().phase.clone()
    }

    /// Restarts the epoch [`crate::rules::Window::Between`] windows count from (call when the
    /// run starts).
    pub fn reset_epoch(&self) {
        self.lock().epoch = Instant::now();
        self.bump();
    }
    /// Time since the epoch.
    pub fn elapsed(&self) -> Duration {
        self.lock().epoch.elapsed()
    }

    /// A receiver that sees a new value whenever rules or settings change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Asks every matching rule and returns the verdict for `site`, logging it if not `Pass`.
    pub fn decide(&self, site: &Site<'_>) -> Verdict {
        self.decide_where(site, |_| true)
    }

    /// Like [`decide`](Self::decide), asking only rules whose fault `allow` accepts (wrappers
    /// that can apply only some verdicts somewhere, e.g. requests).
    pub fn decide_where(&self, site: &Site<'_>, allow: impl Fn(&Fault) -> bool) -> Verdict {
        let mut st = self.lock();
        if !st.enabled || !targeted(&st.targets, site) {
            return Verdict::Pass;
        }
        let elapsed = st.epoch.elapsed();
        let rate = st.rate;
        let State { rules, phase, .. } = &mut *st;
        let mut chosen: Option<(usize, Verdict)> = None;
        for (i, r) in rules.iter_mut().enumerate() {
            if r.rule.limit.is_some_and(|l| r.fired >= l)
                || !allow(&r.rule.fault)
                || !r.rule.matches(site, phase.as_deref(), elapsed)
            {
                continue;
            }
            let v = r.rule.decide(site, rate, &mut r.rng);
            if chosen.is_none() && v != Verdict::Pass {
                chosen = Some((i, v));
            }
        }
        let Some((i, verdict)) = chosen else {
            return Verdict::Pass;
        };
        st.rules[i].fired += 1;
        let rule = st.rules[i].rule.name.clone();
        let entry = Injection {
            at: (st.clock)(),
            elapsed,
            point: site.point,
            fault: verdict.name(),
            rule,
            group: site.group.map(str::to_string),
            subject: site.subject.map(|s| s.as_str().to_string()),
            message_id: site.message_id.map(|m| m.as_str().to_string()),
            detail: detail(&verdict),
        };
        st.injected += 1;
        if st.log.len() >= st.log_capacity {
            st.log.pop_front();
            st.dropped += 1;
        }
        st.log.push_back(entry);
        drop(st);
        tracing::debug!(
            point = site.point.as_str(),
            fault = verdict.name(),
            group = site.group,
            message_id = site.message_id.map(|m| m.as_str()),
            "chaos injected"
        );
        record_metrics(site, &verdict);
        verdict
    }

    /// Whether a partition rule (regardless of its probability) currently catches `site`: what a
    /// [`crate::rules::PartitionMode::Hang`] waits on.
    pub fn is_partitioned(&self, site: &Site<'_>) -> bool {
        let st = self.lock();
        if !st.enabled || !targeted(&st.targets, site) {
            return false;
        }
        let elapsed = st.epoch.elapsed();
        st.rules.iter().any(|r| {
            matches!(r.rule.fault, Fault::Partition { .. })
                && r.rule.limit.is_none_or(|l| r.fired < l)
                && r.rule.matches(site, st.phase.as_deref(), elapsed)
        })
    }

    /// Waits until no partition catches `site` (changes are noticed at once; windows that close
    /// by time within 50 ms).
    pub async fn wait_healed(&self, site: &Site<'_>) {
        let mut rx = self.changes();
        while self.is_partitioned(site) {
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// A copy of the injection log, oldest first.
    pub fn events(&self) -> Vec<Injection> {
        self.lock().log.iter().cloned().collect()
    }
    /// Takes the injection log, leaving it empty.
    pub fn take_events(&self) -> Vec<Injection> {
        std::mem::take(&mut self.lock().log).into()
    }
    /// Injections so far (including any dropped from the log).
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }
    /// Log entries dropped because the log was full.
    pub fn dropped_events(&self) -> u64 {
        self.lock().dropped
    }
    /// Bounds the injection log (at least 1).
    pub fn set_log_capacity(&self, n: usize) {
        let mut st = self.lock();
        st.log_capacity = n.max(1);
        while st.log.len() > st.log_capacity {
            st.log.pop_front();
            st.dropped += 1;
        }
    }

    /// The registry's settings and counters.
    pub fn state(&self) -> FaultsState {
        let st = self.lock();
        FaultsState {
            seed: self.shared.seed,
            enabled: st.enabled,
            rate: st.rate,
            targets: st.targets.iter().cloned().collect(),
            phase: st.phase.clone(),
            rules: st.rules.iter().map(|r| r.rule.name.clone()).collect(),
            injected: st.injected,
            dropped_events: st.dropped,
        }
    }
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("state", &self.state())
            .finish()
    }
}

fn targeted(targets: &BTreeSet<String>, site: &Site<'_>) -> bool {
    targets.is_empty() || site.group.is_some_and(|g| targets.contains(g))
}

fn detail(v: &Verdict) -> Option<String> {
    match v {
        Verdict::Delay(d) => Some(format!("{d:?}")),
        Verdict::Error(k) => Some(k.as_str().to_string()),
        Verdict::Partition(m) => Some(format!("{m:?}").to_lowercase()),
        Verdict::Corrupt(n) => Some(format!("bit seed {n}")),
        Verdict::Hold(h) => Some(format!("up to {} for {:?}", h.count, h.max_wait)),
        Verdict::Restart(d) => Some(format!("down {d:?}")),
        _ => None,
    }
}

fn record_metrics(site: &Site<'_>, v: &Verdict) {
    let group = site.group.unwrap_or("").to_string();
    metrics::counter!(
        "chaos_injected_total",
        "point" => site.point.as_str(),
        "fault" => v.name(),
        "group" => group.clone(),
    )
    .increment(1);
    if let Verdict::Delay(d) = v {
        metrics::histogram!("chaos_delay_seconds", "point" => site.point.as_str(), "group" => group)
            .record(d.as_secs_f64());
    }
}

/// Keeps a rule installed; dropping it uninstalls the rule (turmoil's rule guard).
#[must_use = "dropping the guard uninstalls the rule"]
#[derive(Debug)]
pub struct RuleGuard {
    faults: Weak<Shared>,
    id: RuleId,
}

impl RuleGuard {
    /// The rule's id.
    pub fn id(&self) -> RuleId {
        self.id
    }
    /// Leaves the rule installed (until removed by id, by name, or healed).
    pub fn forget(mut self) {
        self.faults = Weak::new();
    }
}

impl Drop for RuleGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.faults.upgrade() {
            Faults { shared }.remove(self.id);
        }
    }
}

/// Counts a wrapper that can carry out `restart` verdicts (see [`Faults::can_restart`]) while it
/// lives.
pub(crate) struct ReopenTicket {
    faults: Weak<Shared>,
}

impl Drop for ReopenTicket {
    fn drop(&mut self) {
        if let Some(shared) = self.faults.upgrade() {
            shared.reopeners.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faults")
    }
}

#[cfg(test)]
mod tests;
