//! `squall bench` end to end: the quick harness check over every workload against squall
//! embedded, `squall serve` (a child process of the benchmark), and NATS and RabbitMQ when
//! `SQUALL_NATS_URL` / `SQUALL_AMQP_URL` are set (a notice when not; a failure under
//! `SQUALL_REQUIRE_PEERS=1`); the JSON must hold a row per workload and target, measured rows
//! with positive rates and ordered percentiles, unmeasured rows with a reason. Also: a busy
//! machine (a CPU-burning child) is refused, or labelled with `--allow-busy`.
//!
//! These tests check the harness, never speed: the figures of a quick run mean nothing.

use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const WORKLOADS: [&str; 10] = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10"];

/// The URL of a peer from `var`; `None` (with a notice) leaves it out of the check.
fn peer(var: &str) -> Option<String> {
    squall_testkit::peer_url(var, "this peer in the bench harness check")
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_squall"))
        .arg("bench")
        .args(args)
        .env_remove("SQUALL_LOG")
        .output()
        .expect("running squall bench")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

fn check_percentiles(row: &Value, key: &str) {
    let p = &row[key];
    let (p50, p99, p999, max) = (
        f(p, &["p50"]),
        f(p, &["p99"]),
        f(p, &["p999"]),
        f(p, &["max"]),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
        "{key} percentiles out of order in {row}"
    );
    assert!(f(p, &["count"]) > 0.0);
}

#[test]
fn quick_run_has_a_row_per_workload_and_target_with_sane_figures() {
    let nats = peer("SQUALL_NATS_URL");
    let amqp = peer("SQUALL_AMQP_URL");
    let mut targets = vec!["squall-embedded", "squall-serve"];
    if nats.is_some() {
        targets.extend(["nats-core", "nats-js"]);
    }
    if amqp.is_some() {
        targets.extend(["rabbitmq-classic", "rabbitmq-quorum"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let md = dir.path().join("bench.md");
    let html = dir.path().join("bench.html");
    let targets_arg = targets.join(",");
    let out = bench(&[
        "--quick",
        "--allow-busy",
        "--targets",
        &targets_arg,
        "--json",
        json.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["quick"], true);
    assert!(f(&report, &["machine", "cores"]) >= 1.0);
    assert!(report["busy"]["busy"].is_boolean());
    let rows = report["rows"].as_array().expect("rows");

    for w in WORKLOADS {
        for t in &targets {
            let mine: Vec<&Value> = rows
                .iter()
                .filter(|r| r["workload"] == w && r["target"] == *t)
                .collect();
            assert!(!mine.is_empty(), "no row for {w} on {t}");
        }
    }
    for row in rows {
        match row["status"].as_str().unwrap() {
            "ok" => {
                assert!(f(row, &["msgs_per_sec", "median"]) > 0.0, "{row}");
                assert!(f(row, &["msgs_per_sec", "min"]) > 0.0, "{row}");
                assert!(f(row, &["publish_msgs_per_sec", "median"]) > 0.0, "{row}");
                check_percentiles(row, "e2e_us");
                if !row["publish_ack_us"].is_null() {
                    check_percentiles(row, "publish_ack_us");
                }
                let label = row["durability"].as_str().unwrap();
                assert!(
                    ["none", "page-cache", "fsync-batched", "fsync-per-message"].contains(&label),
                    "{row}"
                );
                // CPU time comes in 10 ms clock ticks: a quick phase may round to zero.
                assert!(f(row, &["client_cpu_secs", "median"]) >= 0.0, "{row}");
            }
            "skipped" => {
                let reason = row["reason"].as_str().unwrap_or("");
                assert!(!reason.is_empty(), "a skipped row without a reason: {row}");
            }
            other => panic!("row {other}: {row}"),
        }
    }
    // CPU is measured at all: over every measured row, the load generator used some.
    let client_cpu: f64 = rows
        .iter()
        .filter(|r| r["status"] == "ok")
        .map(|r| f(r, &["client_cpu_secs", "median"]))
        .sum();
    assert!(client_cpu > 0.0, "no client CPU time recorded in any row");
    // squall serve's group commit is observed through its /metrics.
    assert!(
        rows.iter().any(|r| r["target"] == "squall-serve"
            && r["requested_durability"] == "fsync"
            && r["status"] == "ok"
            && f(r, &["fsyncs", "median"]) > 0.0),
        "no fsync count read from squall serve"
    );
    // The harness really measured each driver, not only explained why not.
    let measured = |w: &str, t: &str| {
        rows.iter()
            .any(|r| r["workload"] == w && r["target"] == t && r["status"] == "ok")
    };
    for w in WORKLOADS {
        assert!(
            measured(w, "squall-embedded"),
            "{w} not measured in-process"
        );
    }
    for w in &WORKLOADS[..9] {
        assert!(
            measured(w, "squall-serve"),
            "{w} not measured over loopback"
        );
    }
    if nats.is_some() {
        assert!(measured("W5", "nats-core"));
        assert!(measured("W1", "nats-js"));
    }
    if amqp.is_some() {
        assert!(measured("W1", "rabbitmq-classic"));
        assert!(measured("W1", "rabbitmq-quorum"));
    }
    // A separate broker process has its CPU measured; the embedded one is the client's.
    let serve_w1 = rows
        .iter()
        .find(|r| r["workload"] == "W1" && r["target"] == "squall-serve" && r["status"] == "ok")
        .unwrap();
    assert!(f(serve_w1, &["broker_cpu_secs", "median"]) >= 0.0);
    let embedded_w1 = rows
        .iter()
        .find(|r| {
            r["workload"] == "W1" && r["target"] == "squall-embedded" && r["variant"] == "fsync"
        })
        .unwrap();
    assert!(f(embedded_w1, &["fsyncs", "median"]) > 0.0, "{embedded_w1}");
    assert!(!report["ratios"].as_array().unwrap().is_empty() || targets.len() == 2);

    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.contains("| W1 | fsync | squall-serve | fsync-batched |"),
        "{md}"
    );
    assert!(md.contains("Quick mode"));
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(html.contains("<svg") && html.contains("squall-embedded"));
}

/// A child process spinning on one core, killed by its PID on drop.
struct Burner(Child);

impl Burner {
    fn start() -> Burner {
        Burner(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdout(Stdio::null())
                .spawn()
                .expect("starting a CPU burner"),
        )
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_busy_machine_is_refused_or_labelled() {
    let _burner = Burner::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("busy.json");
    let args = [
        "--quick",
        "--workloads",
        "W1",
        "--targets",
        "squall-embedded",
        "--json",
        json.to_str().unwrap(),
    ];
    let refused = bench(&args);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("machine is busy"),
        "{}",
        text(&refused)
    );
    assert!(!json.exists(), "a refused run must not write a report");

    let mut allowed_args = args.to_vec();
    allowed_args.push("--allow-busy");
    let allowed = bench(&allowed_args);
    assert!(allowed.status.success(), "{}", text(&allowed));
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["busy"]["busy"], true, "{report}");
    assert!(f(&report, &["busy", "max_other_cores"]) > 0.25);
    assert!(
        report["busy"]["note"]
            .as_str()
            .unwrap()
            .contains("machine was busy")
    );
    assert!(String::from_utf8_lossy(&allowed.stdout).contains("machine was busy"));
}

#[test]
fn unknown_targets_and_workloads_are_clear_errors() {
    let out = bench(&["--quick", "--targets", "kafka"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target `kafka`"));
    let out = bench(&["--quick", "--workloads", "W11"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown workload `W11`"));
}
