//! `squall bench`: squall side by side with NATS JetStream and RabbitMQ (see the squall-bench
//! crate for the workloads, labels and fairness rules).
//!
//! Progress goes to stderr, the Markdown summary to stdout; `--json`, `--markdown` and `--html`
//! write files. Exit codes: 0 every row measured or explained, 3 the machine was busy (nothing
//! reported; `--allow-busy` to run anyway), 4 some row failed (the reports are still written),
//! 1 any other error.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use squall_bench::{BenchError, Options, Target, Workload};

/// Arguments of `squall bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Harness check: tiny counts, each driver once, in seconds. Not figures.
    #[arg(long)]
    quick: bool,
    /// Workloads, comma-separated (W1..W10, or all).
    #[arg(long, default_value = "all")]
    workloads: String,
    /// Targets, comma-separated: squall-embedded, squall-serve, nats-core, nats-js,
    /// rabbitmq-classic, rabbitmq-quorum; groups squall, nats, rabbitmq, all.
    #[arg(long, default_value = "all")]
    targets: String,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown summary here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write the HTML page (bar charts) here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Run even if other processes use the CPU; every output then says the machine was busy.
    #[arg(long)]
    allow_busy: bool,
    /// Cores other processes may use before a row (sampled while idle).
    #[arg(long, default_value_t = 0.25)]
    busy_threshold: f64,
    /// Length of each measured phase (max rate) or schedule (fixed rate).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    duration: Duration,
    /// Warm-up before each measured phase.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Repetitions per row.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Unconfirmed publishes per producer.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Unacked deliveries per consumer (RabbitMQ prefetch, JetStream max_ack_pending, squall
    /// max_in_flight).
    #[arg(long, default_value_t = 1024)]
    prefetch: usize,
    /// W2's offered rates, messages per second.
    #[arg(long, value_delimiter = ',', default_value = "5000,20000,50000")]
    rates: Vec<u64>,
    /// W7's backlog.
    #[arg(long, default_value_t = 500_000)]
    backlog: u64,
    /// W9's message count.
    #[arg(long, default_value_t = 20_000)]
    redeliver: u64,
    /// NATS server to use when the benchmark cannot start its own.
    #[arg(long, env = "SQUALL_NATS_URL")]
    nats_url: Option<String>,
    /// nats-server ≥ 2.10 binary to start (default: the newest on PATH).
    #[arg(long, env = "SQUALL_BENCH_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Never start a nats-server: use --nats-url (JetStream sync_interval rows are then not run).
    #[arg(long)]
    no_own_nats: bool,
    /// RabbitMQ AMQP URL.
    #[arg(long, env = "SQUALL_AMQP_URL", hide_env_values = true)]
    amqp_url: Option<String>,
    /// Directory for the brokers' data (default: the system temporary directory).
    #[arg(long)]
    scratch: Option<PathBuf>,
}

/// Runs the suite; returns the exit code.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<u8> {
    let mut opts = Options {
        workloads: Workload::parse_list(&args.workloads)?,
        targets: Target::parse_list(&args.targets)?,
        duration: args.duration,
        warmup: args.warmup,
        repetitions: args.repetitions,
        window: args.window,
        prefetch: args.prefetch,
        rates: args.rates,
        backlog: args.backlog,
        redeliver: args.redeliver,
        allow_busy: args.allow_busy,
        busy_threshold: args.busy_threshold,
        squall_exe: std::env::current_exe().ok(),
        nats_url: args.nats_url,
        nats_server: args.nats_server,
        own_nats: !args.no_own_nats,
        amqp_url: args.amqp_url,
        scratch: args.scratch,
        command: Some(command_line()),
        ..Options::default()
    };
    if args.quick {
        opts = opts.into_quick();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut progress = |line: &str| eprintln!("bench: {line}");
    let report = match rt.block_on(squall_bench::run(opts, &mut progress)) {
        Ok(r) => r,
        Err(e @ BenchError::Busy { .. }) => {
            eprintln!("error: {e}");
            return Ok(3);
        }
        Err(e) => return Err(e.into()),
    };
    drop(rt);
    if let Some(p) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    let md = squall_bench::report::markdown(&report);
    if let Some(p) = &args.markdown {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.html {
        std::fs::write(p, squall_bench::html::page(&report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    out.write_all(md.as_bytes())?;
    let failed = report
        .rows
        .iter()
        .filter(|r| r.status == squall_bench::report::Status::Failed)
        .count();
    if failed > 0 {
        eprintln!("error: {failed} row(s) failed; see the report");
        return Ok(4);
    }
    Ok(0)
}

/// The command line as typed, with the program shown as `squall`.
fn command_line() -> String {
    let mut args = std::env::args();
    let _ = args.next();
    std::iter::once("squall".to_string())
        .chain(args.map(|a| if a.contains(' ') { format!("'{a}'") } else { a }))
        .collect::<Vec<_>>()
        .join(" ")
}
