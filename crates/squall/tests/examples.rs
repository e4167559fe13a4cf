//! Runs every example binary and checks it exits 0 and prints its summary line, the line that
//! states what the example proved (each example also checks its own claims and exits non-zero
//! when one does not hold).
//!
//! The binaries are the ones cargo builds next to this test (`target/<profile>/examples/`):
//! `cargo test -p squall` (or `--workspace`) builds the examples before running the tests. A
//! binary that is missing or older than its source fails the test with the command to run,
//! rather than running something stale.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one example may run; each finishes in a few seconds.
const LIMIT: Duration = Duration::from_secs(60);

fn example_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.rs"));
    let built = std::fs::metadata(&bin).and_then(|m| m.modified());
    let edited = std::fs::metadata(&source)
        .and_then(|m| m.modified())
        .expect("the example's source");
    match built {
        Ok(built) if built >= edited => bin,
        Ok(_) => panic!(
            "{} is older than {}: run `cargo test -p squall`, which rebuilds the examples",
            bin.display(),
            source.display()
        ),
        Err(_) => panic!(
            "{} is missing: run `cargo test -p squall` (or `cargo build -p squall --examples`)",
            bin.display()
        ),
    }
}

/// Runs example `name`; returns its stdout after checking it exited 0 within [`LIMIT`].
fn run(name: &str) -> String {
    let bin = example_binary(name);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(&bin)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let started = Instant::now();
    // Outputs are a few kB, well within the pipe buffers, so waiting first cannot block.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{name} still ran after {LIMIT:?}; its output:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert!(
        status.success(),
        "{name} exited with {status}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The example's last line, which must be its summary.
fn summary(name: &str) -> String {
    let out = run(name);
    let last = out.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with(&format!("{name}: ")),
        "{name}'s last line is not its summary:\n{out}"
    );
    last
}

#[test]
fn order_events_dispatches_every_event_by_type() {
    assert_eq!(
        summary("order_events"),
        "order_events: published 10 events, handled created 3, paid 3, shipped 3, unknown 1"
    );
}

#[test]
fn fanout_subscribers_get_what_their_patterns_match() {
    assert_eq!(
        summary("fanout_subscribers"),
        "fanout_subscribers: 6 events; email 6, inventory 3, analytics 6"
    );
}

#[test]
fn work_queue_processes_each_order_once() {
    let out = run("work_queue");
    assert!(
        out.ends_with("work_queue: 10 orders processed once each by 3 workers\n"),
        "{out}"
    );
    let per_worker: u32 = out
        .lines()
        .filter_map(|l| {
            l.strip_prefix("worker ")?
                .split_once(": ")?
                .1
                .strip_suffix(" orders")
        })
        .map(|n| n.parse::<u32>().unwrap())
        .sum();
    assert_eq!(per_worker, 10, "the per-worker counts add up:\n{out}");
}

#[test]
fn request_reply_answers_and_refuses_without_responders() {
    assert_eq!(
        summary("request_reply"),
        "request_reply: 3 requests answered, 1 refused at once (no responders)"
    );
}

#[test]
fn outbox_publishes_only_committed_orders() {
    assert_eq!(
        summary("outbox"),
        "outbox: 4 orders committed, 1 rolled back; relay published 4; consumer received 4"
    );
}

#[test]
fn idempotent_consumer_applies_each_payment_once() {
    assert_eq!(
        summary("idempotent_consumer"),
        "idempotent_consumer: 8 deliveries, 5 payments applied once each, 3 duplicates skipped"
    );
}

#[test]
fn dlq_redrive_dead_letters_inspects_and_redrives() {
    assert_eq!(
        summary("dlq_redrive"),
        "dlq_redrive: 2 dead-lettered after 3 attempts each, 2 redriven, 2 processed, DLQ empty"
    );
}
