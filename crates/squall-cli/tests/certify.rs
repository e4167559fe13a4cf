//! `squall certify` end to end: against a real `squall serve` child process (fsync storage) the
//! certificate shows the conformance cases run, the redelivery probes and a link cut through
//! the fault proxy with nothing confirmed lost; against the machine's NATS (core, at-most-once)
//! the same link cut is reported honestly, whatever it lost; a Kafka-protocol broker (a private
//! tansu advertising certify's `--front` proxy) gets its link cut too; a `squall serve` killed and
//! started by `--stop`/`--start` commands loses nothing confirmed across the restart, a failing
//! start command is a note, not a hang; a bad URL or an unpaired `--stop` names the flag.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::Server;

fn certify(args: &[&str]) -> (Output, Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cert.json");
    let md = dir.path().join("cert.md");
    let out = Command::new(env!("CARGO_BIN_EXE_squall"))
        .arg("certify")
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .output()
        .expect("running squall certify");
    let certs = std::fs::read_to_string(&json)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or_default();
    let table = std::fs::read_to_string(&md).unwrap_or_default();
    (out, certs, table)
}

/// Runs `squall certify` with `args`, which must succeed; the first certificate and the table.
fn certified(args: &[&str]) -> (Value, String) {
    let (out, certs, table) = certify(args);
    assert!(
        out.status.success(),
        "certify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (certs[0].clone(), table)
}

/// The link cut of certificate `c` confirmed all `n` messages, lost none and saw traffic resume,
/// and the table says so.
fn assert_whole_across_the_cut(c: &Value, table: &str, n: u64) {
    let f = &c["faults"];
    assert_eq!(
        f["confirmed"], n,
        "every publish is retried until confirmed: {f}"
    );
    assert_eq!(f["lost"], 0, "the link cut loses nothing confirmed: {f}");
    assert!(
        f["recovery_ms"].as_u64().is_some(),
        "traffic resumed after the cut: {f}"
    );
    assert!(
        table.contains(&format!("link cut 2 s: confirmed / lost | {n} / 0")),
        "{table}"
    );
}

#[test]
fn squall_serve_is_certified_with_nothing_lost_across_a_link_cut() {
    let server = Server::start();
    let (c, table) = certified(&[
        "--backend",
        &server.url,
        "--cases",
        "ack,survives_restart",
        "--fault-messages",
        "400",
    ]);
    let cases = c["cases"].as_array().unwrap();
    let (restart, cases): (Vec<&Value>, Vec<&Value>) = cases
        .iter()
        .partition(|k| k["name"] == "durable_group_survives_restart");
    assert!(!cases.is_empty(), "the filter `ack` selects cases");
    assert!(
        cases.iter().all(|k| k["outcome"] == "pass"),
        "every selected case passes: {cases:?}"
    );
    assert_eq!(
        (&restart[0]["outcome"], &restart[0]["detail"]),
        (
            &Value::from("skip"),
            &Value::from("needs --stop/--start to restart the broker")
        ),
        "without restart commands the restart case is not counted as passed"
    );
    let nack = c["nack_redelivery_ms"].as_u64().expect("a nack probe");
    let lease = c["lease_redelivery_ms"].as_u64().expect("a lease probe");
    assert!(nack < 1000, "a nack(0) comes back at once, took {nack} ms");
    assert!(
        (900..5000).contains(&lease),
        "an expired 1 s lease comes back after about 1 s, took {lease} ms"
    );
    let f = &c["faults"];
    assert_eq!(f["offered"], 400);
    assert_eq!(f["reorders"], 0, "per-key order holds: {f}");
    assert_whole_across_the_cut(&c, &table, 400);
    assert!(table.contains("| persistence | native |"), "{table}");
}

#[test]
fn core_nats_is_certified_as_at_most_once() {
    let Some(url) = squall_testkit::peer_url("SQUALL_NATS_URL", "certify against core NATS") else {
        return;
    };
    let (c, table) = certified(&[
        "--backend",
        &url,
        "--cases",
        "fan_out",
        "--fault-messages",
        "300",
    ]);
    assert_eq!(c["capabilities"]["persistence"], "missing");
    assert_eq!(c["nack_redelivery_ms"], Value::Null, "no redelivery probe");
    let f = &c["faults"];
    let (confirmed, lost) = (
        f["confirmed"].as_u64().unwrap(),
        f["lost"].as_u64().unwrap(),
    );
    assert!(lost <= confirmed, "{f}");
    assert!(
        table.contains(&format!("{confirmed} / {lost}")),
        "the table shows the figures measured: {table}"
    );
}

#[test]
fn an_unknown_scheme_fails_naming_the_flag() {
    let (out, certs, _) = certify(&["--backend", "mqtt://127.0.0.1:1883"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(certs.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--backend"), "{err}");
}

/// Kafka clients dial the address the broker advertises, so the link cut needs a broker that
/// advertises certify's proxy: with `--front` every connection passes it (the broker cannot be
/// reached otherwise) and the cut loses nothing confirmed.
#[cfg(feature = "kafka")]
#[test]
fn kafka_behind_a_front_proxy_is_certified_across_a_link_cut() {
    let Some(bin) = squall_testkit::tansu::tansu_bin("certify's --front with Kafka") else {
        return;
    };
    let (front, upstream) = (support::free_port(), support::free_port());
    let _tansu = squall_testkit::tansu::Tansu::start(bin, upstream, front);
    let url = format!(
        "kafka://127.0.0.1:{front}?storage=memory&session_timeout=2s&heartbeat=200ms&metadata_refresh=500ms"
    );
    let front_arg = format!("127.0.0.1:{front}=127.0.0.1:{upstream}");
    let (c, table) = certified(&[
        "--backend",
        &url,
        "--front",
        &front_arg,
        "--cases",
        "fan_out",
        "--fault-messages",
        "300",
    ]);
    let cases = c["cases"].as_array().unwrap();
    assert!(
        !cases.is_empty() && cases.iter().all(|k| k["outcome"] == "pass"),
        "the suite ran through the front proxy: {cases:?}"
    );
    let notes = c["notes"].to_string();
    assert!(
        notes.contains(&format!("certify's proxy at 127.0.0.1:{front}")),
        "{notes}"
    );
    assert_whole_across_the_cut(&c, &table, 300);
}

/// The broker restart: the suite's restart case runs through the commands, and `squall serve`
/// killed with SIGKILL mid-run and started again on its data loses nothing it confirmed
/// (fsync); the certificate says how long it was down.
#[test]
fn squall_serve_killed_and_restarted_by_its_commands_loses_nothing_confirmed() {
    let bin = env!("CARGO_BIN_EXE_squall");
    let serve = support::ShellDaemon::new(|dir, port| {
        format!(
            "{bin} serve --sync fsync --admin off --listen 127.0.0.1:{port} --data {}/data",
            dir.display()
        )
    });
    serve.start();
    let first_pid = serve.pid().expect("a PID file");
    let url = format!("squall://{}", serve.addr());
    let (stop, start) = (
        format!("{}={}", serve.addr(), serve.stop_command()),
        format!("{}={}", serve.addr(), serve.start_command()),
    );
    let (c, table) = certified(&[
        "--backend",
        &url,
        "--cases",
        "durable_group_survives_restart",
        "--fault-messages",
        "400",
        "--stop",
        &stop,
        "--start",
        &start,
    ]);
    assert_ne!(
        serve.pid().expect("a PID file"),
        first_pid,
        "the server was killed and started again"
    );
    let case = &c["cases"][0];
    assert_eq!(
        (&case["name"], &case["outcome"]),
        (
            &Value::from("durable_group_survives_restart"),
            &Value::from("pass")
        ),
        "the suite's restart case ran with the commands: {case}"
    );
    assert_whole_across_the_cut(&c, &table, 400);
    let r = &c["restart"];
    println!("squall serve killed and restarted: {r}");
    assert_eq!(r["offered"], 400);
    assert_eq!(
        r["confirmed"], 400,
        "every publish retried until confirmed: {r}"
    );
    assert_eq!(
        r["lost"], 0,
        "an fsynced broker loses nothing confirmed: {r}"
    );
    assert_eq!(
        r["reorders"], 0,
        "per-key order holds across the restart: {r}"
    );
    assert!(r["recovery_ms"].as_u64().is_some(), "traffic resumed: {r}");
    let down = r["outage_ms"].as_u64().unwrap();
    assert!(down > 0, "{r}");
    assert!(
        table.contains("| broker restart: confirmed / lost | 400 / 0 |")
            && table.contains(&format!("| broker restart: stop → ready | {down} ms |")),
        "{table}"
    );
}

/// A start command that fails is reported in the certificate's notes, the restart rows say
/// the restart was not run, and the run ends instead of waiting for a broker that never comes.
#[test]
fn a_failing_start_command_is_a_note_not_a_hang() {
    let server = Server::start();
    let addr = server.url.trim_start_matches("squall://").to_string();
    let (c, table) = certified(&[
        "--backend",
        &server.url,
        "--cases",
        "no case has this name",
        "--fault-messages",
        "100",
        "--stop",
        &format!("{addr}=true"),
        "--start",
        &format!("{addr}=echo no such broker >&2; exit 3"),
    ]);
    assert_eq!(c["restart"], Value::Null, "{c}");
    let notes = c["notes"].to_string();
    assert!(
        notes.contains("broker restart: --start") && notes.contains("no such broker"),
        "the note names the flag and the command's error: {notes}"
    );
    assert!(
        table.contains("| broker restart: confirmed / lost | not run |"),
        "{table}"
    );
}

#[test]
fn a_stop_without_its_start_is_refused_before_anything_runs() {
    let (out, certs, _) = certify(&[
        "--backend",
        "squall://127.0.0.1:1",
        "--stop",
        "127.0.0.1:1=true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(certs.is_empty(), "nothing certified");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--stop 127.0.0.1:1=… has no --start"), "{err}");
}
