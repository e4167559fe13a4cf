//! Crash consistency of the log storage.
//!
//! `kill_9_never_loses_an_acknowledged_append` runs this test binary again as a child
//! (`SQUALL_CRASH_CHILD` set, selecting `crash_child_entry`) that appends from several tokio
//! tasks in `Fsync` mode and prints every append whose commit resolved, and every consumer op
//! recorded. The parent SIGKILLs it at a seeded random point, reopens the directory and checks:
//! every acknowledged message is readable with identical content at its sequence, no record is
//! served corrupt, sequences are contiguous, consumer progress holds every recorded op, and appends
//! continue. `damaged_segments_never_serve_wrong_data` truncates and flips bytes of the newest
//! segment and checks what reopening makes of it.
//!
//! Replay a failure with the seed it prints: `SQUALL_CRASH_SEED=<seed> cargo test --test log_crash`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use squall_broker::storage::{
    ConsumerOp, LogConfig, LogStorage, Storage, StorageError, StreamStore, SyncMode,
};
use squall_core::{Durability, Message, Timestamp};

const CHILD_ENV: &str = "SQUALL_CRASH_CHILD";
const ROUNDS: u64 = 40;
const TASKS: u64 = 8;

/// splitmix64: the one generator all randomness here comes from.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    let seed = std::env::var("SQUALL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed: {seed} (replay with SQUALL_CRASH_SEED={seed})");
    seed
}

/// The message with id `id`: everything derived from the id, so the parent can rebuild it.
fn message_for(id: &str) -> Message {
    let mut rng = Rng(id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }));
    let size = rng.below(1500) as usize;
    let payload: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
    let mut b = Message::builder(format!("crash.t{}", rng.below(4)))
        .unwrap()
        .id(id)
        .unwrap()
        .timestamp(Timestamp(rng.next() >> 2))
        .payload(payload);
    if rng.below(2) == 0 {
        b = b.key(format!("k{}", rng.below(10))).unwrap();
    }
    if rng.below(3) == 0 {
        b = b
            .header("trace", format!("t-{}", rng.next()))
            .unwrap()
            .delay(Duration::from_nanos(rng.below(1 << 40)))
            .ttl(Duration::from_millis(rng.below(100_000)));
    }
    b.build()
}

fn config() -> LogConfig {
    LogConfig {
        sync: SyncMode::Fsync,
        segment_bytes: 256 * 1024,
        consumer_compact_bytes: 8 * 1024,
        cache_bytes: 1024 * 1024,
        ..LogConfig::default()
    }
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line).unwrap();
    out.write_all(b"\n").unwrap();
    out.flush().unwrap();
}

/// The child: appends and records consumer ops until killed. Does nothing in a normal test run.
#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("SQUALL_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let storage = LogStorage::open(&dir, config()).unwrap();
        let stream = storage.open_stream("crash", b"meta").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(100_000);
        let consumer = {
            let stream = stream.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(seq) = rx.recv().await {
                    let deliver = ConsumerOp::Deliver {
                        seq,
                        nonce: seq,
                        at: Timestamp(seq),
                        deadline: Timestamp(seq + 1000),
                    };
                    stream.record_consumer("g", &[deliver]).unwrap();
                    say(format_args!("@D {seq}"));
                    n += 1;
                    if n.is_multiple_of(2) {
                        stream
                            .record_consumer("g", &[ConsumerOp::Settle { seq }])
                            .unwrap();
                        say(format_args!("@S {seq}"));
                    }
                }
            })
        };
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let stream = stream.clone();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..5000u64 {
                    let id = format!("r{round}-t{t}-{i}");
                    let (seq, commit) = stream.append(Timestamp(1), &message_for(&id)).unwrap();
                    assert_eq!(commit.wait().await.unwrap(), Durability::Fsynced);
                    say(format_args!("@A {seq} {id}"));
                    let _ = tx.send(seq).await;
                }
            }));
        }
        drop(tx);
        for t in tasks {
            t.await.unwrap();
        }
        consumer.await.unwrap();
    });
}

/// What a child reported before it died.
#[derive(Default)]
struct Reported {
    acked: BTreeMap<u64, String>,
    delivered: BTreeSet<u64>,
    settled: BTreeSet<u64>,
    /// The last delivery reported by each child: its settle may have been recorded and not
    /// reported before the kill.
    maybe_settled: BTreeSet<u64>,
    last_delivered: Option<u64>,
}

impl Reported {
    fn take(&mut self, line: &str) {
        let mut parts = line.split(' ');
        match (
            parts.next(),
            parts.next().and_then(|s| s.parse::<u64>().ok()),
        ) {
            (Some("@A"), Some(seq)) => {
                let id = parts.next().expect("an id").to_string();
                assert!(
                    self.acked.insert(seq, id).is_none(),
                    "sequence {seq} acknowledged twice"
                );
            }
            (Some("@D"), Some(seq)) => {
                self.delivered.insert(seq);
                self.last_delivered = Some(seq);
            }
            (Some("@S"), Some(seq)) => {
                self.settled.insert(seq);
            }
            _ => {}
        }
    }
}

/// Runs one child and kills it once it acknowledged `kill_after` appends.
fn run_child(dir: &Path, round: u64, kill_after: usize, report: &mut Reported) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env("SQUALL_CRASH_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acks = 0;
    while acks < kill_after {
        let Some(line) = lines.next() else {
            panic!("round {round}: the child exited before {kill_after} acks");
        };
        let line = line.unwrap();
        acks += usize::from(line.starts_with("@A "));
        report.take(&line);
    }
    child.kill().unwrap(); // SIGKILL
    // What it printed before dying.
    for line in lines {
        let Ok(line) = line else { break };
        report.take(&line);
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "round {round}: the child was killed");
    report.maybe_settled.extend(report.last_delivered.take());
}

fn open(dir: &Path) -> (Arc<LogStorage>, Arc<dyn StreamStore>) {
    let storage = LogStorage::open(dir, config()).unwrap();
    let stream = storage.open_stream("crash", b"meta").unwrap();
    (storage, stream)
}

/// Every acknowledged append is there, intact; every sequence up to `last` is readable.
fn check_stream(stream: &dyn StreamStore, report: &Reported, ctx: &str) {
    let b = stream.bounds();
    assert_eq!(b.first, 1, "{ctx}: nothing removed");
    if let Some((&max, _)) = report.acked.last_key_value() {
        assert!(b.last >= max, "{ctx}: last {} < acknowledged {max}", b.last);
    }
    assert_eq!(b.messages, b.last, "{ctx}: contiguous");
    for seq in 1..=b.last {
        let m = match stream.read(seq) {
            Ok(Some(m)) => m,
            other => panic!("{ctx}: sequence {seq} of 1..={}: {other:?}", b.last),
        };
        assert_eq!(m.sequence, seq);
        // Unacknowledged appends that reached the disk are fine; they must be intact too.
        let expected = message_for(m.message.id().as_str());
        assert_eq!(m.message, expected, "{ctx}: sequence {seq} content");
        if let Some(id) = report.acked.get(&seq) {
            assert_eq!(m.message.id().as_str(), id, "{ctx}: sequence {seq} id");
        }
    }
}

fn check_consumer(stream: &dyn StreamStore, report: &Reported, ctx: &str) {
    let consumers = stream.consumers().unwrap();
    let snap = consumers
        .iter()
        .find(|(n, _)| n == "g")
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    for seq in &report.settled {
        assert!(
            !snap.pending.contains_key(seq),
            "{ctx}: settled {seq} is pending again"
        );
    }
    for seq in report.delivered.difference(&report.settled) {
        // The settle of the last delivery may have been recorded without being reported.
        assert!(
            snap.pending.contains_key(seq) || report.maybe_settled.contains(seq),
            "{ctx}: delivery of {seq} lost"
        );
    }
}

#[test]
fn kill_9_never_loses_an_acknowledged_append() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mut rng = Rng(seed());
    let dir = tempfile::tempdir().unwrap();
    let mut report = Reported::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..ROUNDS {
        // Now and then before the first ack: a crash during open and recovery.
        let kill_after = match rng.below(10) {
            0 => 0,
            _ => 1 + rng.below(600) as usize,
        };
        run_child(dir.path(), round, kill_after, &mut report);
        let ctx = format!("round {round} (killed after {kill_after} acks)");
        let (storage, stream) = open(dir.path());
        check_stream(stream.as_ref(), &report, &ctx);
        check_consumer(stream.as_ref(), &report, &ctx);
        // Appends continue where the log ends.
        let last = stream.bounds().last;
        let id = format!("parent-{round}");
        let (seq, commit) = stream.append(Timestamp(2), &message_for(&id)).unwrap();
        assert_eq!(seq, last + 1, "{ctx}");
        rt.block_on(commit.wait()).unwrap();
        report.acked.insert(seq, id);
        drop(stream);
        drop(storage);
    }
    assert!(
        report.acked.len() as u64 > ROUNDS * 10,
        "the children made progress"
    );
}

fn newest_segment(dir: &Path) -> std::path::PathBuf {
    support::segment_files(dir, "crash").pop().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn damaged_segments_never_serve_wrong_data() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mut rng = Rng(seed());
    let pristine = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut originals = Vec::new();
    {
        let (_storage, stream) = open(pristine.path());
        for i in 0..400 {
            let m = message_for(&format!("d-{i}"));
            stream.append(Timestamp(i), &m).unwrap();
            originals.push(m);
        }
        stream.sync().unwrap();
    }
    let seg = newest_segment(pristine.path());
    let seg_name = seg.file_name().unwrap().to_owned();
    let seg_base: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    // Where each record of the newest segment ends (length prefix + CRC + body), to know what
    // a cut or a flip leaves intact.
    let mut ends = Vec::new();
    let mut at = 24usize;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += len + 8;
        ends.push(at as u64);
    }
    assert_eq!(ends.len() as u64, 400 - seg_base + 1);
    assert_eq!(*ends.last().unwrap(), bytes.len() as u64);
    let mut corrupt_reports = 0;
    for case in 0..30 {
        let work = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), work.path());
        let target = work.path().join("streams").join("crash").join(&seg_name);
        let mut b = bytes.clone();
        let cut = if rng.below(2) == 0 {
            let at = 24 + rng.below(b.len() as u64 - 24);
            b.truncate(at as usize);
            Some(at)
        } else {
            None
        };
        let mut flipped = Vec::new();
        if cut.is_none() || rng.below(2) == 0 {
            for _ in 0..1 + rng.below(3) {
                let at = 24 + rng.below(b.len() as u64 - 24) as usize;
                b[at] ^= 1 << rng.below(8);
                flipped.push(at as u64);
            }
        }
        std::fs::write(&target, &b).unwrap();
        let ctx = format!("case {case}: cut {cut:?}, flipped {flipped:?}");
        let (_storage, stream) = open(work.path());
        let bounds = stream.bounds();
        for seq in 1..=bounds.last {
            match stream.read(seq) {
                Ok(Some(m)) => {
                    assert_eq!(m.message, originals[(seq - 1) as usize], "{ctx}: seq {seq}")
                }
                Err(StorageError::Corrupt { first, last, .. }) => {
                    corrupt_reports += 1;
                    assert!((first..=last).contains(&seq), "{ctx}: seq {seq}");
                    let i = seq.saturating_sub(seg_base) as usize;
                    let start = if i == 0 { 24 } else { ends[i - 1] };
                    assert!(
                        seq >= seg_base && flipped.iter().any(|f| *f >= start && *f < ends[i]),
                        "{ctx}: seq {seq} reported corrupt without damage to it"
                    );
                }
                other => panic!("{ctx}: seq {seq}: {other:?}"),
            }
        }
        // Records wholly before the cut and before any flip are all there.
        let intact_end = flipped.iter().copied().chain(cut).min().unwrap_or(u64::MAX);
        let intact = ends.iter().take_while(|e| **e <= intact_end).count() as u64;
        assert!(
            bounds.last >= seg_base - 1 + intact,
            "{ctx}: last {} but {intact} records were intact",
            bounds.last
        );
        let (seq, commit) = stream
            .append(Timestamp(1000), &message_for("after"))
            .unwrap();
        assert_eq!(seq, bounds.last + 1, "{ctx}");
        rt.block_on(commit.wait()).unwrap();
        assert_eq!(
            stream.read(seq).unwrap().unwrap().message,
            message_for("after")
        );
    }
    eprintln!("{corrupt_reports} reads reported corruption");
    assert!(
        corrupt_reports > 0,
        "some flip hit the middle of the segment"
    );
}
