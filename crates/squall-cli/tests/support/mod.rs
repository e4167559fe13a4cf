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
