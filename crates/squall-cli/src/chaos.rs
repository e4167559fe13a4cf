//! `squall chaos run`: a game day against a fresh `squall serve`, with a verdict.

use std::path::PathBuf;

use anyhow::Context;
use squall_chaos::runner::{RunOptions, run};
use squall_chaos::scenario::Scenario;

/// The default game day (`scenarios/broker-kill.toml`), built in.
const DEFAULT: &str = include_str!("../../../scenarios/broker-kill.toml");

/// `squall chaos ...`
#[derive(Debug, clap::Subcommand)]
pub enum Chaos {
    /// Run a scenario (default: the built-in broker-kill game day) and print its verdict.
    Run(RunArgs),
}

/// Arguments of `squall chaos run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario file (TOML). Default: kill -9 the broker under load and restart it.
    scenario: Option<PathBuf>,
    /// Seed of every random choice (printed at the start; replays the run).
    #[arg(long, env = "SQUALL_CHAOS_SEED")]
    seed: Option<u64>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long, default_value = "squall-chaos-report.html")]
    html: PathBuf,
    /// A short version (phases and message count scaled to a third), for CI.
    #[arg(long)]
    quick: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// Runs the command; `Ok(false)` when the scenario failed its criteria (exit code 1).
pub fn run_cmd(cmd: Chaos, out: &mut impl std::io::Write) -> anyhow::Result<bool> {
    let Chaos::Run(args) = cmd;
    let (text, path) = match &args.scenario {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            DEFAULT.to_string(),
            "scenarios/broker-kill.toml (built in)".to_string(),
        ),
    };
    let mut scenario = Scenario::parse(&text, &path)?;
    if args.quick {
        scenario = scenario.scaled(1.0 / 3.0);
    }
    let mut replay = String::from("squall chaos run");
    if let Some(p) = &args.scenario {
        replay.push_str(&format!(" {}", p.display()));
    }
    replay.push_str(" --seed {seed}");
    if args.quick {
        replay.push_str(" --quick");
    }
    let opts = RunOptions {
        seed: args.seed,
        squall_bin: std::env::current_exe().context("locating the squall binary")?,
        progress: !args.quiet,
        replay,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&scenario, &opts))?;
    write!(out, "{}", report.summary())?;
    std::fs::write(&args.html, report.html())
        .with_context(|| format!("writing {}", args.html.display()))?;
    writeln!(out, "HTML report: {}", args.html.display())?;
    if let Some(j) = &args.json {
        std::fs::write(j, report.json()).with_context(|| format!("writing {}", j.display()))?;
        writeln!(out, "JSON report: {}", j.display())?;
    }
    Ok(report.pass)
}
