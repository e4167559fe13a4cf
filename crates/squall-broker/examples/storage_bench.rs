//! Log storage throughput and commit latency, as JSON.
//!
//! ```text
//! cargo run --release -p squall-broker --example storage_bench -- [--secs 3] [--appenders 32]
//!     [--window 32] [--dir /path/on/the/disk/to/measure]
//! ```
//!
//! For 128 B and 1 KiB payloads, in `fsync` and `buffered` modes: `appenders` tokio tasks (on a
//! 2-worker runtime) each keep up to `window` appends in flight on one stream, awaiting commits in
//! order. Latency is append call → commit resolved, in an HdrHistogram; fsyncs are counted with an
//! I/O hook. One JSON object per line, then a summary array.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use squall_broker::storage::{
    IoHook, IoOp, IoVerdict, LogConfig, LogStorage, Storage, StreamStore, SyncMode,
};
use squall_core::{Message, Timestamp};

/// Counts fdatasyncs of segment files.
#[derive(Default)]
struct SyncCounter(AtomicU64);

impl IoHook for SyncCounter {
    fn check(&self, op: IoOp, path: &Path, _len: usize) -> IoVerdict {
        if op == IoOp::Sync && path.extension().is_some_and(|e| e == "seg") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        IoVerdict::Pass
    }
}

struct Args {
    secs: f64,
    appenders: usize,
    window: usize,
    dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        secs: 3.0,
        appenders: 32,
        window: 32,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--secs" => a.secs = value().parse().expect("--secs: a number"),
            "--appenders" => a.appenders = value().parse().expect("--appenders: a number"),
            "--window" => a.window = value().parse().expect("--window: a number"),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            other => panic!("unknown flag {other}; see the file's docs"),
        }
    }
    a
}

async fn appender(
    stream: Arc<dyn StreamStore>,
    msg: Message,
    window: usize,
    deadline: Instant,
) -> (u64, Histogram<u64>) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut inflight = VecDeque::with_capacity(window);
    let mut n = 0;
    loop {
        let done = Instant::now() >= deadline;
        if inflight.len() >= window || (done && !inflight.is_empty()) {
            let (start, commit): (Instant, squall_broker::storage::Commit) =
                inflight.pop_front().expect("non-empty");
            commit.wait().await.expect("commit");
            hist.saturating_record(start.elapsed().as_micros() as u64);
            n += 1;
            continue;
        }
        if done {
            return (n, hist);
        }
        let start = Instant::now();
        let (_, commit) = stream.append(Timestamp(1), &msg).expect("append");
        inflight.push_back((start, commit));
        if inflight.len() % 8 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

fn run(args: &Args, size: usize, mode: SyncMode) -> serde_json::Value {
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory");
    let counter = Arc::new(SyncCounter::default());
    let config = LogConfig {
        sync: mode,
        io_hook: Some(counter.clone()),
        ..LogConfig::default()
    };
    let storage = LogStorage::open(tmp.path(), config).expect("open");
    let stream = storage.open_stream("bench", b"").expect("stream");
    let msg = Message::builder("bench.subject")
        .expect("subject")
        .payload(vec![7u8; size])
        .build();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let syncs_before = counter.0.load(Ordering::Relaxed);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.secs);
    let (count, hist) = rt.block_on(async {
        let tasks: Vec<_> = (0..args.appenders)
            .map(|_| tokio::spawn(appender(stream.clone(), msg.clone(), args.window, deadline)))
            .collect();
        let mut total = 0;
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for t in tasks {
            let (n, h) = t.await.expect("appender");
            total += n;
            hist.add(h).expect("same bounds");
        }
        (total, hist)
    });
    let elapsed = start.elapsed().as_secs_f64();
    let syncs = counter.0.load(Ordering::Relaxed) - syncs_before;
    let bounds = stream.bounds();
    drop(stream);
    drop(storage);
    serde_json::json!({
        "payload_bytes": size,
        "mode": match mode { SyncMode::Fsync => "fsync", SyncMode::Buffered => "buffered" },
        "durability": match mode { SyncMode::Fsync => "fsynced", SyncMode::Buffered => "written" },
        "appenders": args.appenders,
        "window": args.window,
        "seconds": elapsed,
        "messages": count,
        "msgs_per_sec": count as f64 / elapsed,
        "mb_per_sec": bounds.bytes as f64 / elapsed / 1e6,
        "commit_p50_us": hist.value_at_quantile(0.50),
        "commit_p99_us": hist.value_at_quantile(0.99),
        "commit_p999_us": hist.value_at_quantile(0.999),
        "commit_max_us": hist.max(),
        "fsyncs": syncs,
        "fsyncs_per_sec": syncs as f64 / elapsed,
        "msgs_per_fsync": if syncs > 0 { count as f64 / syncs as f64 } else { 0.0 },
    })
}

fn main() {
    let args = args();
    let mut all = Vec::new();
    for mode in [SyncMode::Fsync, SyncMode::Buffered] {
        for size in [128, 1024] {
            let r = run(&args, size, mode);
            println!("{r}");
            all.push(r);
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&all).expect("JSON serialises")
    );
}
