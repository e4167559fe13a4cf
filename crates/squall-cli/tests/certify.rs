//! `squall certify` end to end: against a real `squall serve` child process (fsync storage) the
//! certificate shows the conformance cases run, the redelivery probes and a link cut through
//! the fault proxy with nothing confirmed lost; against the machine's NATS (core, at-most-once)
//! the same link cut is reported honestly, whatever it lost; a Kafka-protocol broker (a private
//! tansu advertising certify's `--front` proxy) gets its link cut too; a bad URL names the flag.

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
        "ack",
        "--fault-messages",
        "400",
    ]);
    let cases = c["cases"].as_array().unwrap();
    assert!(!cases.is_empty(), "the filter `ack` selects cases");
    assert!(
        cases.iter().all(|k| k["outcome"] == "pass"),
        "every selected case passes: {cases:?}"
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
