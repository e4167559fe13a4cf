//! # squall-bench
//!
//! Benchmark harness: one load generator driving squall (embedded in-process, and `squall serve`
//! over loopback), NATS (core and JetStream) and RabbitMQ (classic and quorum queues) side by
//! side, in the same run, at matched durability, through each broker's own client. The
//! `squall bench` subcommand is its front end.
//!
//! ## Map
//! | module | what it holds |
//! |---|---|
//! | [`spec`] | [`Target`], [`Workload`] W1–W10, durability requests and labels, the [`spec::Case`]s each workload expands to, and which pairs cannot run (with the reason) |
//! | [`load`] | the load generator: open-loop or window-limited producer, receive loops, HdrHistograms, payload timestamps |
//! | [`runner`] | one repetition of a case: fresh topology, warm-up, measured phase, CPU and fsync accounting; W7's restart and W9's redelivery |
//! | [`drivers`] | one driver per client: squall-broker / squall-client, async-nats, lapin |
//! | [`peers`] | child processes: `squall serve`, the benchmark's own `nats-server`s; finding peer PIDs and versions |
//! | [`machine`] | `/proc`: machine description, per-process CPU seconds, the busy-machine guard |
//! | [`report`] | JSON types, aggregation (median, min–max), ratios, Markdown |
//! | [`html`] | the HTML page with inline-SVG bar charts |
//! | [`error`] | [`BenchError`] |
//!
//! ## Fairness rules (and their trade-offs)
//! - Same load generator, same process, same message size, same window of unconfirmed
//!   publishes per producer, same prefetch for every consumer; one connection per producer and
//!   per consumer, as separate processes would have.
//! - Each row carries the durability label of what its configuration really promises at the
//!   ack: squall fsync mode is `fsync-batched` (group commit), JetStream with
//!   `sync_interval: always` is `fsync-per-message`, JetStream's default is `page-cache`
//!   (fsync every 2 minutes), RabbitMQ persistent + confirms (classic or quorum) is
//!   `fsync-batched`. A peer with no matching mode gets a row saying so, never a silent gap.
//! - Fresh queues / streams (unique names) and, for squall, a fresh broker per repetition;
//!   warm-up messages go the same path and are not measured.
//! - Latency is measured from the intended send time (see [`load`]); a fixed-rate run that
//!   falls behind shows it in its latencies.
//! - CPU: the broker's process from `/proc/<pid>/stat` (children we started; the pre-started
//!   `nats-server` / `beam.smp` found in `/proc`); the embedded broker shares the load
//!   generator's process, so its CPU is in the client column.
//! - A run refuses to start a row when other processes use more than a threshold of a core
//!   (unless allowed, and then every output says so).
//!
//! The peers are not tuned beyond their documented durability switches: a tuned peer might do
//! better, and a reader can rerun with other settings of their own.

pub mod drivers;
pub mod error;
pub mod html;
pub mod load;
pub mod machine;
pub mod peers;
pub mod report;
pub mod runner;
pub mod spec;

mod suite;

use std::path::PathBuf;
use std::time::Duration;

pub use error::{BenchError, Result};
pub use report::Report;
pub use spec::{Target, Workload};
pub use suite::run;

/// How to run the suite.
#[derive(Debug, Clone)]
pub struct Options {
    /// Harness check: tiny counts, one repetition, no figures.
    pub quick: bool,
    /// Workloads to run.
    pub workloads: Vec<Workload>,
    /// Targets to run them on.
    pub targets: Vec<Target>,
    /// Length of a measured phase (max-rate runs) or of the schedule (fixed-rate runs).
    pub duration: Duration,
    /// Length of the warm-up before each measured phase.
    pub warmup: Duration,
    /// Repetitions per row (median and min–max are over these).
    pub repetitions: usize,
    /// Unconfirmed publishes per producer.
    pub window: usize,
    /// Unacked deliveries per consumer.
    pub prefetch: usize,
    /// W2's offered rates.
    pub rates: Vec<u64>,
    /// W7's backlog.
    pub backlog: u64,
    /// Longest time W7 (and W9) may spend publishing.
    pub backlog_timeout: Duration,
    /// W9's message count.
    pub redeliver: u64,
    /// Most messages in one measured phase.
    pub max_messages: u64,
    /// Run (and label the output) even when the machine is busy.
    pub allow_busy: bool,
    /// Cores other processes may use before a row without the machine counting as busy.
    pub busy_threshold: f64,
    /// How long the busy check samples.
    pub busy_sample: Duration,
    /// The `squall` executable, for `squall serve`.
    pub squall_exe: Option<PathBuf>,
    /// A NATS server to use when no `nats-server` ≥ 2.10 can be started.
    pub nats_url: Option<String>,
    /// The `nats-server` binary to start (≥ 2.10); `None`: the newest ≥ 2.10 on `PATH`.
    pub nats_server: Option<PathBuf>,
    /// Start the benchmark's own `nats-server`s when a binary ≥ 2.10 is found (default); off:
    /// use `nats_url` and report the `sync_interval: always` rows as not run.
    pub own_nats: bool,
    /// RabbitMQ's AMQP URL.
    pub amqp_url: Option<String>,
    /// Where data directories go (default: the system temporary directory).
    pub scratch: Option<PathBuf>,
    /// The command line, for the report.
    pub command: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            workloads: Workload::ALL.to_vec(),
            targets: Target::ALL.to_vec(),
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            repetitions: 3,
            window: 256,
            prefetch: 1024,
            rates: vec![5_000, 20_000, 50_000],
            backlog: 500_000,
            backlog_timeout: Duration::from_secs(180),
            redeliver: 20_000,
            max_messages: 10_000_000,
            allow_busy: false,
            busy_threshold: 0.25,
            busy_sample: Duration::from_secs(1),
            squall_exe: None,
            nats_url: None,
            nats_server: None,
            own_nats: true,
            amqp_url: None,
            scratch: None,
            command: None,
        }
    }
}

impl Options {
    /// Turns these options into a quick harness check: tiny counts, one repetition.
    pub fn into_quick(self) -> Options {
        Options {
            quick: true,
            duration: Duration::from_millis(200),
            warmup: Duration::from_millis(50),
            repetitions: 1,
            backlog: self.backlog.min(300),
            redeliver: self.redeliver.min(50),
            max_messages: self.max_messages.min(300),
            busy_sample: Duration::from_millis(100),
            backlog_timeout: Duration::from_secs(20),
            ..self
        }
    }

    /// Warm-up message cap.
    pub fn warmup_messages(&self) -> u64 {
        if self.quick {
            20
        } else {
            self.max_messages / 10
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |option, detail: &str| {
            Err(BenchError::Options {
                option,
                detail: detail.into(),
            })
        };
        if self.repetitions == 0 {
            return bad("--repetitions", "must be at least 1");
        }
        if self.window == 0 {
            return bad("--window", "must be at least 1");
        }
        if self.prefetch == 0 || self.prefetch > 65_535 {
            return bad("--prefetch", "must be 1 to 65535 (RabbitMQ's limit)");
        }
        if self.duration.is_zero() {
            return bad("--duration", "must be positive");
        }
        if self.rates.contains(&0) {
            return bad("--rates", "rates must be positive");
        }
        if self.backlog == 0 || self.redeliver == 0 || self.max_messages == 0 {
            return bad("--backlog", "counts must be positive");
        }
        Ok(())
    }
}
