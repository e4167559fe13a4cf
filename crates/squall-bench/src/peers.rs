//! Broker processes: `squall serve` children, the benchmark's own `nats-server`s (for
//! `sync_interval`, which needs nats-server ≥ 2.10), and finding the pre-started peers'
//! processes and versions.
//!
//! Every process started here is stopped by its own PID (SIGTERM, then SIGKILL after a grace
//! period), also when the owner is dropped on an error path. Nothing else is ever signalled.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};

/// A child process the benchmark owns.
#[derive(Debug)]
pub struct Owned {
    what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Owned {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(what: impl Into<String>, mut cmd: Command, log: &Path) -> Result<Owned> {
        let what = what.into();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| BenchError::io(format!("opening {}", log.display()), e))?;
        let err = file
            .try_clone()
            .map_err(|e| BenchError::io("duplicating a log handle", e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| BenchError::Process {
                what: what.clone(),
                detail: format!("spawning {cmd:?}: {e}"),
            })?;
        Ok(Owned {
            what,
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Its PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails (with the log's tail) if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(self.died("it was stopped"));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.died(&format!("it exited ({status})"))),
            Err(e) => Err(self.died(&e.to_string())),
        }
    }

    fn died(&self, why: &str) -> BenchError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        BenchError::Process {
            what: self.what.clone(),
            detail: format!("{why}; last lines of {}:\n{tail}", self.log.display()),
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(what = %self.what, "did not stop within {grace:?}: killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (the OS picks; released at once, so a rare race is possible).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::io("finding a port", e))?;
    Ok(l.local_addr()
        .map_err(|e| BenchError::io("finding a port", e))?
        .port())
}

/// Waits until `addr` accepts connections, the process is alive, at most `timeout`.
pub async fn wait_port(proc_: &mut Owned, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        proc_.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Process {
                what: proc_.what.clone(),
                detail: format!("{addr} did not accept connections within {timeout:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `squall serve` as a child process.
#[derive(Debug)]
pub struct SquallServe {
    /// The process.
    pub proc_: Owned,
    /// Its client listener.
    pub addr: SocketAddr,
    /// Its admin API (`/metrics`).
    pub admin: SocketAddr,
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl SquallServe {
    /// Starts `exe serve` with `--sync sync` (`fsync`, `buffered` or `memory`), storage in `dir`.
    pub async fn start(exe: &Path, sync: &str, dir: &Path) -> Result<SquallServe> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            addr.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--sync".into(),
            sync.into(),
        ];
        if sync != "memory" {
            args.push("--data".into());
            args.push(dir.join("data").display().to_string());
        }
        let log = dir.join("squall-serve.log");
        let mut s = SquallServe {
            proc_: Owned::spawn("squall serve", Self::command(exe, &args), &log)?,
            addr,
            admin,
            exe: exe.to_path_buf(),
            args,
            log,
        };
        wait_port(&mut s.proc_, addr, Duration::from_secs(20)).await?;
        Ok(s)
    }

    /// fdatasyncs of message data so far (`squall_storage_fsyncs_total` on `/metrics`); `None`
    /// when the admin API does not answer within a second.
    pub fn fsyncs(&self) -> Option<u64> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let total = text
            .lines()
            .filter(|l| l.starts_with("squall_storage_fsyncs_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        Some(total as u64)
    }

    fn command(exe: &Path, args: &[String]) -> Command {
        let mut cmd = Command::new(exe);
        cmd.args(args).env("SQUALL_LOG", "warn");
        cmd
    }

    /// Graceful stop (SIGTERM: the server drains and syncs), then the same command again.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc_.stop(Duration::from_secs(30)).await;
        self.proc_ = Owned::spawn(
            "squall serve",
            Self::command(&self.exe, &self.args),
            &self.log,
        )?;
        wait_port(&mut self.proc_, self.addr, Duration::from_secs(60)).await
    }
}

/// A `nats-server` the benchmark started, with JetStream in its own store directory.
#[derive(Debug)]
pub struct NatsServer {
    /// The process.
    pub proc_: Owned,
    /// `nats://127.0.0.1:port`.
    pub url: String,
    addr: SocketAddr,
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl NatsServer {
    /// Starts `bin` on a free loopback port; `sync_always` sets JetStream's `sync_interval:
    /// always` (an fsync per message), else the server default (fsync every 2 minutes).
    pub async fn start(bin: &Path, sync_always: bool, dir: &Path) -> Result<NatsServer> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let name = if sync_always { "sync" } else { "default" };
        let store = dir.join(format!("nats-{name}"));
        std::fs::create_dir_all(&store)
            .map_err(|e| BenchError::io(format!("creating {}", store.display()), e))?;
        let sync = if sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        let config = dir.join(format!("nats-{name}.conf"));
        let text = format!(
            "listen: \"127.0.0.1:{port}\"\nmax_payload: 1048576\njetstream {{\n  store_dir: \"{}\"\n  \
             max_file_store: 20G{sync}\n}}\n",
            store.display()
        );
        std::fs::write(&config, text)
            .map_err(|e| BenchError::io(format!("writing {}", config.display()), e))?;
        let log = dir.join(format!("nats-{name}.log"));
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&config);
        let mut s = NatsServer {
            proc_: Owned::spawn(format!("nats-server ({name})"), cmd, &log)?,
            url: format!("nats://{addr}"),
            addr,
            bin: bin.to_path_buf(),
            config,
            log,
        };
        wait_port(&mut s.proc_, addr, Duration::from_secs(20)).await?;
        Ok(s)
    }

    /// Graceful stop and start with the same store.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc_.stop(Duration::from_secs(30)).await;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&self.config);
        self.proc_ = Owned::spawn(self.proc_.what.clone(), cmd, &self.log)?;
        wait_port(&mut self.proc_, self.addr, Duration::from_secs(60)).await
    }
}

/// `(major, minor, patch)` of a `nats-server` binary, from `--version`.
pub fn nats_version(bin: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// The first `x.y.z` in `s` (a leading `v` allowed).
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    s.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| {
            let mut it = w.split('.').map(|n| n.parse::<u32>().ok());
            match (it.next(), it.next(), it.next()) {
                (Some(Some(a)), Some(Some(b)), Some(Some(c))) => Some((a, b, c)),
                _ => None,
            }
        })
        .next()
}

/// The newest `nats-server` ≥ 2.10 on `PATH`, if any.
pub fn find_nats_server() -> Option<(PathBuf, (u32, u32, u32))> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .filter(|p| p.is_file())
        .filter_map(|p| nats_version(&p).map(|v| (p, v)))
        .filter(|(_, v)| *v >= (2, 10, 0))
        .max_by_key(|(_, v)| *v)
}

/// The RabbitMQ node processes (`beam.smp` running `rabbit`).
pub fn rabbit_pids() -> Vec<u32> {
    crate::machine::find_processes("beam.smp", &["rabbit"])
}

/// The installed RabbitMQ version, from the server's library directory name.
pub fn rabbit_version() -> Option<String> {
    let dir = std::fs::read_dir("/usr/lib/rabbitmq/lib").ok()?;
    dir.flatten().find_map(|e| {
        e.file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("rabbitmq_server-"))
            .map(str::to_string)
    })
}

/// The `nats-server` process listening on `port`: one whose command line names the port, or
/// the only `nats-server` running.
pub fn nats_pid_for_port(port: u16) -> Option<u32> {
    let p = port.to_string();
    let named = crate::machine::find_processes("nats-server", &[&p]);
    if named.len() == 1 {
        return named.first().copied();
    }
    let all = crate::machine::find_processes("nats-server", &[]);
    (all.len() == 1).then(|| all[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_parsed_from_tool_output() {
        assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("no version"), None);
        assert!(parse_version("v2.15.1").unwrap() >= (2, 10, 0));
    }
}
