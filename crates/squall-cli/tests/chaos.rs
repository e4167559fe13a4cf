//! The chaos lab end to end through the `squall` binary:
//! - every shipped scenario (short `--quick` versions) passes against a real `squall serve`, with
//!   nothing confirmed lost;
//! - the checker fails runs that lose (memory storage killed with SIGKILL: at-most-once across a
//!   crash), duplicate (deliveries handed over twice) or reorder (publishes held and shuffled);
//! - `squall chaos proxy` forwards bytes and obeys its HTTP API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use squall_chaos::scenario::Scenario;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

/// Runs a scenario; returns (exit code, JSON report).
fn run(scenario: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["chaos", "run", "--quick", "--quiet"])
        .arg(scenario)
        .args(extra)
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("running squall chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}({:.1} s)", started.elapsed().as_secs_f64());
    assert!(
        stdout.starts_with("seed "),
        "the report starts with the seed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("replay: squall chaos run"),
        "and the replay command: {stdout}"
    );
    let page = std::fs::read_to_string(&html).expect("an HTML report");
    assert!(
        page.contains("<svg") && page.contains("Throughput per second"),
        "the HTML report has its charts"
    );
    let report =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("a JSON report")).unwrap();
    (out.status.code().unwrap_or(-1), report)
}

fn verdict<'a>(report: &'a serde_json::Value, prefix: &str) -> &'a serde_json::Value {
    report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no verdict `{prefix}` in {}", report["verdicts"]))
}

#[test]
fn every_shipped_scenario_passes_against_squall_serve() {
    let mut entries: Vec<_> = std::fs::read_dir(workspace().join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    let names: Vec<_> = entries
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    for expected in [
        "loss-resilience",
        "backpressure",
        "network-partition",
        "broker-kill",
        "broker-kill-buffered",
        "partition-producers",
        "network-degradation",
        "message-flood",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} is missing");
    }
    for path in entries {
        let s = Scenario::parse(&std::fs::read_to_string(&path).unwrap(), "x").unwrap();
        let (code, report) = run(&path, &[]);
        let f = &report["findings"];
        assert_eq!(f["lost"], 0, "{}: confirmed messages lost", s.name);
        assert_eq!(
            code, 0,
            "{} failed its criteria: {}",
            s.name, report["verdicts"]
        );
        let phases: Vec<_> = f["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<_> = s.phases.iter().map(|p| p.name.clone()).collect();
        assert_eq!(phases, expected, "{}: per-phase counts", s.name);
        if s.phases.iter().any(|p| !p.rules.is_empty()) {
            assert!(
                !report["injections"].as_object().unwrap().is_empty(),
                "{}: its rules injected nothing",
                s.name
            );
        }
        if s.phases
            .iter()
            .any(|p| p.has_faults() || !p.actions.is_empty())
        {
            assert!(
                !f["recoveries"].as_array().unwrap().is_empty(),
                "{}: a recovery entry per fault window",
                s.name
            );
        }
        if s.workload.poison > 0.0 {
            let rejected = f["rejected"].as_u64().unwrap();
            assert!(rejected > 0, "{}: no poison message rejected", s.name);
            assert_eq!(
                f["dead_lettered"].as_u64().unwrap(),
                rejected,
                "{}: every rejected message dead-lettered",
                s.name
            );
        }
    }
}

/// Writes `text` as a scenario file in `dir`.
fn scenario(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    Scenario::parse(text, name).expect("the test's scenario is valid");
    path
}

#[test]
fn the_checker_fails_a_lossy_configuration() {
    // The default game day, but the broker keeps messages in memory only: a SIGKILL loses what it
    // had confirmed. The lab must say so.
    let text = std::fs::read_to_string(workspace().join("scenarios/broker-kill.toml")).unwrap();
    // Consumers that take 5 ms a message fall behind the producers, so the broker always holds
    // a backlog of confirmed, undelivered messages when it is killed: the loss is certain, not
    // a matter of timing. The drain is short because the lost messages never come.
    let lossy = format!("drain = \"3s\"\n{text}")
        .replace("sync = \"fsync\"", "sync = \"memory\"")
        .replace("[workload]\n", "[workload]\nprocessing = \"5ms\"\n");
    assert!(lossy.contains("sync = \"memory\"") && lossy.contains("processing = \"5ms\""));
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(&dir, "lossy", &lossy);
    let (code, report) = run(&path, &["--seed", "7"]);
    assert_eq!(report["seed"], 7, "the seed given is the seed reported");
    let lost = report["findings"]["lost"].as_u64().unwrap();
    assert!(
        lost > 0,
        "memory storage killed mid-run must lose confirmed messages"
    );
    assert_eq!(code, 1, "a failed criterion exits 1");
    assert_eq!(verdict(&report, "lost")["pass"], false);
}

#[test]
fn the_checker_fails_a_run_with_duplicates_over_the_limit() {
    // A fifth of the deliveries are handed to the consumer twice: an at-least-once consumer sees
    // them; a scenario that allows none must fail, and must not mistake them for anything else.
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(
        &dir,
        "duplicated",
        r#"
name = "duplicated"
drain = "10s"
[target]
kind = "server"
sync = "memory"
[workload]
producers = 1
consumers = 1
rate = 500
count = 1500
keys = 4
[[phase]]
name = "twice"
duration = "3s"
[[phase.rule]]
name = "twice"
point = "deliver"
probability = 0.2
fault = { kind = "duplicate" }
[criteria]
max_lost = 0
max_duplicates = 0
"#,
    );
    let (code, report) = run(&path, &["--seed", "11"]);
    let f = &report["findings"];
    let dups = f["duplicates"].as_u64().unwrap();
    assert!(dups > 0, "duplicated deliveries must be counted: {f}");
    assert_eq!(
        f["delivered_twice"], dups,
        "as one delivery handed over twice"
    );
    assert_eq!(f["lost"], 0);
    assert_eq!(code, 1, "duplicates over the limit exit 1");
    assert_eq!(verdict(&report, "duplicates")["pass"], false);
    assert_eq!(verdict(&report, "lost")["pass"], true);
}

#[test]
fn the_checker_fails_a_run_with_reorders() {
    // Every publish is held and released in batches of 8, shuffled: the stream stores them out
    // of order, and one consumer receives them in stream order. Per-key order must fail.
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(
        &dir,
        "reordered",
        r#"
name = "reordered"
drain = "10s"
[target]
kind = "server"
sync = "memory"
[workload]
producers = 1
consumers = 1
rate = 500
count = 1500
keys = 2
[[phase]]
name = "shuffled"
duration = "3s"
[[phase.rule]]
name = "shuffle"
point = "publish"
fault = { kind = "reorder", count = 8, max_wait = "50ms" }
[criteria]
max_lost = 0
per_key_order = true
"#,
    );
    let (code, report) = run(&path, &["--seed", "13"]);
    let f = &report["findings"];
    assert!(
        f["reorders"].as_u64().unwrap() > 0,
        "shuffled publishes must show as reorders: {f}"
    );
    assert_eq!(f["lost"], 0);
    assert_eq!(code, 1, "reorders exit 1 when per-key order is required");
    assert_eq!(verdict(&report, "per-key order")["pass"], false);
}

/// A TCP echo server on a free port, serving until the test process ends.
fn echo_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    addr
}

/// A minimal HTTP/1.1 request; returns the status code.
fn http(method: &str, api: &str, path: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(api).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn echo(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).unwrap();
    let mut got = vec![0; data.len()];
    s.read_exact(&mut got).unwrap();
    got
}

#[test]
fn the_fault_proxy_runs_from_the_command_line_and_obeys_its_api() {
    let upstream = echo_server();
    let mut child = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["chaos", "proxy", "--listen", "127.0.0.1:0", "--upstream"])
        .arg(&upstream)
        .args(["--api", "127.0.0.1:0", "--seed", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut listen, mut api) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            listen = rest.split(',').next().unwrap().to_string();
        }
        if let Some(rest) = line.strip_prefix("API: http://") {
            api = rest.split('/').next().unwrap().to_string();
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert!(!listen.is_empty() && !api.is_empty(), "{listen} / {api}");

    // Bytes pass through, both ways.
    let mut s = TcpStream::connect(&listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(echo(&mut s, b"hello"), b"hello");

    // A blackhole added over the API holds the data...
    assert_eq!(
        http(
            "POST",
            &api,
            "/proxies/proxy/faults",
            r#"{"name":"bh","kind":"blackhole"}"#
        ),
        201
    );
    s.write_all(b"held?").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 5];
    let e = s
        .read(&mut buf)
        .expect_err("nothing may come through a blackhole");
    assert!(matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    // ...until it is removed: then it arrives, intact.
    assert_eq!(http("DELETE", &api, "/proxies/proxy/faults/bh", ""), 204);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"held?");

    // Down: connections are closed and new ones refused; up: served again on the same port.
    assert_eq!(http("POST", &api, "/proxies/proxy/down", ""), 200);
    assert_eq!(
        s.read(&mut buf).unwrap(),
        0,
        "the live connection is closed"
    );
    assert!(
        TcpStream::connect(&listen).is_err(),
        "a down proxy refuses connections"
    );
    assert_eq!(http("POST", &api, "/proxies/proxy/up", ""), 200);
    let mut s = TcpStream::connect(&listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(echo(&mut s, b"again"), b"again");

    // Ctrl-C stops it cleanly.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("squall chaos proxy did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}
