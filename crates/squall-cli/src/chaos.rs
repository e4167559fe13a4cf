//! `squall chaos run`: a game day against a fresh `squall serve` (or, with `--backend URL`, any
//! broker the CLI can connect to), with a verdict.
//! `squall chaos proxy`: the fault proxy with its HTTP API, until Ctrl-C.
//!
//! With `--backend URL` the scenario's workload and timeline run against that broker instead of
//! the scenario's `[target]`, through an [`ExternalTarget`] whose connector is
//! [`backends::connect`]: fault-proxy phases dial a proxy standing in for the URL's
//! `host:port`; process faults run the `--stop` / `--start` (and `--pause` / `--resume`)
//! commands, and a scenario that has process faults without them is refused before anything
//! runs. Scenarios with `kind = "external"` targets use the same connector.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use squall_chaos::process::ExternalBroker;
use squall_chaos::proxy::api::{CreateProxy, ProxyApi};
use squall_chaos::rng::Seed;
use squall_chaos::runner::target::{
    CommandNames, Connector, ExternalTarget, TargetFactory, parse_ready, redact, with_connector,
};
use squall_chaos::runner::{RunOptions, Target, run};
use squall_chaos::scenario::Scenario;
use tokio_util::sync::CancellationToken;

use crate::backends;

/// The default game day (`scenarios/broker-kill.toml`), built in.
const DEFAULT: &str = include_str!("../../../scenarios/broker-kill.toml");

/// `squall chaos ...`
#[derive(Debug, clap::Subcommand)]
pub enum Chaos {
    /// Run a scenario (default: the built-in broker-kill game day) and print its verdict; with
    /// `--backend URL`, against that broker (NATS, RabbitMQ, ...) instead of a fresh
    /// `squall serve`.
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
    /// Run the scenario against this broker instead of its `[target]`: `squall://`, `nats://`
    /// (`?jetstream=1` for JetStream), `amqp://`, `kafka://`... Fault-proxy phases put a proxy
    /// in front of the URL's host:port; message-level rules apply as with any target; the run's
    /// subjects get a unique tag so other runs' queues play no part. The report names the URL
    /// (password hidden).
    #[arg(long, value_name = "URL")]
    backend: Option<String>,
    /// With --backend: the shell command that starts the broker again (`start` and `restart`
    /// process faults), e.g. `systemctl start nats-server`. Needed, with --stop, by scenarios
    /// with process faults.
    #[arg(long, value_name = "CMD", requires_all = ["backend", "stop"])]
    start: Option<String>,
    /// With --backend: the shell command that stops (kills) the broker (`kill9` and `restart`),
    /// e.g. `systemctl kill -s KILL nats-server`.
    #[arg(long, value_name = "CMD", requires_all = ["backend", "start"])]
    stop: Option<String>,
    /// With --backend: the shell command that freezes the broker (`pause`), e.g.
    /// `docker pause nats`.
    #[arg(long, value_name = "CMD", requires_all = ["backend", "resume", "start"])]
    pause: Option<String>,
    /// With --backend: the shell command that thaws it (`resume`).
    #[arg(long, value_name = "CMD", requires_all = ["backend", "pause", "start"])]
    resume: Option<String>,
    /// With --start: how to tell the broker is back: `host:port` (TCP connect), `http://...`
    /// (GET answering 200) or `none`. Default: a TCP connect to the URL's host:port.
    #[arg(long, value_name = "CHECK", requires = "start")]
    ready: Option<String>,
    /// With --start: bound of each command and of the ready check.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    command_timeout: Duration,
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
    let opts = RunOptions {
        seed: args.seed,
        squall_bin: std::env::current_exe().context("locating the squall binary")?,
        progress: !args.quiet,
        replay: replay(&args),
        target: Some(factory(&args)?),
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

/// The command that replays the run (`{seed}` filled in by the runner; the URL's password
/// hidden).
fn replay(args: &RunArgs) -> String {
    let mut r = String::from("squall chaos run");
    if let Some(p) = &args.scenario {
        r.push(' ');
        r.push_str(&quote(&p.display().to_string()));
    }
    r.push_str(" --seed {seed}");
    if args.quick {
        r.push_str(" --quick");
    }
    let flags = [
        ("--backend", args.backend.as_deref().map(redact)),
        ("--start", args.start.clone()),
        ("--stop", args.stop.clone()),
        ("--pause", args.pause.clone()),
        ("--resume", args.resume.clone()),
        ("--ready", args.ready.clone()),
    ];
    for (flag, value) in flags {
        if let Some(v) = value {
            r.push_str(&format!(" {flag} {}", quote(&v)));
        }
    }
    if args.start.is_some() && args.command_timeout != Duration::from_secs(60) {
        r.push_str(&format!(
            " --command-timeout {}",
            humantime::format_duration(args.command_timeout)
        ));
    }
    r
}

/// `s` quoted for a POSIX shell when it needs to be.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// [`backends::connect`] as the chaos lab's connector.
fn connector() -> Connector {
    Arc::new(|url: &str| {
        let url = url.to_string();
        Box::pin(async move { backends::connect(&url).await })
    })
}

/// The target factory: with `--backend`, the URL (and its commands) whatever the scenario's
/// `[target]` says; without, the scenario's target, external brokers through
/// [`backends::connect`].
fn factory(args: &RunArgs) -> anyhow::Result<TargetFactory> {
    let Some(url) = args.backend.clone() else {
        return Ok(with_connector(connector()));
    };
    let mut target = ExternalTarget::new(url.clone(), connector()).names(CommandNames {
        start: "--start",
        stop: "--stop",
        pause: "--pause",
        resume: "--resume",
    });
    if let (Some(start), Some(stop)) = (&args.start, &args.stop) {
        let ready = match &args.ready {
            Some(r) => parse_ready(r).map_err(|e| anyhow::anyhow!("--ready: {e}"))?,
            None => ExternalTarget::default_ready(&url),
        };
        let mut b = ExternalBroker::new(start, stop)
            .ready(ready)
            .timeout(args.command_timeout);
        if let (Some(p), Some(r)) = (&args.pause, &args.resume) {
            b = b.pause_resume(p, r);
        }
        target = target.commands(b);
    }
    // The factory is called once per run; the target moves out on that call.
    let slot = Arc::new(std::sync::Mutex::new(Some(target)));
    Ok(Arc::new(move |_s, _opts| {
        let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        Box::pin(async move {
            taken
                .map(|t| Box::new(t) as Box<dyn Target>)
                .ok_or_else(|| {
                    squall_chaos::runner::RunError::Target("the --backend target was used".into())
                })
        })
    }))
}
