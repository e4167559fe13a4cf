//! Process faults: kill -9, pause (SIGSTOP), resume (SIGCONT), restart and graceful stop for
//! processes the lab starts ([`ManagedProcess`]), and start/stop shell commands for brokers it does
//! not own ([`ExternalBroker`]).
//!
//! A [`ManagedProcess`] signals only the one process it spawned, by PID, and only while that
//! process has not been reaped (so a recycled PID is never signalled). Dropping it kills the
//! child (SIGKILL, also when paused).
//!
//! ```no_run
//! use std::time::Duration;
//! use squall_chaos::process::{ManagedProcess, ProcessSpec};
//!
//! # async fn f() -> Result<(), squall_chaos::process::ProcessError> {
//! let spec = ProcessSpec::parse("squall serve --listen 127.0.0.1:4500 --data /tmp/sq")?
//!     .ready_tcp("127.0.0.1:4500")
//!     .ready_timeout(Duration::from_secs(10));
//! let mut broker = ManagedProcess::start(spec).await?;
//! broker.pause().await?; // clients time out
//! broker.resume()?;
//! broker.kill9().await?; // crash
//! broker.restart().await?; // recovery, waits until ready
//! broker.stop().await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::probe;

mod external;

pub use external::{ExternalBroker, run_shell};

/// Why a process operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The command line could not be parsed.
    #[error("bad command line `{0}`: {1}")]
    CommandLine(String, &'static str),
    /// Spawning failed.
    #[error("starting `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The ready check did not pass in time.
    #[error("`{program}` was not ready within {after:?} ({check})")]
    NotReady {
        /// The program.
        program: String,
        /// The check.
        check: String,
        /// The timeout.
        after: Duration,
    },
    /// The process exited while it should be running.
    #[error("`{program}` exited: {status}")]
    Exited {
        /// The program.
        program: String,
        /// How.
        status: ExitStatus,
    },
    /// There is no running process to signal.
    #[error("`{0}` is not running")]
    NotRunning(String),
    /// Sending a signal failed.
    #[error("signalling `{program}`: {source}")]
    Signal {
        /// The program.
        program: String,
        /// The cause.
        source: nix::Error,
    },
    /// A shell command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command.
        command: String,
        /// Its exit status, or `timed out`.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// Waiting for the process failed.
    #[error("waiting for `{program}`: {source}")]
    Wait {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How to tell that a started process is ready.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ready {
    /// At once.
    #[default]
    Immediately,
    /// When a TCP connect to `host:port` succeeds.
    Tcp(String),
    /// When a GET of this `http://` URL answers 200.
    Http(String),
}

impl Ready {
    pub(crate) async fn check(&self) -> bool {
        let t = Duration::from_millis(500);
        match self {
            Ready::Immediately => true,
            Ready::Tcp(addr) => probe::tcp(addr, t).await,
            Ready::Http(url) => {
                matches!(probe::http("GET", url, None, t).await, Ok(r) if r.status == 200)
            }
        }
    }
    pub(crate) fn describe(&self) -> String {
        match self {
            Ready::Immediately => "no check".into(),
            Ready::Tcp(a) => format!("TCP connect to {a}"),
            Ready::Http(u) => format!("GET {u} answering 200"),
        }
    }
}

/// Waits until every thread of `pid` is in the stopped state (`T` in `/proc/<pid>/task/*/stat`),
/// at most 1 s. Returns at once where there is no `/proc` or the process is gone.
async fn wait_stopped(pid: u32) {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let Ok(tasks) = std::fs::read_dir(&dir) else {
            return;
        };
        let stopped = tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) S ...`: the state follows the last `)` (comm may hold one).
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.trim_start().chars().next()
                })
                .is_none_or(|state| matches!(state, 'T' | 't'))
        });
        if stopped || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What to start and how to tell it is ready.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The program (a path, or a name looked up in `PATH`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Readiness check.
    pub ready: Ready,
    /// How long the check may take.
    pub ready_timeout: Duration,
    /// How long [`ManagedProcess::stop`] waits after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// Where stdout and stderr go (appended); `None`: inherited.
    pub log: Option<PathBuf>,
}

impl ProcessSpec {
    /// `program` with no arguments, ready at once, 10 s ready timeout, 5 s stop grace.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        ProcessSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            ready: Ready::Immediately,
            ready_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(5),
            log: None,
        }
    }

    /// Splits a command line into program and arguments (whitespace-separated; single and double
    /// quotes group, backslash escapes in double quotes and bare words). No shell: the process
    /// started is the program itself, so signals reach it.
    pub fn parse(line: &str) -> Result<Self, ProcessError> {
        let words = split_words(line).map_err(|why| ProcessError::CommandLine(line.into(), why))?;
        let mut it = words.into_iter();
        let program = it
            .next()
            .ok_or(ProcessError::CommandLine(line.into(), "empty"))?;
        Ok(ProcessSpec::new(program).args(it))
    }

    /// Adds an argument.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    /// Sets an environment variable.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    /// Ready when `addr` (`host:port`) accepts TCP connections.
    pub fn ready_tcp(mut self, addr: impl Into<String>) -> Self {
        self.ready = Ready::Tcp(addr.into());
        self
    }
    /// Ready when `url` answers 200.
    pub fn ready_http(mut self, url: impl Into<String>) -> Self {
        self.ready = Ready::Http(url.into());
        self
    }
    /// Bounds the ready check.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }
    /// Grace between SIGTERM and SIGKILL in [`ManagedProcess::stop`].
    pub fn stop_grace(mut self, d: Duration) -> Self {
        self.stop_grace = d;
        self
    }
    /// Appends stdout and stderr to `path`.
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    fn name(&self) -> String {
        self.program.display().to_string()
    }

    fn spawn(&self) -> Result<Child, ProcessError> {
        let err = |source| ProcessError::Spawn {
            program: self.name(),
            source,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        if let Some(path) = &self.log {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(err)?;
            let f2 = f.try_clone().map_err(err)?;
            cmd.stdout(f).stderr(f2);
        }
        cmd.spawn().map_err(err)
    }
}

fn split_words(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(cur.take()),
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unclosed single quote"),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.push(chars.next().ok_or("trailing backslash")?),
                        Some(c) => w.push(c),
                        None => return Err("unclosed double quote"),
                    }
                }
            }
            '\\' => cur
                .get_or_insert_with(String::new)
                .push(chars.next().ok_or("trailing backslash")?),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Ok(words)
}

/// A process the lab started and may crash, freeze and restart.
#[derive(Debug)]
pub struct ManagedProcess {
    spec: ProcessSpec,
    /// The live child; `None` once it was reaped. Killed on drop (`kill_on_drop`).
    child: Option<Child>,
    paused: bool,
    starts: u32,
}

impl ManagedProcess {
    /// Starts the process and waits until it is ready. If it is not ready in time, or exits,
    /// it is killed and the error says why.
    pub async fn start(spec: ProcessSpec) -> Result<Self, ProcessError> {
        let mut p = ManagedProcess {
            child: None,
            spec,
            paused: false,
            starts: 0,
        };
        p.launch().await?;
        Ok(p)
    }

    async fn launch(&mut self) -> Result<(), ProcessError> {
        self.child = Some(self.spec.spawn()?);
        self.paused = false;
        self.starts += 1;
        if let Err(e) = self.wait_ready().await {
            let _ = self.kill9().await;
            return Err(e);
        }
        Ok(())
    }

    /// Polls the ready check until it passes, the process exits, or the timeout.
    pub async fn wait_ready(&mut self) -> Result<(), ProcessError> {
        let deadline = tokio::time::Instant::now() + self.spec.ready_timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Err(ProcessError::Exited {
                    program: self.spec.name(),
                    status,
                });
            }
            if self.spec.ready.check().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcessError::NotReady {
                    program: self.spec.name(),
                    check: self.spec.ready.describe(),
                    after: self.spec.ready_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status if the child exited (reaping it), `None` while it runs.
    fn try_status(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        let Some(c) = self.child.as_mut() else {
            return Err(ProcessError::NotRunning(self.spec.name()));
        };
        match c.try_wait() {
            Ok(Some(s)) => {
                self.child = None;
                Ok(Some(s))
            }
            Ok(None) => Ok(None),
            Err(source) => Err(ProcessError::Wait {
                program: self.spec.name(),
                source,
            }),
        }
    }

    /// The PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process runs (a paused one does).
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Whether it is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Sends `sig` to the child, if it still runs (never to a reaped, possibly recycled, PID).
    fn signal(&mut self, sig: Signal) -> Result<(), ProcessError> {
        if let Some(status) = self.try_status()? {
            return Err(ProcessError::Exited {
                program: self.spec.name(),
                status,
            });
        }
        let pid = self
            .pid()
            .ok_or_else(|| ProcessError::NotRunning(self.spec.name()))?;
        let pid = i32::try_from(pid).map_err(|_| ProcessError::NotRunning(self.spec.name()))?;
        kill(Pid::from_raw(pid), sig).map_err(|source| ProcessError::Signal {
            program: self.spec.name(),
            source,
        })
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers nothing. Returns once
    /// every thread of it is stopped (where `/proc` tells; at most 1 s): the kernel delivers
    /// the signal asynchronously, and a thread running on another CPU could otherwise still
    /// answer right after this returned.
    pub async fn pause(&mut self) -> Result<(), ProcessError> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        if let Some(pid) = self.pid() {
            wait_stopped(pid).await;
        }
        Ok(())
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&mut self) -> Result<(), ProcessError> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// Crashes the process (SIGKILL) and reaps it. A no-op if it is not running.
    pub async fn kill9(&mut self) -> Result<(), ProcessError> {
        if let Some(mut c) = self.child.take() {
            // Child::kill sends SIGKILL (works on a stopped process too) and waits for it.
            c.kill().await.map_err(|source| ProcessError::Wait {
                program: self.spec.name(),
                source,
            })?;
        }
        self.paused = false;
        Ok(())
    }

    /// Crashes the process and starts it again with the same command, waiting until ready.
    pub async fn restart(&mut self) -> Result<(), ProcessError> {
        self.kill9().await?;
        self.launch().await
    }

    /// Stops gracefully: SIGCONT if paused, SIGTERM, then SIGKILL after the stop grace. Returns
    /// the exit status, `None` if it was not running.
    pub async fn stop(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        if self.child.is_none() {
            return Ok(None);
        }
        if let Some(s) = self.try_status()? {
            return Ok(Some(s));
        }
        if self.paused {
            self.resume()?;
        }
        self.signal(Signal::SIGTERM)?;
        let grace = self.spec.stop_grace;
        let program = self.spec.name();
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        let status = match tokio::time::timeout(grace, c.wait()).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(%program, "no exit within {grace:?} of SIGTERM; sending SIGKILL");
                let _ = c.start_kill();
                c.wait().await
            }
        };
        status
            .map(Some)
            .map_err(|source| ProcessError::Wait { program, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell_would() {
        let s =
            ProcessSpec::parse(r#"squall serve --data '/tmp/a b' --name "x \"y\"" plain\ word"#)
                .unwrap();
        assert_eq!(s.program, PathBuf::from("squall"));
        assert_eq!(
            s.args,
            [
                "serve",
                "--data",
                "/tmp/a b",
                "--name",
                "x \"y\"",
                "plain word"
            ]
        );
        assert!(ProcessSpec::parse("  ").is_err());
        assert!(ProcessSpec::parse("a 'open").is_err());
    }
}
