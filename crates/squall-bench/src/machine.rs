//! The machine: its description, CPU time of processes (from `/proc`), finding the peers'
//! processes, and the busy-machine guard.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, Result};

/// What the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// Logical CPUs available.
    pub cores: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// `debug` or `release`: the build of the load generator (and of `squall serve`, the same
    /// executable). Figures from a debug build say little about squall.
    pub build: &'static str,
}

impl MachineInfo {
    /// Reads `/proc`.
    pub fn read() -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        MachineInfo {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            memory_mib,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }
}

/// Clock ticks per second of `/proc` CPU times.
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// CPU seconds (user + system) of process `pid` so far, `None` if it is gone.
pub fn process_cpu(pid: u32) -> Option<f64> {
    cpu_from_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds of this process so far.
pub fn self_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_from_stat(&s))
        .unwrap_or(0.0)
}

/// utime + stime from a `/proc/<pid>/stat` line (fields 14 and 15; the command name in
/// parentheses may contain spaces, so fields are counted after its closing parenthesis).
fn cpu_from_stat(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Busy CPU time of the whole machine so far (all CPUs, seconds): every `/proc/stat` column but
/// idle and iowait.
pub fn machine_busy() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")
        .map_err(|e| BenchError::io("reading /proc/stat", e))?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| {
            BenchError::io(
                "reading /proc/stat",
                std::io::Error::other("no aggregate cpu line"),
            )
        })?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| *x)
        .sum();
    Ok(busy as f64 / clock_ticks())
}

/// CPU accounting over an interval: the whole machine, this process, the broker process.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    machine: f64,
    client: f64,
    broker: Option<f64>,
}

/// CPU used between two [`CpuMark`]s.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    /// Wall seconds.
    pub wall_secs: f64,
    /// CPU seconds of the load generator's process (the clients; for the embedded target, the
    /// broker too).
    pub client_secs: f64,
    /// CPU seconds of the broker process, when it is a separate process.
    pub broker_secs: Option<f64>,
    /// Cores used by everything else on the machine (other processes and kernel threads, e.g.
    /// the writeback the brokers cause) on average.
    pub other_cores: f64,
}

impl CpuMark {
    /// Marks now; `broker` is the broker's PID when it runs in its own process.
    pub fn now(broker: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            machine: machine_busy().unwrap_or(0.0),
            client: self_cpu(),
            broker: broker.and_then(process_cpu),
        }
    }

    /// CPU used since `self`, with the same broker PID.
    pub fn since(&self, broker: Option<u32>) -> CpuUse {
        let end = CpuMark::now(broker);
        let wall = end.at.duration_since(self.at).as_secs_f64();
        let client = (end.client - self.client).max(0.0);
        let broker = match (self.broker, end.broker) {
            (Some(a), Some(b)) => Some((b - a).max(0.0)),
            _ => None,
        };
        let other = (end.machine - self.machine - client - broker.unwrap_or(0.0)).max(0.0);
        CpuUse {
            wall_secs: wall,
            client_secs: client,
            broker_secs: broker,
            other_cores: if wall > 0.0 { other / wall } else { 0.0 },
        }
    }
}

/// Samples the machine for `sample` while this process idles: cores used by others (idle
/// brokers included: a run that starts with a busy broker is not a clean run either).
pub async fn other_load(sample: Duration) -> f64 {
    let mark = CpuMark::now(None);
    tokio::time::sleep(sample).await;
    mark.since(None).other_cores
}

/// PIDs of processes whose `comm` is `name` and whose command line contains every one of
/// `needles`.
pub fn find_processes(name: &str, needles: &[&str]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let base = Path::new("/proc").join(pid.to_string());
        let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if needles.iter().all(|n| cmdline.contains(n)) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_counts_fields_after_the_command_name() {
        // comm with spaces and parentheses; utime 250, stime 50 ticks.
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 10";
        let secs = cpu_from_stat(line).unwrap();
        assert!((secs - 300.0 / clock_ticks()).abs() < 1e-9, "{secs}");
    }

    #[test]
    fn this_process_is_found_and_uses_cpu() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(self_cpu() > 0.0);
        assert!(process_cpu(std::process::id()).is_some());
        assert!(machine_busy().unwrap() > 0.0);
    }
}
