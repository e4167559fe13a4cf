//! `squall`: the command-line front of the squall messaging toolkit.
//!
//! Each subcommand lives in its own module and exposes `Args` (its clap arguments) and
//! `run(args, out)`. `main` only parses, sets up logging and turns the outcome into an exit code:
//! 0 ok, 1 failure (the error chain is printed to stderr), 2 usage error (clap's default); `dlq`
//! adds 3 and 4 (see [`dlq`]).
//!
//! | module | subcommand |
//! |---|---|
//! | [`info`] | `squall info`: version and backend capabilities |
//! | [`serve`] | `squall serve`: the broker over TCP, with the admin HTTP API |
//! | [`chaos`] | `squall chaos run`: a game day with a verdict (exit 1 when a criterion fails); `squall chaos proxy`: the fault proxy |
//! | [`client_cmds`] | `squall pub`, `sub`, `req`, `stats`: a client of `squall serve` |
//! | [`dlq`] | `squall dlq ls`, `show`, `redrive`: dead letters of `squall serve` |
//! | [`bench`] | `squall bench`: squall side by side with NATS and RabbitMQ; exit 3 busy machine, 4 a row failed |
//! | [`certify`] | `squall certify --backend URL`: conformance, redelivery and a link cut, as one table ([`certify_faults`]: the link cut, `--front` for brokers that advertise their address; [`certify_restart`]: `--stop`/`--start`, the broker restart) |
//! | [`backends`] | `--backend URL` → a connected backend, by scheme |

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backends;
mod bench;
mod certify;
mod certify_faults;
mod certify_restart;
mod chaos;
mod client_cmds;
mod dlq;
mod info;
mod serve;

/// Resilient messaging for Rust services: queues, pub/sub, streams and request-reply over one API.
#[derive(Debug, Parser)]
#[command(name = "squall", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `squall_broker=debug`). Logs go to
    /// stderr.
    #[arg(long, global = true, env = "SQUALL_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the squall version and what the embedded broker can do.
    Info(info::Args),
    /// Run the broker as a server that several processes share.
    Serve(serve::Args),
    /// Publish messages.
    Pub(client_cmds::PubArgs),
    /// Receive (and ack) messages.
    Sub(client_cmds::SubArgs),
    /// Send a request and print the reply.
    Req(client_cmds::ReqArgs),
    /// Print stream and group statistics of a server.
    Stats(client_cmds::StatsArgs),
    /// The chaos lab: run game days and report what survived.
    #[command(subcommand)]
    Chaos(chaos::Chaos),
    /// Dead letters: list, show, redrive.
    #[command(subcommand)]
    Dlq(dlq::Dlq),
    /// The guarantee certificate of a backend: conformance suite, redelivery and a link cut.
    Certify(certify::Args),
    /// Benchmarks side by side with NATS JetStream and RabbitMQ (JSON, Markdown, HTML).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    // Not locked for the whole run: `certify` runs conformance cases on other threads, and
    // they print their progress to stdout.
    let mut out = io::stdout();
    let result = match cli.command {
        Command::Info(args) => info::run(&args, &mut out),
        Command::Serve(args) => serve::run(args),
        Command::Pub(args) => client_cmds::publish(args, &mut out),
        Command::Sub(args) => client_cmds::subscribe(args, &mut out),
        Command::Req(args) => client_cmds::request(args, &mut out),
        Command::Stats(args) => client_cmds::stats(args, &mut out),
        Command::Chaos(cmd) => match chaos::run_cmd(cmd, &mut out) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let _ = out.flush();
                return ExitCode::FAILURE;
            }
            Err(e) => Err(e),
        },
        Command::Certify(args) => match certify::run(args, &mut out) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let _ = out.flush();
                return ExitCode::from(1);
            }
            Err(e) => Err(e),
        },
        Command::Bench(args) => match bench::run(args, &mut out) {
            Ok(0) => Ok(()),
            Ok(code) => {
                let _ = out.flush();
                return ExitCode::from(code);
            }
            Err(e) => Err(e),
        },
        Command::Dlq(cmd) => match dlq::run_cmd(cmd, &mut out) {
            Ok(0) => Ok(()),
            Ok(code) => {
                let _ = out.flush();
                return ExitCode::from(code);
            }
            Err(e) => Err(e),
        },
    }
    .and_then(|()| out.flush().map_err(anyhow::Error::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `squall info | head -1`: the reader left; that is not a failure of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: ignoring --log {filter:?}: {e}");
        tracing_subscriber::EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
