//! Running one case against one target: repetitions, each on a fresh topology, with warm-up,
//! the measured phase, CPU and fsync accounting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Options;
use crate::drivers::{Driver, Producer};
use crate::error::{BenchError, Result};
use crate::load::{self, Epoch, Sink, Until};
use crate::machine::{CpuMark, CpuUse};
use crate::spec::{Case, Mode, Target};

/// What one repetition measured.
#[derive(Debug)]
pub struct RepRaw {
    /// Messages published in the measured phase.
    pub sent: u64,
    /// Measured deliveries (all receivers).
    pub delivered: u64,
    /// Messages per second through the whole pipeline (see the report's docs).
    pub msgs_per_sec: f64,
    /// Messages per second confirmed to the producer.
    pub publish_msgs_per_sec: f64,
    /// Publish-ack latency, ns.
    pub ack: Option<Histogram<u64>>,
    /// End-to-end latency, ns.
    pub e2e: Histogram<u64>,
    /// CPU over the measured phase.
    pub cpu: CpuUse,
    /// fsyncs during the measured phase.
    pub fsyncs: Option<u64>,
    /// W7: seconds from stopping the broker to it serving again.
    pub restart_secs: Option<f64>,
    /// Anything a reader must know about this repetition.
    pub notes: Vec<String>,
}

struct Receivers {
    sink: Arc<Sink>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Result<Histogram<u64>>>>,
}

impl Receivers {
    async fn start(
        driver: &mut dyn Driver,
        case: &Case,
        epoch: Epoch,
        redeliver: bool,
    ) -> Result<Receivers> {
        let sink = Sink::new();
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for i in 0..case.shape.receivers() {
            let rx = driver.receiver(i).await?;
            tasks.push(tokio::spawn(load::receive(
                rx,
                sink.clone(),
                epoch,
                redeliver,
                stop.clone(),
            )));
        }
        Ok(Receivers { sink, stop, tasks })
    }

    /// Stops the loops and merges their histograms.
    async fn finish(self) -> Result<Histogram<u64>> {
        self.stop.cancel();
        let mut all = load::histogram();
        let mut first_err = None;
        for t in self.tasks {
            match t.await {
                Ok(Ok(h)) => {
                    let _ = all.add(&h);
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(BenchError::broker("load", "receive task", e));
                }
            }
        }
        first_err.map_or(Ok(all), Err)
    }

    fn abort(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.abort();
        }
    }

    /// A receive loop that ended early (an error) while waiting.
    fn failed(&self) -> bool {
        self.tasks.iter().any(JoinHandle::is_finished)
    }
}

/// Runs one repetition of `case` on `driver` (already opened).
pub async fn repetition(
    driver: &mut dyn Driver,
    target: Target,
    case: &Case,
    opts: &Options,
) -> Result<RepRaw> {
    driver.prepare().await?;
    let r = match case.mode {
        Mode::Stream => streaming(driver, target, case, opts).await,
        Mode::Backlog { count } => backlog(driver, target, case, opts, count).await,
        Mode::Redeliver { count, ack_wait } => {
            redelivery(driver, target, case, opts, count, ack_wait).await
        }
    };
    let cleaned = driver.cleanup().await;
    let r = r?;
    cleaned?;
    Ok(r)
}

fn stall(opts: &Options) -> Duration {
    if opts.quick {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(30)
    }
}

async fn wait_delivered(
    rx: &Receivers,
    target: Target,
    what: &str,
    expected: u64,
    stall: Duration,
    warm: bool,
) -> Result<()> {
    let sink = rx.sink.clone();
    let progress = || {
        if warm {
            sink.warm.load(std::sync::atomic::Ordering::Acquire)
        } else {
            sink.counted()
        }
    };
    tokio::select! {
        r = load::wait_for(what, target.name(), stall, progress, expected) => r,
        () = async {
            while !rx.failed() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } => Err(BenchError::Stalled {
            target: target.name(),
            what: format!("{what}: a receiver stopped early"),
        }),
    }
}

async fn streaming(
    driver: &mut dyn Driver,
    target: Target,
    case: &Case,
    opts: &Options,
) -> Result<RepRaw> {
    let epoch = Epoch::new();
    let rx = Receivers::start(driver, case, epoch, false).await?;
    let result = async {
        let producer: Arc<dyn Producer> = Arc::from(driver.producer().await?);
        // Warm-up: same path, not measured.
        let warm_until = Until {
            count: opts.warmup_messages(),
            time: opts.warmup,
        };
        let warm = load::publish(
            producer.clone(),
            epoch,
            case.size,
            case.window,
            case.rate,
            warm_until,
            true,
        )
        .await?;
        let expected_warm = case.shape.deliveries(warm.sent);
        let lossy = driver.lossy();
        // At-most-once: what did not arrive within a quiet spell was dropped on the way.
        let quiet = Duration::from_secs(2);
        let patience = if lossy { quiet } else { stall(opts) };
        match wait_delivered(&rx, target, "warm-up", expected_warm, patience, true).await {
            Err(BenchError::Stalled { .. }) if lossy => {}
            other => other?,
        }
        let count = match case.rate {
            Some(r) => ((r as f64 * opts.duration.as_secs_f64()) as u64).min(opts.max_messages),
            None => opts.max_messages,
        };
        let pid = driver.broker_pid();
        let fsyncs0 = driver.fsyncs();
        let mark = CpuMark::now(pid);
        let first_counted = rx.sink.counted();
        let published = load::publish(
            producer.clone(),
            epoch,
            case.size,
            case.window,
            case.rate,
            Until {
                count,
                // A fixed-rate run keeps to its schedule while the broker is slow, up to 4× the
                // planned time; what was not sent by then is reported.
                time: if case.rate.is_some() {
                    opts.duration * 4
                } else {
                    opts.duration
                },
            },
            false,
        )
        .await?;
        let expected = case.shape.deliveries(published.sent) + first_counted;
        let mut notes = Vec::new();
        match wait_delivered(&rx, target, "deliveries", expected, patience, false).await {
            Err(BenchError::Stalled { .. }) if lossy => {
                let got = rx.sink.counted() - first_counted;
                let want = case.shape.deliveries(published.sent);
                notes.push(format!(
                    "at-most-once: {} of {want} deliveries ({:.1}%) dropped for slow consumers; \
                     msgs/s counts what arrived",
                    want - got,
                    (want - got) as f64 * 100.0 / want.max(1) as f64
                ));
            }
            other => other?,
        }
        let cpu = mark.since(pid);
        let fsyncs = match (fsyncs0, driver.fsyncs()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let last = rx.sink.last_ns.load(std::sync::atomic::Ordering::Acquire);
        let secs = ns_secs(last.saturating_sub(published.first_ns));
        let pub_secs = ns_secs(published.done_ns.saturating_sub(published.first_ns));
        drop(producer);
        if let Some(r) = case.rate
            && published.sent < count
        {
            notes.push(format!(
                "offered {r} msg/s not sustained: {} of {count} scheduled messages sent within \
                 4× the planned {:?}",
                published.sent, opts.duration
            ));
        }
        Ok((published, cpu, fsyncs, secs, pub_secs, notes))
    }
    .await;
    let (published, cpu, fsyncs, secs, pub_secs, notes) = match result {
        Ok(x) => x,
        Err(e) => {
            rx.abort();
            return Err(e);
        }
    };
    let delivered = rx.sink.counted();
    let e2e = rx.finish().await?;
    // Messages through the pipeline: all, or (at-most-once) those that arrived, per receiver.
    let through = (delivered as f64 / case.shape.deliveries(1) as f64).min(published.sent as f64);
    Ok(RepRaw {
        sent: published.sent,
        delivered,
        msgs_per_sec: if secs > 0.0 { through / secs } else { 0.0 },
        publish_msgs_per_sec: rate(published.sent, pub_secs),
        ack: published.ack,
        e2e,
        cpu,
        fsyncs,
        restart_secs: None,
        notes,
    })
}

async fn backlog(
    driver: &mut dyn Driver,
    target: Target,
    case: &Case,
    opts: &Options,
    count: u64,
) -> Result<RepRaw> {
    let epoch = Epoch::new();
    let mut notes = Vec::new();
    let pid = driver.broker_pid();
    let fsyncs0 = driver.fsyncs();
    let mark = CpuMark::now(pid);
    let producer: Arc<dyn Producer> = Arc::from(driver.producer().await?);
    let published = load::publish(
        producer.clone(),
        epoch,
        case.size,
        case.window,
        None,
        Until {
            count,
            time: opts.backlog_timeout,
        },
        false,
    )
    .await?;
    drop(producer);
    if published.sent < count {
        notes.push(format!(
            "backlog stopped at {} of {count} messages: publishing hit the {:?} limit",
            published.sent, opts.backlog_timeout
        ));
    }
    let mut cpu = mark.since(pid);
    let t0 = Instant::now();
    let restarted = driver.restart().await?;
    let restart_secs = restarted.then(|| t0.elapsed().as_secs_f64());
    if !restarted {
        notes.push("not restarted: the benchmark restarts only brokers it started".into());
    }
    let pid = driver.broker_pid();
    let mark = CpuMark::now(pid);
    let drain_start = epoch.now_ns();
    let rx = Receivers::start(driver, case, epoch, false).await?;
    let expected = case.shape.deliveries(published.sent);
    if let Err(e) = wait_delivered(&rx, target, "draining", expected, stall(opts), false).await {
        rx.abort();
        return Err(e);
    }
    let after = mark.since(pid);
    cpu.wall_secs += after.wall_secs;
    cpu.client_secs += after.client_secs;
    cpu.broker_secs = match (cpu.broker_secs, after.broker_secs) {
        (Some(a), Some(b)) => Some(a + b),
        _ => None,
    };
    cpu.other_cores = cpu.other_cores.max(after.other_cores);
    let fsyncs = match (fsyncs0, driver.fsyncs()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let last = rx.sink.last_ns.load(std::sync::atomic::Ordering::Acquire);
    let delivered = rx.sink.counted();
    let e2e = rx.finish().await?;
    notes.push(
        "msgs/s is the drain rate after the restart; publish msgs/s fills the backlog".into(),
    );
    Ok(RepRaw {
        sent: published.sent,
        delivered,
        msgs_per_sec: rate(published.sent, ns_secs(last.saturating_sub(drain_start))),
        publish_msgs_per_sec: rate(
            published.sent,
            ns_secs(published.done_ns.saturating_sub(published.first_ns)),
        ),
        ack: published.ack,
        e2e,
        cpu,
        fsyncs,
        restart_secs,
        notes,
    })
}

async fn redelivery(
    driver: &mut dyn Driver,
    target: Target,
    case: &Case,
    opts: &Options,
    count: u64,
    ack_wait: Duration,
) -> Result<RepRaw> {
    let epoch = Epoch::new();
    let rx = Receivers::start(driver, case, epoch, true).await?;
    let result = async {
        let producer: Arc<dyn Producer> = Arc::from(driver.producer().await?);
        let pid = driver.broker_pid();
        let fsyncs0 = driver.fsyncs();
        let mark = CpuMark::now(pid);
        let published = load::publish(
            producer.clone(),
            epoch,
            case.size,
            case.window,
            None,
            Until {
                count,
                time: opts.backlog_timeout,
            },
            false,
        )
        .await?;
        wait_delivered(
            &rx,
            target,
            "redeliveries",
            published.sent,
            stall(opts) + ack_wait * 2,
            false,
        )
        .await?;
        let cpu = mark.since(pid);
        let fsyncs = match (fsyncs0, driver.fsyncs()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        Ok((published, cpu, fsyncs))
    }
    .await;
    let (published, cpu, fsyncs) = match result {
        Ok(x) => x,
        Err(e) => {
            rx.abort();
            return Err(e);
        }
    };
    let first = rx.sink.first_ns.load(std::sync::atomic::Ordering::Acquire);
    let last = rx.sink.last_ns.load(std::sync::atomic::Ordering::Acquire);
    let delivered = rx.sink.counted();
    let e2e = rx.finish().await?;
    Ok(RepRaw {
        sent: published.sent,
        delivered,
        msgs_per_sec: rate(published.sent, ns_secs(last.saturating_sub(first))),
        publish_msgs_per_sec: rate(
            published.sent,
            ns_secs(published.done_ns.saturating_sub(published.first_ns)),
        ),
        ack: published.ack,
        e2e,
        cpu,
        fsyncs,
        restart_secs: None,
        notes: vec![format!(
            "msgs/s is the rate of redelivered messages acked (first redelivery to last ack); \
             end-to-end latency includes the {ack_wait:?} lease"
        )],
    })
}

fn ns_secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}
