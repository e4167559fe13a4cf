//! Resident memory of the embedded broker while a backlog grows with no consumer, as JSON.
//!
//! ```text
//! cargo run --release -p squall-broker --example memory_bench -- [--count 5000000] [--size 1024]
//!     [--sync fsync|buffered] [--window 1024] [--sample 250000] [--dir /path/on/the/disk]
//! ```
//!
//! One stream captures `bench.>`; one task publishes `count` messages of `size` bytes with up to
//! `window` unconfirmed, and nobody consumes, so the whole backlog stays stored. Every `sample`
//! confirmed messages it prints the process's resident set (`VmRSS` of `/proc/self/status`)
//! as one JSON line; at the end a summary with the peak (`VmHWM`), the bytes on disk and the
//! rate. What keeps the resident set bounded: records live in segment files and are read back
//! through a bounded cache (`LogConfig::cache_bytes`), the index is sparse, and the dedup window
//! is bounded by entries (`StreamConfig::dedup_max_entries`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use squall_broker::Broker;
use squall_broker::config::StreamConfig;
use squall_broker::storage::{LogConfig, LogStorage, Storage, SyncMode};
use squall_core::{Message, Pattern, PendingAck, Publisher};

struct Args {
    count: u64,
    size: usize,
    sync: SyncMode,
    window: usize,
    sample: u64,
    dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        count: 5_000_000,
        size: 1024,
        sync: SyncMode::Fsync,
        window: 1024,
        sample: 250_000,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--count" => a.count = value().parse().expect("--count: a number"),
            "--size" => a.size = value().parse().expect("--size: a number of bytes"),
            "--window" => a.window = value().parse().expect("--window: a number"),
            "--sample" => a.sample = value().parse().expect("--sample: a number"),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            "--sync" => {
                a.sync = match value().as_str() {
                    "fsync" => SyncMode::Fsync,
                    "buffered" => SyncMode::Buffered,
                    other => panic!("--sync: fsync or buffered, not {other}"),
                }
            }
            other => panic!("unknown flag {other}; see the file's docs"),
        }
    }
    a.window = a.window.max(1);
    a.sample = a.sample.max(1);
    a
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Bytes of the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args();
    let tmp = match &a.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let config = LogConfig {
        sync: a.sync,
        ..LogConfig::default()
    };
    let cache_mib = config.cache_bytes as f64 / (1024.0 * 1024.0);
    let storage = LogStorage::open(tmp.path(), config)?;
    let broker = Broker::builder()
        .storage(storage.clone() as Arc<dyn Storage>)
        .open()?;
    broker.create_stream(StreamConfig::new("bench", vec![Pattern::new("bench.>")?]))?;
    let rss_start = status_mib("VmRSS:");
    let payload = bytes::Bytes::from(vec![7u8; a.size]);

    let started = Instant::now();
    let mut pending: VecDeque<PendingAck> = VecDeque::with_capacity(a.window);
    let mut confirmed = 0u64;
    let mut max_rss = rss_start;
    for i in 0..a.count {
        if pending.len() == a.window {
            pending.pop_front().expect("a pending ack").await?;
            confirmed += 1;
            if confirmed.is_multiple_of(a.sample) {
                let rss = status_mib("VmRSS:");
                max_rss = max_rss.max(rss);
                println!(
                    "{{\"confirmed\":{confirmed},\"rss_mib\":{rss:.1},\"secs\":{:.2}}}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let msg = Message::builder(format!("bench.k{}", i % 64))?
            .payload(payload.clone())
            .build();
        pending.push_back(broker.send(msg).await?);
    }
    while let Some(ack) = pending.pop_front() {
        ack.await?;
        confirmed += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let rss_end = status_mib("VmRSS:");
    let stats = broker.stream_stats("bench").await?;
    println!(
        "{{\"summary\":true,\"count\":{},\"size\":{},\"sync\":\"{:?}\",\"window\":{},\
         \"confirmed\":{confirmed},\"stored\":{},\"secs\":{secs:.1},\"msgs_per_sec\":{:.0},\
         \"rss_start_mib\":{rss_start:.1},\"rss_max_sampled_mib\":{:.1},\"rss_end_mib\":{rss_end:.1},\
         \"rss_peak_mib\":{:.1},\"cache_bytes_mib\":{cache_mib:.0},\"disk_mib\":{:.0}}}",
        a.count,
        a.size,
        a.sync,
        a.window,
        stats.messages,
        confirmed as f64 / secs,
        max_rss.max(rss_end),
        status_mib("VmHWM:"),
        disk_bytes(tmp.path()) as f64 / (1024.0 * 1024.0),
    );
    broker.close().await?;
    Ok(())
}
