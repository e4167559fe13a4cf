//! `squall serve`: the embedded broker shared over TCP, with the admin HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::ValueEnum;
use squall_broker::Broker;
use squall_broker::storage::{LogConfig, LogStorage, MemoryStorage, Storage, SyncMode};
use squall_server::{Server, ServerConfig};
use tokio_util::sync::CancellationToken;

/// Durability of publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sync {
    /// Ack after fdatasync (group commit): survives power loss.
    Fsync,
    /// Ack after write(2), fdatasync within 100 ms: survives a process crash.
    Buffered,
    /// Memory only: nothing survives a restart.
    Memory,
}

/// Arguments of `squall serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data directory (log storage). Without it the broker keeps everything in memory.
    #[arg(long, env = "SQUALL_DATA")]
    data: Option<PathBuf>,
    /// Client listener.
    #[arg(long, default_value = "127.0.0.1:4470", env = "SQUALL_LISTEN")]
    listen: SocketAddr,
    /// Admin HTTP API (health, stats, Prometheus metrics); `off` to disable.
    #[arg(long, default_value = "127.0.0.1:4471", env = "SQUALL_ADMIN")]
    admin: String,
    /// Durability (default: fsync with --data, memory without).
    #[arg(long, value_enum)]
    sync: Option<Sync>,
    /// Token clients (and the admin API) must present; required beyond loopback.
    #[arg(long, env = "SQUALL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Most client connections.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let sync = args.sync.unwrap_or(if args.data.is_some() {
        Sync::Fsync
    } else {
        Sync::Memory
    });
    let storage: Arc<dyn Storage> = match (&args.data, sync) {
        (None, Sync::Memory) => MemoryStorage::new(),
        (None, _) => {
            bail!("--sync {sync:?} needs a data directory: pass --data DIR (or --sync memory)")
        }
        (Some(_), Sync::Memory) => {
            bail!("--sync memory keeps nothing on disk: drop --data, or use --sync fsync|buffered")
        }
        (Some(dir), mode) => {
            let config = LogConfig {
                sync: if mode == Sync::Fsync {
                    SyncMode::Fsync
                } else {
                    SyncMode::Buffered
                },
                ..LogConfig::default()
            };
            LogStorage::open(dir, config)
                .with_context(|| format!("opening data directory {}", dir.display()))?
        }
    };
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let broker = Broker::builder()
        .storage(storage)
        .open()
        .context("opening the broker")?;
    let config = ServerConfig {
        listen: args.listen,
        max_connections: args.max_connections,
        token: args.token.clone(),
        ..ServerConfig::default()
    };
    let server = Server::bind(config, broker.clone())
        .await
        .context("starting the server")?;
    let shutdown = CancellationToken::new();
    let admin = if args.admin == "off" {
        None
    } else {
        let addr: SocketAddr = args
            .admin
            .parse()
            .with_context(|| format!("--admin {:?} is not an address (or `off`)", args.admin))?;
        let router =
            squall_server::admin::router(broker.clone(), Some(prometheus), args.token.clone());
        let token = args.token.is_some();
        let stop = shutdown.clone();
        Some((
            addr,
            tokio::spawn(
                async move { squall_server::admin::serve(addr, router, token, stop).await },
            ),
        ))
    };
    eprintln!(
        "squall serve: clients on {}, admin {}, storage {} ({sync:?})",
        server.local_addr(),
        admin
            .as_ref()
            .map_or("off".to_string(), |(a, _)| format!("http://{a}")),
        args.data
            .as_ref()
            .map_or("memory".to_string(), |d| d.display().to_string()),
    );
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("squall serve: shutting down");
        stop.cancel();
    });
    let served = server.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Some((_, task)) = admin {
        task.await.context("admin task")?.context("admin API")?;
    }
    broker
        .close()
        .await
        .context("closing the broker (syncing storage)")?;
    served.context("serving")?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => {
            tokio::select! {
                _ = i.recv() => {}
                _ = t.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
