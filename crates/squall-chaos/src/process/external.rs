//! Brokers the lab does not own: start and stop (and optionally pause and resume) shell
//! commands.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{ProcessError, Ready};

/// A broker the lab does not own, driven by shell commands (`sh -c`), e.g.
/// `systemctl stop rabbitmq-server` / `docker start nats`.
///
/// Each command must finish (within `timeout`): one that leaves a process running in the
/// background must also redirect that process's output (`nats-server ... >log 2>&1 &`), since the
/// lab reads the command's standard error until it closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalBroker {
    /// Starts it.
    pub start: String,
    /// Stops it.
    pub stop: String,
    /// Freezes it (e.g. `docker pause nats`); `None`: pausing is unsupported.
    pub pause: Option<String>,
    /// Thaws it after `pause`.
    pub resume: Option<String>,
    /// Readiness check after `start`.
    pub ready: Ready,
    /// Bounds each command and the ready check.
    pub timeout: Duration,
}

impl ExternalBroker {
    /// Start and stop commands, no ready check, 60 s timeout.
    pub fn new(start: impl Into<String>, stop: impl Into<String>) -> Self {
        ExternalBroker {
            start: start.into(),
            stop: stop.into(),
            pause: None,
            resume: None,
            ready: Ready::Immediately,
            timeout: Duration::from_secs(60),
        }
    }
    /// Sets the readiness check.
    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }
    /// Sets the timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Sets the pause and resume commands.
    pub fn pause_resume(mut self, pause: impl Into<String>, resume: impl Into<String>) -> Self {
        self.pause = Some(pause.into());
        self.resume = Some(resume.into());
        self
    }

    /// Runs the start command, then waits until ready.
    pub async fn start(&self) -> Result<(), ProcessError> {
        run_shell(&self.start, self.timeout).await?;
        self.wait_ready(&self.start).await
    }

    /// Runs the stop command.
    pub async fn stop(&self) -> Result<(), ProcessError> {
        run_shell(&self.stop, self.timeout).await
    }

    /// Stops, then starts.
    pub async fn restart(&self) -> Result<(), ProcessError> {
        self.stop().await?;
        self.start().await
    }

    /// Runs the pause command; `Ok(false)` when there is none.
    pub async fn pause(&self) -> Result<bool, ProcessError> {
        match &self.pause {
            Some(c) => run_shell(c, self.timeout).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Runs the resume command, then waits until ready; `Ok(false)` when there is none.
    pub async fn resume(&self) -> Result<bool, ProcessError> {
        let Some(c) = &self.resume else {
            return Ok(false);
        };
        run_shell(c, self.timeout).await?;
        self.wait_ready(c).await?;
        Ok(true)
    }

    async fn wait_ready(&self, command: &str) -> Result<(), ProcessError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        while !self.ready.check().await {
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcessError::NotReady {
                    program: command.to_string(),
                    check: self.ready.describe(),
                    after: self.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// Runs `command` with `sh -c`, failing on a non-zero exit or after `timeout` (then killed).
pub async fn run_shell(command: &str, timeout: Duration) -> Result<(), ProcessError> {
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: command.into(),
            source,
        })?;
    let failed = |status: String, stderr: &[u8]| {
        let text = String::from_utf8_lossy(stderr);
        let tail: String = text
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        ProcessError::Command {
            command: command.into(),
            status,
            stderr: tail.trim().to_string(),
        }
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(failed(format!("timed out after {timeout:?}"), b"")),
        Ok(Err(source)) => Err(ProcessError::Wait {
            program: command.into(),
            source,
        }),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(failed(out.status.to_string(), &out.stderr)),
    }
}
