//! Runs a [`Scenario`]: opens the target, drives the workload through the timeline, applies the
//! faults of each phase, drains, then checks and reports.
//!
//! ```text
//!   producers ──(ChaosBackend "producers")──[proxy "producers"]──┐
//!                                                                 ├── target (squall serve, ...)
//!   consumers ──(ChaosBackend "consumers")──[proxy "consumers"]──┘
//!   dead-letter observer ────────────────────────────────────────┘ (direct, no faults)
//! ```
//!
//! - The target comes from a [`TargetFactory`] ([`RunOptions::target`]; by default
//!   [`target::open_builtin`] reads the scenario's `[target]`; [`target::with_connector`] adds
//!   external brokers). The runner only asks it for clients, reopen functions and process
//!   faults; see [`target`]. Before anything starts, the target may refuse the scenario
//!   ([`Target::check`]), and a scenario with `restart` rules is refused when the target has no
//!   reopen function.
//! - On a broker shared with others ([`Target::shared_broker`]) the run uses
//!   [`Scenario::isolated`] subjects, with a random tag, so queues and dedup windows left by other
//!   runs (or by this one, replayed) play no part.
//! - Producers and consumers use separate clients that reconnect by themselves, exactly as
//!   applications would. Each is wrapped in a [`ChaosBackend`] over one [`Faults`] registry seeded
//!   with the run's seed, with the target's reopen function for `restart` rules; producers' sites carry the group `producers`, consumers' sites their
//!   consumer group, so `groups` in a rule selects a side.
//! - Sides listed in the scenario's `[proxy]` dial a [`crate::proxy`] fault proxy in front of the
//!   target instead of the target itself.
//! - Each phase: its name becomes the registry's phase, its process `actions` run, its rules and
//!   proxy faults are installed; at its end they are removed and the phase's fault window is
//!   recorded (process faults have their own windows, from kill to start and pause to resume).
//! - The workload is fitted to the backend ([`Workload::fit`]): subscription options it lacks
//!   (per-key ordering, durable groups, dead letters) are dropped, each with a note in the
//!   report; the criteria stay, so what the backend cannot promise shows in the verdict.
//! - Consumers (and the dead-letter observer) subscribe first; producers start once every one
//!   of them is subscribed (a broker may drop what nobody is subscribed to yet: a RabbitMQ group
//!   queue exists from its first subscription on).
//! - Drain: producers stop offering load and finish their retries; then the runner waits (at most
//!   `drain`) until every confirmed message reached every group and every accepted reject is in
//!   the dead-letter queue. Producers still waiting for confirms when the drain time runs out
//!   stop waiting: those messages count as unaccounted, with a note.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use squall_core::{Backend, Timestamp};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chaos_backend::ChaosBackend;
use crate::checker::{Event, check_with};
use crate::faults::Faults;
use crate::report::{Report, Window};
use crate::rng::Seed;
use crate::scenario::{Action, Scenario, Side};
use crate::workload::{Progress, Workload, consume, merge, observe_dead_letters, produce_until};

mod external;
pub mod target;
mod timeline;

pub use target::{Target, TargetFactory};

use timeline::Proxies;

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// The seed (printed first; random if unset).
    pub seed: Option<u64>,
    /// The `squall` binary that runs `squall serve` for `server` targets.
    pub squall_bin: PathBuf,
    /// Print a progress line every second to stderr.
    pub progress: bool,
    /// The command that replays this run, for the report (`{seed}` is replaced).
    pub replay: String,
    /// Opens the target; `None`: the built-in targets ([`target::open_builtin`]).
    pub target: Option<TargetFactory>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("seed", &self.seed)
            .field("squall_bin", &self.squall_bin)
            .field("progress", &self.progress)
            .field("replay", &self.replay)
            .field("target", &self.target.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Why a run could not be carried out (as opposed to a run that failed its criteria).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The target could not be started or reached, or a process fault failed.
    #[error("target: {0}")]
    Target(String),
    /// The target cannot do what the scenario asks (a process fault, a proxy).
    #[error("unsupported by the target: {0}")]
    Unsupported(String),
    /// A fault proxy could not be started or changed.
    #[error("fault proxy: {0}")]
    Proxy(String),
    /// The scenario asked for something the run refused (e.g. an invalid rule).
    #[error("scenario: {0}")]
    Scenario(String),
    /// I/O around the run (temporary directory, process control).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Runs `s` and returns its report (a run that misses its criteria is still `Ok`: see
/// [`Report::pass`]). Prints the seed and the replay command first.
pub async fn run(s: &Scenario, opts: &RunOptions) -> Result<Report, RunError> {
    let mut opts = opts.clone();
    let seed = opts.seed.unwrap_or_else(rand::random);
    opts.seed = Some(seed);
    eprintln!(
        "squall chaos: scenario {} seed {seed}\n  replay: {}",
        s.name,
        opts.replay.replace("{seed}", &seed.to_string())
    );
    let target = match &opts.target {
        Some(factory) => factory(s, &opts).await?,
        None => target::open_builtin(s, &opts).await?,
    };
    run_on(s, &opts, target).await
}

/// Runs `s` against an opened `target` (shut down at the end, whatever happens).
pub async fn run_on(
    s: &Scenario,
    opts: &RunOptions,
    mut target: Box<dyn Target>,
) -> Result<Report, RunError> {
    let isolated;
    let s = if target.shared_broker() {
        let tag = format!("{:08x}", rand::random::<u32>());
        isolated = s.isolated(&tag);
        &isolated
    } else {
        s
    };
    let result = match preflight(s, target.as_ref()) {
        Ok(()) => drive(s, opts, target.as_mut()).await,
        Err(e) => Err(e),
    };
    target.shutdown().await;
    result
}

/// Refuses what the target cannot carry out, before anything runs.
fn preflight(s: &Scenario, target: &dyn Target) -> Result<(), RunError> {
    target.check(s)?;
    if s.has_restart_rules() && target.reopener(None, "producers").is_none() {
        return Err(RunError::Scenario(format!(
            "scenario `{}` has `restart` rules, but {} cannot reopen its clients",
            s.name,
            target.describe()
        )));
    }
    Ok(())
}

/// The tasks of a run and how to stop them.
struct Tasks {
    producers: Vec<JoinHandle<Vec<Event>>>,
    consumers: Vec<JoinHandle<Vec<Event>>>,
    observer: Option<JoinHandle<Vec<Event>>>,
    printer: Option<JoinHandle<()>>,
    stop_producing: CancellationToken,
    /// Producers stop waiting for outstanding confirms (the drain time ran out).
    abandon_producing: CancellationToken,
    stop_consuming: CancellationToken,
    stop_observing: CancellationToken,
}

impl Tasks {
    fn cancel(&self) {
        self.stop_producing.cancel();
        self.abandon_producing.cancel();
        self.stop_consuming.cancel();
        self.stop_observing.cancel();
    }
}

async fn drive(
    s: &Scenario,
    opts: &RunOptions,
    target: &mut dyn Target,
) -> Result<Report, RunError> {
    let seed = opts.seed.unwrap_or_else(rand::random);
    let replay = opts.replay.replace("{seed}", &seed.to_string());
    let faults = Faults::new(Seed::new(seed));
    let endpoint = target.endpoint();
    let proxies = Proxies::start(s.proxies(), endpoint.as_deref(), Seed::new(seed)).await?;
    let raw_producers = target
        .connect(proxies.via(Side::Producers).as_deref(), "producers")
        .await?;
    let raw_consumers = target
        .connect(proxies.via(Side::Consumers).as_deref(), "consumers")
        .await?;
    let (fitted, notes) = s
        .workload
        .fit(&raw_consumers.capabilities(), raw_consumers.name());
    for n in &notes {
        eprintln!("  note: {n}");
    }
    let w: Arc<Workload> = Arc::new(fitted);
    let observer = match w.dead_letters_expected() {
        true => Some(target.connect(None, "observer").await?),
        false => None,
    };
    let wrap = |raw: &Arc<dyn Backend>, side: Side, label: &str| {
        let mut b = ChaosBackend::builder(raw.clone(), faults.clone()).label(label);
        if let Some(f) = target.reopener(proxies.via(side).as_deref(), label) {
            b = b.reopen(f);
        }
        Arc::new(b.build()) as Arc<dyn Backend>
    };
    let producers = wrap(&raw_producers, Side::Producers, "producers");
    let consumers = wrap(&raw_consumers, Side::Consumers, "consumers");

    let progress = Arc::new(Progress::default());
    let mut tasks = spawn_consumers(&w, &consumers, observer.as_ref(), &progress);
    if let Err(e) = subscribed(&w, observer.is_some(), &progress).await {
        tasks.cancel();
        proxies.stop().await;
        return Err(e);
    }
    let start = Timestamp::now();
    let started = Instant::now();
    faults.reset_epoch();
    spawn_producers(&mut tasks, &w, &producers, &progress);
    if opts.progress {
        tasks.printer = Some(printer(progress.clone(), started, &tasks.stop_observing));
    }

    let mut timeline: Vec<Event> = Vec::new();
    let mut phases = Vec::new();
    let outcome = play(
        s,
        target,
        &faults,
        &proxies,
        start,
        &mut timeline,
        &mut phases,
    )
    .await;
    faults.heal();
    faults.set_phase(None);
    let healed = proxies.heal().await;
    if let Err(e) = outcome.and(healed) {
        tasks.cancel();
        proxies.stop().await;
        return Err(e);
    }

    let mut notes = notes;
    let buffers = drain(s, &w, &progress, tasks, &mut notes).await;
    let _ = producers.close().await;
    let _ = consumers.close().await;
    if let Some(o) = &observer {
        let _ = o.close().await;
    }
    proxies.stop().await;
    Ok(report(
        s, seed, replay, target, &faults, &w, notes, buffers, timeline, phases, start, started,
    ))
}

/// How long the consumers may take to subscribe before the run is refused.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until every consumer (and the observer) is subscribed, so nothing is published before
/// there is somewhere to route it (a RabbitMQ group queue exists from its first subscription
/// on). Fails with the last subscribe error after [`SUBSCRIBE_TIMEOUT`].
async fn subscribed(w: &Workload, observer: bool, progress: &Progress) -> Result<(), RunError> {
    let all = w.groups.len() as u64 * u64::from(w.consumers) + u64::from(observer);
    let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
    while progress.subscribed.load(Ordering::Relaxed) < all {
        if Instant::now() >= deadline {
            return Err(RunError::Target(format!(
                "{} of {all} consumers could not subscribe within {SUBSCRIBE_TIMEOUT:?}: {}",
                all - progress.subscribed.load(Ordering::Relaxed),
                progress
                    .last_subscribe_error()
                    .unwrap_or_else(|| "no error reported".into())
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Starts the producers.
fn spawn_producers(
    tasks: &mut Tasks,
    w: &Arc<Workload>,
    producers: &Arc<dyn Backend>,
    progress: &Arc<Progress>,
) {
    tasks.producers = (0..w.producers)
        .map(|p| {
            tokio::spawn(produce_until(
                w.clone(),
                producers.clone(),
                p,
                Timestamp::now,
                progress.clone(),
                tasks.stop_producing.clone(),
                tasks.abandon_producing.clone(),
            ))
        })
        .collect();
}

/// Starts the consumers and the dead-letter observer (the producers come once they are
/// subscribed).
fn spawn_consumers(
    w: &Arc<Workload>,
    consumers: &Arc<dyn Backend>,
    observer: Option<&Arc<dyn Backend>>,
    progress: &Arc<Progress>,
) -> Tasks {
    let stop_producing = CancellationToken::new();
    let abandon_producing = CancellationToken::new();
    let stop_consuming = CancellationToken::new();
    let stop_observing = CancellationToken::new();
    let mut cs = Vec::new();
    let mut id = 0;
    for g in &w.groups {
        for _ in 0..w.consumers {
            id += 1;
            cs.push(tokio::spawn(consume(
                w.clone(),
                consumers.clone(),
                g.clone(),
                id,
                Timestamp::now,
                progress.clone(),
                stop_consuming.clone(),
            )));
        }
    }
    let observer = observer.map(|o| {
        tokio::spawn(observe_dead_letters(
            w.clone(),
            o.clone(),
            Timestamp::now,
            progress.clone(),
            stop_observing.clone(),
        ))
    });
    Tasks {
        producers: Vec::new(),
        consumers: cs,
        observer,
        printer: None,
        stop_producing,
        abandon_producing,
        stop_consuming,
        stop_observing,
    }
}

fn printer(progress: Arc<Progress>, started: Instant, stop: &CancellationToken) -> JoinHandle<()> {
    let stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => break,
            }
            eprint!(
                "\r  t={:>5.1}s sent {:>8} confirmed {:>8} delivered {:>8} errors {:>6}   ",
                started.elapsed().as_secs_f64(),
                progress.sent.load(Ordering::Relaxed),
                progress.confirmed.load(Ordering::Relaxed),
                progress.delivered.load(Ordering::Relaxed),
                progress.errors.load(Ordering::Relaxed)
            );
        }
        eprintln!();
    })
}

/// Plays the phases: actions, rules and proxy faults, the phase's length, then removal.
async fn play(
    s: &Scenario,
    target: &mut dyn Target,
    faults: &Faults,
    proxies: &Proxies,
    start: Timestamp,
    timeline: &mut Vec<Event>,
    phases: &mut Vec<Window>,
) -> Result<(), RunError> {
    let mut open: Vec<(String, Timestamp)> = Vec::new();
    for phase in &s.phases {
        let at = Timestamp::now();
        faults.set_phase(Some(&phase.name));
        timeline.push(Event::Phase {
            name: phase.name.clone(),
            at,
        });
        for action in &phase.actions {
            let from = Timestamp::now();
            target.act(*action).await?;
            match action {
                Action::Kill9 => open.push((target.kill_label().into(), from)),
                Action::Pause => open.push(("pause".into(), from)),
                Action::Resume => close(&mut open, "pause", timeline),
                Action::Start => close(&mut open, target.kill_label(), timeline),
                Action::Restart => timeline.push(Event::Fault {
                    name: "restart".into(),
                    start: from,
                    end: Some(Timestamp::now()),
                }),
            }
        }
        let active = timeline::begin(phase, faults, proxies).await?;
        tokio::time::sleep(phase.duration).await;
        active.end(timeline).await?;
        phases.push(Window {
            name: phase.name.clone(),
            from_s: at.saturating_since(start).as_secs_f64(),
            to_s: Timestamp::now().saturating_since(start).as_secs_f64(),
        });
    }
    for (name, from) in open {
        timeline.push(Event::Fault {
            name,
            start: from,
            end: None,
        });
    }
    Ok(())
}

fn close(open: &mut Vec<(String, Timestamp)>, name: &str, timeline: &mut Vec<Event>) {
    if let Some(i) = open.iter().position(|(n, _)| n == name) {
        let (name, from) = open.remove(i);
        timeline.push(Event::Fault {
            name,
            start: from,
            end: Some(Timestamp::now()),
        });
    }
}

/// Stops offering load and waits for confirms (producers still waiting at the end of the drain
/// time give up waiting and hand in what they recorded, with a note); then, within the drain
/// time, waits for every confirmed message in every group, stops the consumers (which finish
/// their settles in flight), and waits for every accepted reject in the dead-letter queue before
/// stopping its observer. Returns the tasks' event buffers.
async fn drain(
    s: &Scenario,
    w: &Workload,
    progress: &Progress,
    tasks: Tasks,
    notes: &mut Vec<String>,
) -> Vec<Vec<Event>> {
    tasks.stop_producing.cancel();
    let deadline = Instant::now() + s.drain;
    let mut buffers = Vec::new();
    let abandon = &tasks.abandon_producing;
    for mut p in tasks.producers {
        let joined = tokio::select! {
            r = &mut p => r,
            _ = tokio::time::sleep_until(deadline.into()), if !abandon.is_cancelled() => {
                abandon.cancel();
                p.await
            }
        };
        match joined {
            Ok(events) => buffers.push(events),
            Err(e) => tracing::error!("producer task failed: {e}"),
        }
    }
    if tasks.abandon_producing.is_cancelled() {
        let open = progress.sent.load(Ordering::Relaxed).saturating_sub(
            progress.confirmed.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed),
        );
        let note = format!(
            "producers still waited for the outcome of {open} publishes (no confirm, no error) when the drain time ({:?}) ran out: they count as unaccounted",
            s.drain
        );
        tracing::warn!("{note}");
        notes.push(note);
    }
    let groups = w.groups.len() as u64;
    while Instant::now() < deadline
        && progress.confirmed_delivered.load(Ordering::Relaxed)
            < progress.confirmed.load(Ordering::Relaxed) * groups
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks.stop_consuming.cancel();
    for c in tasks.consumers {
        if let Ok(events) = c.await {
            buffers.push(events);
        }
    }
    if let Some(o) = tasks.observer {
        while Instant::now() < deadline && !progress.rejects_dead_lettered() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tasks.stop_observing.cancel();
        if let Ok(events) = o.await {
            buffers.push(events);
        }
    }
    tasks.stop_observing.cancel();
    if let Some(p) = tasks.printer {
        let _ = p.await;
    }
    buffers
}

#[allow(clippy::too_many_arguments)]
fn report(
    s: &Scenario,
    seed: u64,
    replay: String,
    target: &dyn Target,
    faults: &Faults,
    w: &Workload,
    notes: Vec<String>,
    mut buffers: Vec<Vec<Event>>,
    timeline: Vec<Event>,
    phases: Vec<Window>,
    start: Timestamp,
    started: Instant,
) -> Report {
    buffers.push(timeline);
    let events = merge(buffers);
    let findings = check_with(&events, &w.groups, w.max_deliveries, start);
    let duration_s = started.elapsed().as_secs_f64();
    let fault_windows = events
        .iter()
        .filter_map(|e| match e {
            Event::Fault {
                name,
                start: from,
                end,
            } => Some(Window {
                name: name.clone(),
                from_s: from.saturating_since(start).as_secs_f64(),
                to_s: end.map_or(duration_s, |t| t.saturating_since(start).as_secs_f64()),
            }),
            _ => None,
        })
        .collect();
    let mut injections = std::collections::BTreeMap::new();
    for i in faults.events() {
        *injections
            .entry(format!("{}: {}@{}", i.rule, i.fault, i.point))
            .or_insert(0u64) += 1;
    }
    let verdicts = s.criteria.judge(&findings);
    Report {
        scenario: s.name.clone(),
        description: s.description.clone(),
        seed,
        replay,
        target: target.describe(),
        notes,
        duration_s,
        pass: verdicts.iter().all(|v| v.pass),
        verdicts,
        faults: fault_windows,
        phases,
        injections,
        findings,
    }
}

#[cfg(test)]
mod tests;
