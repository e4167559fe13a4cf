//! Shared by the command-line tests: a `squall serve` child process, a free port.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `squall serve` child process (fsync log storage in a temporary directory) on a free port,
/// killed on drop.
pub struct Server {
    child: Child,
    /// `squall://127.0.0.1:<port>`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server and waits (at most 20 s) until it listens.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = spawn_serve(dir.path(), port);
        Server {
            child,
            url: format!("squall://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `squall serve` (fsync storage in `dir`, no admin API) on `port` and waits (at most
/// 20 s) until it listens; the caller stops the child.
pub fn spawn_serve(dir: &std::path::Path, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["serve", "--sync", "fsync", "--admin", "off", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir)
        .env_remove("SQUALL_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting squall serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "squall serve did not listen within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that only shell commands start and stop, as the `--start` and `--stop` commands of
/// `squall chaos run` and `squall certify` do: `start.sh` runs it in the background (its
/// output to `daemon.log`, its PID to `daemon.pid`) and returns; `stop.sh` kills that PID with
/// SIGKILL and returns once the process is gone. Killed on drop.
pub struct ShellDaemon {
    dir: tempfile::TempDir,
    /// The free port the server was given.
    pub port: u16,
}

impl ShellDaemon {
    /// Writes the two scripts for the server `command(dir, port)` starts (`dir` its own
    /// temporary directory, `port` a free port); nothing runs yet.
    pub fn new(command: impl FnOnce(&std::path::Path, u16) -> String) -> ShellDaemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let start = format!(
            "{} >>{d}/daemon.log 2>&1 &\necho $! > {d}/daemon.pid\n",
            command(dir.path(), port)
        );
        // A killed child of a shell that has exited may stay a zombie (nobody reaps it here):
        // gone means no process or a zombie, whose sockets and files are already released.
        let stop = format!(
            "pid=$(cat {d}/daemon.pid)\nkill -9 $pid\n\
             while [ -e /proc/$pid ] && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null; \
             do sleep 0.05; done\n"
        );
        std::fs::write(dir.path().join("start.sh"), start).unwrap();
        std::fs::write(dir.path().join("stop.sh"), stop).unwrap();
        ShellDaemon { dir, port }
    }

    /// Runs the start command and waits (at most 20 s) until the server listens.
    pub fn start(&self) {
        let ok = Command::new("sh")
            .arg(self.dir.path().join("start.sh"))
            .status()
            .unwrap();
        assert!(ok.success(), "the start command failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the server did not listen on {} within 20 s: {}",
                self.addr(),
                std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The command that starts the server.
    pub fn start_command(&self) -> String {
        format!("sh {}/start.sh", self.dir.path().display())
    }

    /// The command that kills it.
    pub fn stop_command(&self) -> String {
        format!("sh {}/stop.sh", self.dir.path().display())
    }

    /// The PID the last start wrote.
    pub fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("daemon.pid"))
            .ok()
            .map(|p| p.trim().to_string())
    }
}

impl Drop for ShellDaemon {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    }
}
