//! Tests of the log storage against [`MemoryStorage`] as the reference model; `faults` covers
//! torn tails, corruption, failed fsyncs, full disks and consumer journals.

mod faults;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use squall_core::{Durability, Message, Timestamp};

use super::io::{FailNth, IoHook, IoOp, IoVerdict};
use super::{LogConfig, LogStorage, SyncMode, decode_segment_for_fuzz, format};
use crate::storage::{
    ConsumerOp, ConsumerSnapshot, MemoryStorage, Storage, StorageError, StreamStore,
};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

fn msg(i: u64, size: usize) -> Message {
    let mut b = Message::builder(format!("orders.n{}", i % 7))
        .unwrap()
        .id(format!("m-{i}"))
        .unwrap()
        .timestamp(Timestamp(i * 3))
        .payload(vec![(i % 251) as u8; size]);
    if i.is_multiple_of(3) {
        b = b.key(format!("k{}", i % 5)).unwrap();
    }
    if i.is_multiple_of(4) {
        b = b
            .header("content-type", "text/plain")
            .unwrap()
            .delay(Duration::from_millis(i))
            .ttl(Duration::new(i, 7));
    }
    b.build()
}

fn config(sync: SyncMode) -> LogConfig {
    LogConfig {
        sync,
        segment_bytes: 2048,
        cache_bytes: 4096,
        buffered_sync_interval: Duration::from_millis(20),
        ..LogConfig::default()
    }
}

fn open(dir: &Path, cfg: LogConfig) -> (Arc<LogStorage>, Arc<dyn StreamStore>) {
    let storage = LogStorage::open(dir, cfg).unwrap();
    let s = storage.open_stream("s", b"meta").unwrap();
    (storage, s)
}

fn stream_dir(dir: &Path) -> PathBuf {
    dir.join("streams").join("s")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(stream_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_field_round_trips_through_cache_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let msgs: Vec<Message> = (0..40)
        .map(|i| msg(i, 10 + i as usize * 7))
        .chain([format::tests_support::full_message()])
        .collect();
    {
        let (_st, s) = open(dir.path(), config(SyncMode::Fsync));
        for (i, m) in msgs.iter().enumerate() {
            let (seq, _) = s.append(Timestamp(1000 + i as u64), m).unwrap();
            assert_eq!(seq, i as u64 + 1);
            let got = s.read(seq).unwrap().expect("readable once append returns");
            assert_eq!(got.message, *m);
        }
        s.sync().unwrap();
    }
    let (_st, s) = open(dir.path(), config(SyncMode::Fsync));
    assert!(segments(dir.path()).len() > 3, "small segments roll");
    for (i, m) in msgs.iter().enumerate().rev() {
        let got = s.read(i as u64 + 1).unwrap().expect("on disk");
        assert_eq!(got.sequence, i as u64 + 1);
        assert_eq!(got.published_at, Timestamp(1000 + i as u64));
        assert_eq!(got.message, *m, "record {}", i + 1);
    }
    assert_eq!(s.read(0).unwrap(), None);
    assert_eq!(s.read(msgs.len() as u64 + 1).unwrap(), None);
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Op {
    Append { dt: u64, size: usize },
    Read(u64),
    FirstAt(u64),
    RemoveBefore(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..3, 0usize..300).prop_map(|(dt, size)| Op::Append { dt, size }),
        3 => (0u64..80).prop_map(Op::Read),
        2 => (0u64..200).prop_map(Op::FirstAt),
        1 => (0u64..80).prop_map(Op::RemoveBefore),
        1 => Just(Op::Reopen),
    ]
}

fn check_same(log: &dyn StreamStore, mem: &dyn StreamStore, step: usize) {
    let (a, b) = (log.bounds(), mem.bounds());
    assert_eq!(
        (a.first, a.last, a.messages),
        (b.first, b.last, b.messages),
        "bounds after step {step}"
    );
    assert_eq!(a.bytes == 0, a.messages == 0, "bytes {a:?}");
}

proptest! {
    // 48 cases by default; PROPTEST_CASES raises it for a longer soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn behaves_like_memory_storage(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let mem = MemoryStorage::new().open_stream("s", b"").unwrap();
        let (mut storage, mut log) = open(dir.path(), config(SyncMode::Buffered));
        let mut ts = 100;
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Append { dt, size } => {
                    ts += dt;
                    let m = msg(step as u64, *size);
                    let a = log.append(Timestamp(ts), &m).unwrap().0;
                    let b = mem.append(Timestamp(ts), &m).unwrap().0;
                    prop_assert_eq!(a, b);
                }
                Op::Read(seq) => {
                    let a = log.read(*seq).unwrap();
                    let b = mem.read(*seq).unwrap();
                    prop_assert_eq!(a, b, "read {} at step {}", seq, step);
                }
                Op::FirstAt(t) => {
                    let a = log.first_at_or_after(Timestamp(*t)).unwrap();
                    let b = mem.first_at_or_after(Timestamp(*t)).unwrap();
                    prop_assert_eq!(a, b, "first_at_or_after({}) at step {}", t, step);
                }
                Op::RemoveBefore(seq) => {
                    log.remove_before(*seq).unwrap();
                    mem.remove_before(*seq).unwrap();
                }
                Op::Reopen => {
                    drop(log);
                    drop(storage);
                    (storage, log) = open(dir.path(), config(SyncMode::Buffered));
                }
            }
            check_same(log.as_ref(), mem.as_ref(), step);
        }
        let b = log.bounds();
        for seq in b.first..=b.last {
            prop_assert_eq!(log.read(seq).unwrap(), mem.read(seq).unwrap());
        }
        drop(storage);
    }

    #[test]
    fn the_decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_segment_for_fuzz(&bytes);
    }

    #[test]
    fn the_decoder_never_panics_on_damaged_segments(
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        len in any::<prop::sample::Index>(),
    ) {
        let mut b = format::segment_header(1).to_vec();
        for i in 0..20 {
            format::encode_record(&mut b, i + 1, Timestamp(i), &msg(i, 30), 1 << 20).unwrap();
        }
        let clean = decode_segment_for_fuzz(&b);
        prop_assert_eq!(clean.records, 20);
        for (at, v) in cuts {
            let i = at.index(b.len());
            b[i] ^= v;
        }
        b.truncate(len.index(b.len() + 1));
        let c = decode_segment_for_fuzz(&b);
        prop_assert!(c.records <= 20);
    }
}

#[test]
fn retention_deletes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (st, s) = open(dir.path(), config(SyncMode::Fsync));
    for i in 0..200 {
        s.append(Timestamp(i), &msg(i, 100)).unwrap();
    }
    s.sync().unwrap();
    let before = segments(dir.path()).len();
    let bytes_before = s.bounds().bytes;
    s.remove_before(150).unwrap();
    let after = segments(dir.path()).len();
    assert!(after < before, "{before} -> {after} segments");
    let b = s.bounds();
    assert_eq!((b.first, b.last, b.messages), (150, 200, 51));
    assert!(b.bytes < bytes_before / 3, "{} of {bytes_before}", b.bytes);
    assert_eq!(s.read(149).unwrap(), None);
    assert_eq!(s.read(150).unwrap().unwrap().message, msg(149, 100));
    s.remove_before(1000).unwrap();
    let b = s.bounds();
    assert_eq!((b.first, b.last, b.messages, b.bytes), (201, 200, 0, 0));
    drop(s);
    drop(st);
    let (_st, s) = open(dir.path(), config(SyncMode::Fsync));
    let b = s.bounds();
    assert_eq!(
        (b.first, b.last, b.messages),
        (201, 200, 0),
        "floor survives a reopen"
    );
    assert_eq!(s.append(Timestamp(500), &msg(1, 1)).unwrap().0, 201);
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn streams_keep_their_metadata_and_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = LogStorage::open(dir.path(), LogConfig::default()).unwrap();
        let a = storage.open_stream("orders", b"one").unwrap();
        let again = storage.open_stream("orders", b"two").unwrap();
        a.append(Timestamp(1), &msg(1, 1)).unwrap();
        assert_eq!(again.bounds().last, 1, "one store per stream");
        storage.open_stream("odd name/..", b"x").unwrap();
        storage.open_stream("gone", b"y").unwrap();
        storage.delete_stream("gone").unwrap();
        assert!(matches!(storage.delete_stream("never-existed"), Ok(())));
    }
    let storage = LogStorage::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(
        storage.streams().unwrap(),
        vec![
            ("odd name/..".to_string(), b"x".to_vec()),
            ("orders".to_string(), b"two".to_vec())
        ]
    );
    assert_eq!(storage.kind(), "log");
}

#[test]
fn too_large_records_are_refused_without_using_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        max_record_bytes: 1000,
        ..LogConfig::default()
    };
    let (_st, s) = open(dir.path(), cfg);
    assert!(matches!(
        s.append(Timestamp(1), &msg(1, 2000)),
        Err(StorageError::TooLarge { limit: 1000, .. })
    ));
    assert_eq!(s.append(Timestamp(1), &msg(1, 10)).unwrap().0, 1);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = LogStorage::open(dir.path(), LogConfig::default()).unwrap();
    first.open_stream("orders", b"m").unwrap();
    let Err(err) = LogStorage::open(dir.path(), LogConfig::default()) else {
        panic!("two storages over one directory must not both open");
    };
    match &err {
        StorageError::Locked { dir: d, holder } => {
            assert_eq!(d, &dir.path().display().to_string());
            assert_eq!(
                holder,
                &format!("this process (PID {})", std::process::id())
            );
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        err.to_string().contains("in use by this process"),
        "the message names the holder: {err}"
    );
    drop(first);
    let again = LogStorage::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(
        again.streams().unwrap(),
        vec![("orders".to_string(), b"m".to_vec())],
        "reopened after the first storage was dropped"
    );
}
