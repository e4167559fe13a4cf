//! Runs a [`Scenario`]: starts the target, drives the workload through the timeline, applies the
//! faults of each phase, drains, then checks and reports.
//!
//! A `server` target is a `squall serve` child process on a fresh data directory, on a free
//! loopback port; process faults act on it by PID (SIGKILL, SIGSTOP/SIGCONT via `kill(1)`) and
//! never on anything else. Producers and consumers use separate clients that reconnect by
//! themselves, exactly as applications would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use squall_client::{Client, ClientConfig, WhenDisconnected};
use squall_core::{Backend, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::checker::{Event, check};
use crate::report::{Report, Window};
use crate::scenario::{Action, Scenario, TargetKind};
use crate::workload::{Progress, Workload, consume, merge, produce};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The seed (printed first; random if unset).
    pub seed: Option<u64>,
    /// The `squall` binary that runs `squall serve` for `server` targets.
    pub squall_bin: PathBuf,
    /// Print a progress line every second to stderr.
    pub progress: bool,
    /// The command that replays this run, for the report (`{seed}` is replaced).
    pub replay: String,
}

/// Why a run could not be carried out (as opposed to a run that failed its criteria).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The target could not be started or reached.
    #[error("target: {0}")]
    Target(String),
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

/// A `squall serve` child the lab owns.
struct ServerProcess {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    sync: String,
    child: Option<Child>,
}

impl ServerProcess {
    fn new(bin: PathBuf, sync: &str) -> Result<Self, RunError> {
        let dir = tempfile::Builder::new()
            .prefix("squall-chaos-")
            .tempdir()
            .map_err(io("creating the data directory"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        Ok(ServerProcess {
            bin,
            dir,
            port,
            sync: sync.to_string(),
            child: None,
        })
    }

    fn url(&self) -> String {
        format!("squall://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) -> Result<(), RunError> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", "--admin", "off", "--sync", &self.sync, "--listen"])
            .arg(format!("127.0.0.1:{}", self.port));
        if self.sync != "memory" {
            cmd.arg("--data").arg(self.dir.path());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io(format!("starting {} serve", self.bin.display())))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(RunError::Target(format!(
                    "squall serve exited at start: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(RunError::Target(
                    "squall serve did not listen within 20 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn kill9(&mut self) -> Result<(), RunError> {
        if let Some(mut c) = self.child.take() {
            c.kill().map_err(io("SIGKILL"))?; // std's kill is SIGKILL on Unix
            c.wait().map_err(io("reaping the killed server"))?;
        }
        Ok(())
    }

    fn signal(&self, sig: &str) -> Result<(), RunError> {
        let Some(c) = &self.child else {
            return Err(RunError::Target(format!(
                "cannot send {sig}: the server is not running"
            )));
        };
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(c.id().to_string())
            .status()
            .map_err(io(format!("kill -{sig}")))?;
        if !status.success() {
            return Err(RunError::Target(format!(
                "kill -{sig} {} failed: {status}",
                c.id()
            )));
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(c) = &self.child {
            // Resume first in case it is paused, then ask it to stop; kill if it does not.
            let _ = self.signal("CONT");
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn client(url: &str) -> Result<Arc<dyn Backend>, RunError> {
    let mut config = ClientConfig::from_url(url).map_err(|e| RunError::Target(e.to_string()))?;
    config.name = "squall-chaos".into();
    config.when_disconnected = WhenDisconnected::Wait;
    // Come back quickly once the target is back: recovery time is what the lab measures.
    config.reconnect.max = Duration::from_millis(500);
    let c = Client::connect(config)
        .await
        .map_err(|e| RunError::Target(format!("connecting to {url}: {e}")))?;
    Ok(Arc::new(c))
}

/// Runs `s` and returns its report (a run that misses its criteria is still `Ok`: see
/// [`Report::pass`]).
pub async fn run(s: &Scenario, opts: &RunOptions) -> Result<Report, RunError> {
    let seed = opts.seed.unwrap_or_else(rand::random);
    let replay = opts.replay.replace("{seed}", &seed.to_string());
    eprintln!(
        "squall chaos: scenario {} seed {seed}\n  replay: {replay}",
        s.name
    );
    let mut server = None;
    let (url, target) = match s.target.kind {
        TargetKind::Server => {
            let mut p = ServerProcess::new(opts.squall_bin.clone(), &s.target.sync)?;
            p.start().await?;
            let url = p.url();
            server = Some(p);
            (
                url.clone(),
                format!("squall serve ({}, {url})", s.target.sync),
            )
        }
        TargetKind::Url => {
            let url = s.target.url.clone().unwrap_or_default();
            (url.clone(), url)
        }
    };
    let producers_backend = client(&url).await?;
    let consumers_backend = client(&url).await?;
    let w: Arc<Workload> = Arc::new(s.workload.clone());
    let progress = Arc::new(Progress::default());
    let stop_producing = CancellationToken::new();
    let stop_consuming = CancellationToken::new();
    let start = Timestamp::now();
    let started = Instant::now();
    let mut timeline: Vec<Event> = Vec::new();

    let mut consumers = Vec::new();
    let mut id = 0;
    for g in &w.groups {
        for _ in 0..w.consumers {
            id += 1;
            consumers.push(tokio::spawn(consume(
                w.clone(),
                consumers_backend.clone(),
                g.clone(),
                id,
                Timestamp::now,
                progress.clone(),
                stop_consuming.clone(),
            )));
        }
    }
    let producers: Vec<_> = (0..w.producers)
        .map(|p| {
            tokio::spawn(produce(
                w.clone(),
                producers_backend.clone(),
                p,
                Timestamp::now,
                progress.clone(),
                stop_producing.clone(),
            ))
        })
        .collect();
    let printer = opts.progress.then(|| {
        let progress = progress.clone();
        let stop = stop_consuming.clone();
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
    });

    let mut open_faults: Vec<(String, Timestamp)> = Vec::new();
    let mut phases = Vec::new();
    for phase in &s.phases {
        let at = Timestamp::now();
        timeline.push(Event::Phase {
            name: phase.name.clone(),
            at,
        });
        for action in &phase.actions {
            let Some(p) = server.as_mut() else { break };
            match action {
                Action::Kill9 => {
                    p.kill9()?;
                    open_faults.push(("kill -9".into(), Timestamp::now()));
                }
                Action::Pause => {
                    p.signal("STOP")?;
                    open_faults.push(("pause".into(), Timestamp::now()));
                }
                Action::Resume => {
                    p.signal("CONT")?;
                    close_fault(&mut open_faults, "pause", &mut timeline);
                }
                Action::Start => {
                    p.start().await?;
                    close_fault(&mut open_faults, "kill -9", &mut timeline);
                }
                Action::Restart => {
                    let from = Timestamp::now();
                    p.kill9()?;
                    p.start().await?;
                    timeline.push(Event::Fault {
                        name: "restart".into(),
                        start: from,
                        end: Some(Timestamp::now()),
                    });
                }
            }
        }
        tokio::time::sleep(phase.duration).await;
        phases.push(Window {
            name: phase.name.clone(),
            from_s: at.saturating_since(start).as_secs_f64(),
            to_s: Timestamp::now().saturating_since(start).as_secs_f64(),
        });
    }
    for (name, from) in open_faults.drain(..) {
        timeline.push(Event::Fault {
            name,
            start: from,
            end: None,
        });
    }

    // Drain: stop offering load, wait for confirms, then for every confirmed message to arrive.
    stop_producing.cancel();
    let drain_deadline = Instant::now() + s.drain;
    let mut buffers = Vec::new();
    for p in producers {
        match tokio::time::timeout_at(drain_deadline.into(), p).await {
            Ok(Ok(events)) => buffers.push(events),
            Ok(Err(e)) => tracing::error!("producer task failed: {e}"),
            Err(_) => tracing::warn!("a producer did not finish within the drain time"),
        }
    }
    let groups = w.groups.len() as u64;
    while Instant::now() < drain_deadline {
        let confirmed = progress.confirmed.load(Ordering::Relaxed);
        if progress.distinct.load(Ordering::Relaxed) >= confirmed * groups {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_consuming.cancel();
    for c in consumers {
        if let Ok(events) = c.await {
            buffers.push(events);
        }
    }
    if let Some(p) = printer {
        let _ = p.await;
    }
    let _ = producers_backend.close().await;
    let _ = consumers_backend.close().await;
    if let Some(mut p) = server.take() {
        p.stop();
    }

    buffers.push(timeline);
    let events = merge(buffers);
    let findings = check(&events, &w.groups, start);
    let duration_s = started.elapsed().as_secs_f64();
    let faults = events
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
    let verdicts = s.criteria.judge(&findings);
    Ok(Report {
        scenario: s.name.clone(),
        description: s.description.clone(),
        seed,
        replay,
        target,
        duration_s,
        pass: verdicts.iter().all(|v| v.pass),
        verdicts,
        faults,
        phases,
        findings,
    })
}

fn close_fault(open: &mut Vec<(String, Timestamp)>, name: &str, timeline: &mut Vec<Event>) {
    if let Some(i) = open.iter().position(|(n, _)| n == name) {
        let (name, from) = open.remove(i);
        timeline.push(Event::Fault {
            name,
            start: from,
            end: Some(Timestamp::now()),
        });
    }
}
