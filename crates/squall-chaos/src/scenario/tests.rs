//! Scenario parsing: the format, and errors that name the key to fix.

use super::*;
use crate::proxy::{Direction, FaultKind};
use crate::rules::{Fault, PartitionMode, Point};

const OK: &str = r#"
    name = "t"
    [target]
    kind = "server"
    [[phase]]
    name = "a"
    duration = "2s"
    actions = ["kill9"]
"#;

fn err(text: &str) -> String {
    Scenario::parse(text, "t.toml").unwrap_err().to_string()
}

#[test]
fn a_scenario_parses_and_bad_ones_name_the_key() {
    let s = Scenario::parse(OK, "t.toml").unwrap();
    assert_eq!(s.timeline(), Duration::from_secs(2));
    assert_eq!(s.phases[0].actions, vec![Action::Kill9]);
    assert_eq!(s.workload, Workload::default());
    assert_eq!(s.proxies(), None);

    let e = err(&OK.replace("\"server\"", "\"url\""));
    assert!(e.contains("target.url"), "{e}");
    let e = err(&OK.replace("duration = \"2s\"", "duration = \"2s\"\nbogus = 1"));
    assert!(e.contains("bogus"), "{e}");
    let e = err(&OK.replace("kill9", "explode"));
    assert!(e.contains("explode"), "{e}");
}

const FAULTY: &str = r#"
    name = "faulty"
    [target]
    kind = "server"
    [workload]
    poison = 0.05
    max_deliveries = 3
    [proxy]
    producers = true
    consumers = false
    [[phase]]
    name = "lossy"
    duration = "1s"
    [[phase.rule]]
    name = "lose"
    point = "publish"
    groups = ["producers"]
    probability = 0.2
    fault = { kind = "drop" }
    [[phase.rule]]
    name = "late-confirm"
    point = "publish-confirm"
    fault = { kind = "delay", dist = "fixed", delay = "5ms" }
    [[phase.rule]]
    name = "shuffle"
    point = "deliver"
    fault = { kind = "reorder", count = 4, max_wait = "20ms" }
    [[phase.rule]]
    name = "cut"
    point = "ack"
    groups = ["workers"]
    fault = { kind = "partition", mode = "hang" }
    [[phase.proxy]]
    side = "producers"
    direction = "upstream"
    fault = { kind = "latency", latency = "50ms", jitter = "10ms" }
    [[phase.proxy]]
    side = "producers"
    fault = { kind = "down" }
    [[criteria.phase]]
    name = "lossy"
    min_delivered = 0.9
    p99_latency = "1s"
"#;

#[test]
fn phases_carry_message_rules_and_proxy_faults() {
    let s = Scenario::parse(FAULTY, "t.toml").unwrap();
    let p = &s.phases[0];
    assert!(p.has_faults());
    let kinds: Vec<_> = p.rules.iter().map(|r| (r.point, r.fault.name())).collect();
    assert_eq!(
        kinds,
        [
            (Point::Publish, "drop"),
            (Point::Confirm, "delay"),
            (Point::Deliver, "hold"),
            (Point::Ack, "partition")
        ]
    );
    assert_eq!(p.rules[0].groups, ["producers"]);
    assert_eq!(
        p.rules[3].fault,
        Fault::Partition {
            mode: PartitionMode::Hang
        }
    );
    assert_eq!(p.proxy[0].side, Side::Producers);
    assert_eq!(p.proxy[0].direction, Direction::Upstream);
    assert_eq!(
        p.proxy[0].fault,
        ProxyAction::Fault(FaultKind::Latency {
            latency: Duration::from_millis(50),
            jitter: Duration::from_millis(10),
        })
    );
    assert_eq!(p.proxy[1].fault, ProxyAction::Down);
    assert_eq!(p.proxy[0].label(), "producers latency upstream");
    assert_eq!(
        s.proxies(),
        Some(ProxyConfig {
            producers: true,
            consumers: false
        })
    );
    assert_eq!(s.workload.max_deliveries, Some(3));
    assert_eq!(s.criteria.phase[0].min_delivered, Some(0.9));
}

#[test]
fn bad_rules_and_proxy_faults_are_refused_naming_the_key() {
    let cases = [
        // (replace, with, expected in the message)
        (
            "probability = 0.2",
            "probability = 0.2\nchance = 1",
            "chance",
        ),
        ("kind = \"drop\"", "kind = \"drop\", rate = 2", "rate"),
        ("kind = \"drop\"", "kind = \"vanish\"", "vanish"),
        ("point = \"publish\"", "point = \"sideways\"", "sideways"),
        ("probability = 0.2", "probability = 1.5", "probability"),
        (
            "dist = \"fixed\", delay",
            "dist = \"fixed\", dleay",
            "dleay",
        ),
        ("count = 4", "count = 0", "count"),
        ("jitter = \"10ms\"", "jitter = \"10ms\", jiter = 1", "jiter"),
        (
            "kind = \"down\"",
            "kind = \"down\", latency = \"1s\"",
            "latency",
        ),
        ("kind = \"down\"", "kind = \"explode\"", "explode"),
        (
            "side = \"producers\"\n    fault = { kind = \"down\" }",
            "side = \"consumers\"\n    fault = { kind = \"down\" }",
            "proxy",
        ),
        ("name = \"cut\"", "name = \"lose\"", "phase.rule.name"),
        ("poison = 0.05", "poison = 5", "workload.poison"),
        (
            "min_delivered = 0.9",
            "min_delivered = 0.9\nname2 = 1",
            "name2",
        ),
        (
            "name = \"lossy\"\n    min_delivered",
            "name = \"nope\"\n    min_delivered",
            "criteria.phase.name",
        ),
    ];
    for (from, to, key) in cases {
        assert!(FAULTY.contains(from), "test case does not apply: {from}");
        let e = match Scenario::parse(&FAULTY.replacen(from, to, 1), "t.toml") {
            Ok(_) => panic!("replacing `{from}` by `{to}` was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(key), "replacing `{from}` by `{to}`: {e}");
    }
    // A rule in a phase may not have a window of its own: the phase is its window.
    let e = err(&FAULTY.replace(
        "name = \"lose\"",
        "name = \"lose\"\n    window = { phase = \"other\" }",
    ));
    assert!(e.contains("phase.rule.window"), "{e}");
    // Lie-drop means nothing at deliver.
    let e = err(&FAULTY.replace(
        "kind = \"reorder\", count = 4, max_wait = \"20ms\"",
        "kind = \"lie_drop\"",
    ));
    assert!(e.contains("lie_drop") && e.contains("phase.rule"), "{e}");
    // A bandwidth of zero.
    let e = err(&FAULTY.replace(
        "kind = \"latency\", latency = \"50ms\", jitter = \"10ms\"",
        "kind = \"bandwidth\", bytes_per_sec = 0",
    ));
    assert!(e.contains("bytes_per_sec"), "{e}");
}

#[test]
fn proxy_steps_put_both_sides_behind_proxies_unless_told_otherwise() {
    let text = FAULTY.replace("[proxy]\n    producers = true\n    consumers = false\n", "");
    let s = Scenario::parse(&text, "t.toml").unwrap();
    assert_eq!(s.proxies(), Some(ProxyConfig::default()));
}

#[test]
fn quick_versions_scale_phases_counts_and_confirm_floors() {
    let s = Scenario::parse(
        &OK.replace(
            "[target]",
            "[workload]\ncount = 9000\n[criteria]\nmin_confirmed = 8900\n[target]",
        ),
        "t.toml",
    )
    .unwrap()
    .scaled(1.0 / 3.0);
    assert_eq!(s.workload.count, 3000);
    assert_eq!(s.criteria.min_confirmed, Some(2967));
    assert_eq!(
        s.phases[0].duration,
        Duration::from_secs(2).mul_f64(1.0 / 3.0)
    );
}

#[test]
fn every_shipped_scenario_parses_and_says_what_it_shows() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let s = Scenario::parse(&text, &path.display().to_string()).unwrap();
        assert!(
            text.starts_with("# ") && text.contains("Success"),
            "{} must start with a comment saying what it shows and its success criteria",
            path.display()
        );
        assert_eq!(
            path.file_stem().unwrap().to_str().unwrap(),
            s.name,
            "file named after its scenario"
        );
        assert_eq!(
            s.criteria.max_lost,
            Some(0),
            "{}: every shipped scenario checks that nothing confirmed is lost",
            s.name
        );
        n += 1;
    }
    assert!(n >= 8, "only {n} scenarios shipped");
}

#[test]
fn the_documented_example_is_a_valid_scenario() {
    let source = include_str!("../scenario.rs");
    let example: String = source
        .lines()
        .skip_while(|l| !l.starts_with("//! ```toml"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
        .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
        .collect();
    let s = Scenario::parse(&example, "module docs").unwrap();
    assert_eq!(s.name, "loss-resilience");
    assert_eq!(s.phases[1].rules.len(), 1);
    assert_eq!(s.phases[1].proxy.len(), 1);
}

#[test]
fn external_targets_need_a_url_and_the_commands_their_faults_use() {
    let ext = r#"
    name = "t"
    [target]
    kind = "external"
    url = "nats://127.0.0.1:4222"
    start = "svc start"
    stop = "svc stop"
    [[phase]]
    name = "a"
    duration = "2s"
    actions = ["kill9"]
"#;
    let s = Scenario::parse(ext, "t.toml").unwrap();
    assert_eq!(s.target.kind, TargetKind::External);
    assert_eq!(s.target.timeout, Duration::from_secs(60));
    let e = err(&ext.replace("url = \"nats://127.0.0.1:4222\"\n", ""));
    assert!(e.contains("target.url"), "{e}");
    let e = err(&ext.replace("start = \"svc start\"\n", ""));
    assert!(e.contains("target.start"), "{e}");
    let e = err(&ext
        .replace("start = \"svc start\"\n", "")
        .replace("stop = \"svc stop\"\n", ""));
    assert!(e.contains("target.start") && e.contains("kill9"), "{e}");
    let e = err(&ext.replace("kill9", "pause"));
    assert!(e.contains("target.pause"), "{e}");
    let paused = ext.replace("kill9", "pause").replace(
        "stop = \"svc stop\"",
        "stop = \"svc stop\"\npause = \"p\"\nresume = \"r\"\nready = \"none\"",
    );
    Scenario::parse(&paused, "t.toml").unwrap();
    let e = err(&ext.replace(
        "stop = \"svc stop\"",
        "stop = \"svc stop\"\nready = \"soon\"",
    ));
    assert!(e.contains("target.ready"), "{e}");
    let e = err(&OK.replace("kind = \"server\"", "kind = \"server\"\nstart = \"x\""));
    assert!(e.contains("target.kind"), "{e}");
}
