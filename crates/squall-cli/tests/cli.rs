//! Runs the built `squall` binary and checks what a user sees.

use std::process::{Command, Output};

fn squall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(args)
        .env_remove("SQUALL_LOG")
        .output()
        .expect("the squall binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

#[test]
fn help_lists_the_info_subcommand_and_exits_0() {
    let out = squall(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("Usage: squall"), "no usage line in:\n{text}");
    assert!(text.contains("info"), "no `info` subcommand in:\n{text}");
}

#[test]
fn version_prints_the_crate_version() {
    let out = squall(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout(&out).trim(),
        format!("squall {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn info_json_reports_version_and_capabilities() {
    let out = squall(&["info", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info --json is JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["backend"], "embedded");
    assert_eq!(v["capabilities"]["persistence"], "native");
    assert_eq!(v["capabilities"]["dead_letter"], "native");
    assert_eq!(v["max_payload"], 1 << 20);
    assert!(
        v["max_durability"].is_string(),
        "max_durability: {}",
        v["max_durability"]
    );
}

#[test]
fn info_table_lists_every_feature() {
    let out = squall(&["info"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("squall {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for feature in [
        "persistence",
        "groups",
        "redelivery",
        "request_reply",
        "headers",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(feature) && l.ends_with("native")),
            "no `{feature} ... native` row in:\n{text}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = squall(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-command"));
}
