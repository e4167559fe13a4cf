//! `squall chaos run`: a game day against a fresh `squall serve`, with a verdict.
//! `squall chaos proxy`: the fault proxy with its HTTP API, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use squall_chaos::proxy::api::{CreateProxy, ProxyApi};
use squall_chaos::rng::Seed;
use squall_chaos::runner::{RunOptions, run};
use squall_chaos::scenario::Scenario;
use tokio_util::sync::CancellationToken;

/// The default game day (`scenarios/broker-kill.toml`), built in.
const DEFAULT: &str = include_str!("../../../scenarios/broker-kill.toml");

/// `squall chaos ...`
#[derive(Debug, clap::Subcommand)]
pub enum Chaos {
    /// Run a scenario (default: the built-in broker-kill game day) and print its verdict.
    Run(RunArgs),
    /// Run a TCP fault proxy between clients and a broker, controlled over HTTP, until Ctrl-C.
    Proxy(ProxyArgs),
}

/// Arguments of `squall chaos proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Where clients connect (`host:port`; port 0 picks a free one, printed at start).
    #[arg(long)]
    listen: SocketAddr,
    /// The broker the proxy forwards to (`host:port`).
    #[arg(long)]
    upstream: String,
    /// Serve the HTTP control API here (`host:port`; it has no authentication: keep it on
    /// loopback). Faults: `POST /proxies/<name>/faults` with e.g.
    /// `{"name":"slow","kind":"latency","latency":"100ms"}`; `POST /proxies/<name>/down`, `/up`.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// The proxy's name in the API.
    #[arg(long, default_value = "proxy")]
    name: String,
    /// Seed of jitter and slicing (random if unset; printed).
    #[arg(long, env = "SQUALL_CHAOS_SEED")]
    seed: Option<u64>,
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
    match cmd {
        Chaos::Run(args) => run_scenario(args, out),
        Chaos::Proxy(args) => {
            proxy(args, out)?;
            Ok(true)
        }
    }
}

fn proxy(args: ProxyArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let seed = args.seed.unwrap_or_else(|| Seed::random().value());
        let api = ProxyApi::new(Seed::new(seed));
        let p = api
            .create(CreateProxy {
                name: args.name.clone(),
                listen: Some(args.listen),
                upstream: args.upstream.clone(),
            })
            .await
            .with_context(|| format!("starting the proxy on {}", args.listen))?;
        writeln!(
            out,
            "proxy {}: listening on {}, forwarding to {} (seed {seed})",
            args.name,
            p.listen_addr(),
            args.upstream
        )?;
        let shutdown = CancellationToken::new();
        let server = match args.api {
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    eprintln!(
                        "warning: the proxy API on {addr} has no authentication and is reachable from the network"
                    );
                }
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the API on {addr}"))?;
                let bound = listener.local_addr()?;
                writeln!(
                    out,
                    "API: http://{bound}/proxies/{} (POST .../faults, DELETE .../faults/<fault>, POST .../down, .../up; POST /reset)",
                    args.name
                )?;
                Some(tokio::spawn(api.clone().serve(listener, shutdown.clone())))
            }
            None => None,
        };
        writeln!(out, "Ctrl-C stops it.")?;
        out.flush()?;
        wait_for_stop().await?;
        shutdown.cancel();
        if let Some(s) = server {
            s.await?.context("serving the proxy API")?;
        }
        p.stop().await;
        writeln!(out, "proxy {} stopped", args.name)?;
        Ok(())
    })
}

/// Ctrl-C (SIGINT) or SIGTERM.
async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn run_scenario(args: RunArgs, out: &mut impl std::io::Write) -> anyhow::Result<bool> {
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
        // The built-in targets of the scenario's `[target]`. A `--backend URL` option selecting
        // another broker would set a factory here (see `squall_chaos::runner::target`).
        target: None,
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
