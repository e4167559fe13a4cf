//! What consumers of the log storage may see, and what a restart does with progress that ran past
//! the end of the log.
//!
//! A record is readable as soon as it is appended, but a consumer is given it only once a crash of
//! the process can no longer take it away: after its fsync in `fsync` mode, after its write in
//! `buffered` mode. Otherwise a consumer could ack a record that then dies with the process, and
//! after the restart its group would take the message that inherits that sequence for settled and
//! never deliver it. The first two cases hold the storage's fsync (resp. write) with an I/O hook and
//! check that nothing is delivered meanwhile; the next two fail it, and check that the message of
//! the refused publish is never delivered. The last cuts the tail off a segment, as a power loss
//! in `buffered` mode or a damaged tail can, and checks that the group's progress past the new end
//! is rewound, durably, so the messages that take those sequences are delivered.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use squall_broker::Broker;
use squall_broker::storage::{IoHook, IoOp, IoVerdict, LogConfig, LogStorage, Storage, SyncMode};
use squall_core::{
    Consumer, Delivery, Durability, ErrorKind, Message, Publisher, Subscriber, Subscription,
};
use support::{next, segment_files};
use tokio::sync::oneshot;

fn msg(payload: &str) -> Message {
    Message::builder("v.x")
        .unwrap()
        .payload(payload.to_string())
        .build()
}

fn payload(d: &Delivery) -> String {
    String::from_utf8(d.message().payload().to_vec()).unwrap()
}

/// Holds the first segment-file operation of one kind after [`Gate::arm`] until
/// [`Gate::release`] (or until the gate is dropped), reporting when it got there.
struct Gate {
    op: IoOp,
    armed: AtomicBool,
    entered: Mutex<Option<oneshot::Sender<()>>>,
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn new(op: IoOp) -> Arc<Self> {
        Arc::new(Gate {
            op,
            armed: AtomicBool::new(false),
            entered: Mutex::new(None),
            open: Mutex::new(false),
            opened: Condvar::new(),
        })
    }

    /// Holds the next matching operation; the receiver fires once it is held.
    fn arm(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *self.entered.lock().unwrap() = Some(tx);
        self.armed.store(true, Ordering::SeqCst);
        rx
    }

    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl IoHook for Gate {
    fn check(&self, op: IoOp, path: &Path, _len: usize) -> IoVerdict {
        let segment = path.extension().is_some_and(|e| e == "seg");
        if op == self.op && segment && self.armed.swap(false, Ordering::SeqCst) {
            if let Some(tx) = self.entered.lock().unwrap().take() {
                let _ = tx.send(());
            }
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        IoVerdict::Pass
    }
}

/// Releases the gate however the test ends, so the storage threads can stop.
struct ReleaseOnDrop(Arc<Gate>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

fn open_broker(dir: &Path, config: LogConfig) -> (Arc<LogStorage>, Broker) {
    let storage = LogStorage::open(dir, config).expect("opening storage");
    let broker = Broker::builder()
        .storage(storage.clone() as Arc<dyn Storage>)
        .open()
        .expect("opening the broker");
    (storage, broker)
}

fn group() -> Subscription {
    Subscription::new("v.>")
        .unwrap()
        .group("g")
        .unwrap()
        .durable(true)
}

/// A broker on log storage in `sync` mode with `hook`, and a member of its durable group that has
/// received and acked one message (so everything before the test's own publish is settled).
async fn warmed_up(
    sync: SyncMode,
    hook: Arc<dyn IoHook>,
) -> (tempfile::TempDir, Broker, Box<dyn Consumer>) {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        sync,
        io_hook: Some(hook),
        ..LogConfig::default()
    };
    let (_storage, broker) = open_broker(dir.path(), config);
    let mut c = broker.subscribe(group()).await.unwrap();
    broker.publish(msg("warm-up")).await.unwrap();
    next(&mut c).await.ack().await.unwrap();
    (dir, broker, c)
}

/// Publishes one message while the storage holds `op` on the segment, checks the consumer is
/// given nothing meanwhile, then releases it and checks the message arrives with `durability`.
async fn held_until_safe(sync: SyncMode, op: IoOp, durability: Durability) {
    let gate = Gate::new(op);
    let _release = ReleaseOnDrop(gate.clone());
    let (_dir, broker, mut c) = warmed_up(sync, gate.clone()).await;

    let held = gate.arm();
    let publisher = broker.clone();
    let ack = tokio::spawn(async move { publisher.publish(msg("held")).await });
    tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the storage reaches the held operation within 60 s")
        .unwrap();
    // Absence can only be checked over a window; before visibility followed durability, the
    // record was delivered within milliseconds of the append.
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(500), c.next()).await {
        panic!("delivered while its {op:?} was held: {got:?}");
    }
    assert!(!ack.is_finished(), "the publish is not acknowledged yet");

    gate.release();
    let ack = ack.await.unwrap().unwrap();
    assert_eq!(ack.durability, durability);
    let d = next(&mut c).await;
    assert_eq!(payload(&d), "held");
    assert_eq!(d.attempt(), 1);
    d.ack().await.unwrap();
    broker.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_fsync_mode_a_record_is_delivered_only_after_its_fsync() {
    held_until_safe(SyncMode::Fsync, IoOp::Sync, Durability::Fsynced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_buffered_mode_a_record_is_delivered_only_after_its_write() {
    held_until_safe(SyncMode::Buffered, IoOp::Write, Durability::Written).await;
}

/// Fails the first segment-file operation of one kind after it is armed, with EIO.
struct FailNext {
    op: IoOp,
    armed: AtomicBool,
}

impl IoHook for FailNext {
    fn check(&self, op: IoOp, path: &Path, _len: usize) -> IoVerdict {
        let segment = path.extension().is_some_and(|e| e == "seg");
        if op == self.op && segment && self.armed.swap(false, Ordering::SeqCst) {
            return IoVerdict::Fail(std::io::Error::from_raw_os_error(5));
        }
        IoVerdict::Pass
    }
}

/// A publish whose `op` fails is refused, and no consumer ever sees its message.
async fn never_seen_when_refused(sync: SyncMode, op: IoOp) {
    let hook = Arc::new(FailNext {
        op,
        armed: AtomicBool::new(false),
    });
    let (_dir, broker, mut c) = warmed_up(sync, hook.clone()).await;

    hook.armed.store(true, Ordering::SeqCst);
    let refused = broker.publish(msg("refused")).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Storage, "{refused}");
    assert!(refused.to_string().contains("os error 5"), "{refused}");
    // Absence over a window, as above: before, the message was readable, hence delivered, at
    // once, whatever became of its write.
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(500), c.next()).await {
        panic!("delivered although its publish failed: {got:?}");
    }
    let closed = broker.close().await.unwrap_err();
    assert_eq!(closed.kind(), ErrorKind::StoragePoisoned, "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_fsync_mode_a_message_whose_fsync_failed_is_never_delivered() {
    never_seen_when_refused(SyncMode::Fsync, IoOp::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_buffered_mode_a_message_whose_write_failed_is_never_delivered() {
    never_seen_when_refused(SyncMode::Buffered, IoOp::Write).await;
}

fn the_segment(dir: &Path) -> PathBuf {
    let mut segs = segment_files(dir, "default");
    assert_eq!(segs.len(), 1, "one segment: {segs:?}");
    segs.pop().unwrap()
}

async fn publish_all(broker: &Broker, payloads: &[&str]) {
    for p in payloads {
        let ack = broker.publish(msg(p)).await.unwrap();
        assert_eq!(ack.durability, Durability::Fsynced);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_past_a_lost_tail_is_rewound_and_the_new_messages_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let segment_len = || std::fs::metadata(the_segment(dir.path())).unwrap().len();

    // Ten records of one size; the group takes and acks them all.
    let (storage, broker) = open_broker(dir.path(), LogConfig::default());
    let mut c = broker.subscribe(group()).await.unwrap();
    publish_all(&broker, &["old-0"]).await;
    let one = segment_len();
    let rest: Vec<String> = (1..10).map(|i| format!("old-{i}")).collect();
    publish_all(
        &broker,
        &rest.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let record = (segment_len() - one) / 9;
    assert_eq!(segment_len() - one, 9 * record, "records of one size");
    for i in 0..10 {
        let d = next(&mut c).await;
        assert_eq!(payload(&d), format!("old-{i}"));
        d.ack().await.unwrap();
    }
    drop(c);
    broker.close().await.unwrap();
    drop((broker, storage));

    // The log loses sequences 7..=10; the group's journal still says it examined up to 10.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(the_segment(dir.path()))
        .unwrap();
    f.set_len(one + 5 * record).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // The next four messages take sequences 7..=10: each is delivered. Two are acked.
    let (storage, broker) = open_broker(dir.path(), LogConfig::default());
    let mut c = broker.subscribe(group()).await.unwrap();
    publish_all(&broker, &["new-0", "new-1", "new-2", "new-3"]).await;
    for i in 0..2 {
        let d = next(&mut c).await;
        assert_eq!(payload(&d), format!("new-{i}"), "not taken for settled");
        assert_eq!(d.attempt(), 1);
        d.ack().await.unwrap();
    }
    drop(c);
    broker.close().await.unwrap();
    drop((broker, storage));

    // The rewind was recorded: after another restart the two not yet delivered still come.
    let (_storage, broker) = open_broker(dir.path(), LogConfig::default());
    let mut c = broker.subscribe(group()).await.unwrap();
    for i in 2..4 {
        let d = next(&mut c).await;
        assert_eq!(
            payload(&d),
            format!("new-{i}"),
            "the rewind survives a restart"
        );
        assert_eq!(d.attempt(), 1);
        d.ack().await.unwrap();
    }
    let stats = broker.stream_stats("default").await.unwrap();
    assert_eq!(stats.groups[0].lag, 0, "{stats:?}");
    broker.close().await.unwrap();
}
