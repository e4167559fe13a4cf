//! The chaos lab end to end through the `squall` binary: every shipped scenario (short `--quick`
//! versions) passes against a real `squall serve`, and a deliberately lossy configuration (memory
//! storage killed with SIGKILL: at-most-once across a crash) fails with the lost messages counted.

use std::path::Path;
use std::process::Command;

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
    println!("{stdout}");
    assert!(
        stdout.starts_with("seed "),
        "the report starts with the seed: {stdout}"
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

#[test]
fn every_shipped_scenario_passes_against_squall_serve() {
    let mut ran = 0;
    let mut entries: Vec<_> = std::fs::read_dir(workspace().join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        let (code, report) = run(&path, &[]);
        let f = &report["findings"];
        assert_eq!(f["lost"], 0, "{}: confirmed messages lost", path.display());
        assert_eq!(
            code,
            0,
            "{} failed its criteria: {}",
            path.display(),
            report["verdicts"]
        );
        ran += 1;
    }
    assert!(ran >= 4, "only {ran} scenarios found");
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
    let path = dir.path().join("lossy.toml");
    std::fs::write(&path, lossy).unwrap();
    let (code, report) = run(&path, &["--seed", "7"]);
    assert_eq!(report["seed"], 7, "the seed given is the seed reported");
    let lost = report["findings"]["lost"].as_u64().unwrap();
    assert!(
        lost > 0,
        "memory storage killed mid-run must lose confirmed messages"
    );
    assert_eq!(code, 1, "a failed criterion exits 1");
    let lost_verdict = report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("lost"))
        .unwrap();
    assert_eq!(lost_verdict["pass"], false);
}
