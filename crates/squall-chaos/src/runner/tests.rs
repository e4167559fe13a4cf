//! The phases' fault machinery over the embedded broker, under tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use squall_broker::Broker;
use squall_core::{Backend, Message, Publisher, Subscriber, Subscription};

use super::timeline::{self, Proxies};
use crate::chaos_backend::ChaosBackend;
use crate::faults::Faults;
use crate::rng::Seed;
use crate::scenario::Scenario;

/// Two phases with different rules, every kind of random choice among them: whether to fire,
/// delays drawn from distributions, the bit a corruption flips, the shuffle of a reorder.
const SCENARIO: &str = r#"
    name = "schedule"
    [target]
    kind = "server"

    [[phase]]
    name = "first"
    duration = "1s"
    [[phase.rule]]
    name = "lose"
    point = "publish"
    groups = ["producers"]
    probability = 0.3
    fault = { kind = "drop" }
    [[phase.rule]]
    name = "fail-confirm"
    point = "publish-confirm"
    probability = 0.2
    fault = { kind = "error", error = "timeout" }
    [[phase.rule]]
    name = "slow"
    point = "publish"
    probability = 0.3
    fault = { kind = "delay", dist = "uniform", min = "1ms", max = "20ms" }
    [[phase.rule]]
    name = "flip"
    point = "deliver"
    groups = ["billing"]
    probability = 0.2
    fault = { kind = "corrupt" }
    [[phase.rule]]
    name = "twice"
    point = "deliver"
    probability = 0.1
    fault = { kind = "duplicate" }

    [[phase]]
    name = "second"
    duration = "1s"
    [[phase.rule]]
    name = "shuffle"
    point = "publish"
    fault = { kind = "reorder", count = 3, max_wait = "10ms" }
    [[phase.rule]]
    name = "late"
    point = "deliver"
    probability = 0.5
    fault = { kind = "delay", dist = "normal", mean = "5ms", stddev = "2ms" }
"#;

/// One injection as the log has it: rule, fault, message, sampled detail.
type Injected = (String, &'static str, Option<String>, Option<String>);

/// Plays the scenario's phases with the runner's machinery over an embedded broker: 40
/// publishes per phase, then whatever the consumer receives, acked. Returns each phase's
/// injections and the order the consumer saw the messages in.
async fn play(seed: u64) -> (Vec<Vec<Injected>>, Vec<String>) {
    let s = Scenario::parse(SCENARIO, "schedule.toml").unwrap();
    let faults = Faults::new(Seed::new(seed));
    let broker: Arc<dyn Backend> = Arc::new(Broker::in_memory().unwrap());
    let producers = ChaosBackend::builder(broker.clone(), faults.clone())
        .label("producers")
        .build();
    let consumers = ChaosBackend::builder(broker, faults.clone())
        .label("consumers")
        .build();
    let sub = Subscription::new("orders.>")
        .unwrap()
        .group("billing")
        .unwrap()
        .ack_wait(Duration::from_secs(30));
    let mut c = consumers.subscribe(sub).await.unwrap();
    let proxies = Proxies::default();
    let mut windows = Vec::new();
    let mut per_phase = Vec::new();
    let mut seen = Vec::new();
    let mut n = 0;
    for phase in &s.phases {
        faults.set_phase(Some(&phase.name));
        let active = timeline::begin(phase, &faults, &proxies).await.unwrap();
        let mut confirms = Vec::new();
        for _ in 0..40 {
            n += 1;
            let m = Message::builder(format!("orders.{}", n % 4))
                .unwrap()
                .id(format!("m{n}"))
                .unwrap()
                .payload(format!("payload {n}"))
                .build();
            if let Ok(p) = producers.send(m).await {
                confirms.push(p);
            }
        }
        for p in confirms {
            let _ = p.await;
        }
        while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(1), c.next()).await {
            seen.push(d.message().id().to_string());
            let _ = d.ack().await;
        }
        active.end(&mut windows).await.unwrap();
        per_phase.push(
            faults
                .take_events()
                .into_iter()
                .map(|i| (i.rule, i.fault, i.message_id, i.detail))
                .collect(),
        );
    }
    assert_eq!(
        windows.len(),
        2,
        "each phase with faults records its window"
    );
    (per_phase, seen)
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_scenario_fault_schedule_twice() {
    let (a, seen_a) = play(0x5eed).await;
    let (b, seen_b) = play(0x5eed).await;
    assert_eq!(
        a, b,
        "same seed: same injections, same messages, same samples"
    );
    assert_eq!(
        seen_a, seen_b,
        "same seed: same deliveries in the same order"
    );

    // The rules are installed for their phase only, and every kind of draw happened.
    fn rules(phase: &[Injected]) -> Vec<&str> {
        let mut r: Vec<&str> = phase.iter().map(|i| i.0.as_str()).collect();
        r.sort_unstable();
        r.dedup();
        r
    }
    assert_eq!(
        rules(&a[0]),
        ["fail-confirm", "flip", "lose", "slow", "twice"]
    );
    assert_eq!(rules(&a[1]), ["late", "shuffle"]);
    assert!(
        a[1].iter().filter(|i| i.0 == "shuffle").count() == 40,
        "a reorder rule of probability 1 holds every publish"
    );

    let (c, _) = play(0x5eee).await;
    assert_ne!(a, c, "another seed: another schedule");
}

/// An external target over the embedded broker: its "commands" are `true` (the broker stays up:
/// what is exercised is the runner's path), its connector opens a broker handle and counts
/// what it opened.
fn embedded_external(
    url: &str,
) -> (
    super::target::ExternalTarget,
    Arc<std::sync::atomic::AtomicU32>,
) {
    let (connector, opened) = embedded_connector();
    let target = super::target::ExternalTarget::new(url, connector)
        .commands(crate::process::ExternalBroker::new("true", "true"));
    (target, opened)
}

/// A connector that opens a handle of one in-memory broker whatever the URL, and counts them.
fn embedded_connector() -> (super::target::Connector, Arc<std::sync::atomic::AtomicU32>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let broker = Broker::in_memory().unwrap();
    let opened = Arc::new(AtomicU32::new(0));
    let n = opened.clone();
    let connector: super::target::Connector = Arc::new(move |_url: &str| {
        n.fetch_add(1, Ordering::Relaxed);
        let h = broker.handle();
        Box::pin(async move { Ok(Arc::new(h) as Arc<dyn Backend>) })
    });
    (connector, opened)
}

/// Runs `s` on `target`, which must refuse it; the refusal's text.
async fn refusal(s: &Scenario, target: super::target::ExternalTarget) -> String {
    let opts = super::RunOptions {
        seed: Some(1),
        squall_bin: "squall".into(),
        progress: false,
        replay: String::new(),
        target: None,
    };
    super::run_on(s, &opts, Box::new(target))
        .await
        .unwrap_err()
        .to_string()
}

const EXTERNAL: &str = r#"
    name = "bounce"
    drain = "10s"
    [target]
    kind = "external"
    url = "mem://user:secret@embedded"
    start = "true"
    stop = "true"
    [workload]
    producers = 1
    consumers = 1
    rate = 400
    count = 400
    keys = 4
    [[phase]]
    name = "baseline"
    duration = "300ms"
    [[phase]]
    name = "bounce"
    duration = "400ms"
    actions = ["kill9"]
    [[phase.rule]]
    name = "bounce-consumers"
    point = "deliver"
    probability = 0.1
    limit = 2
    fault = { kind = "restart", downtime = "50ms" }
    [[phase]]
    name = "recover"
    duration = "300ms"
    actions = ["start"]
    [criteria]
    max_lost = 0
"#;

#[tokio::test]
async fn an_external_target_runs_a_scenario_with_restart_rules_and_process_faults() {
    use std::sync::atomic::Ordering;
    let s = Scenario::parse(EXTERNAL, "bounce.toml").unwrap();
    let (target, opened) = embedded_external("mem://user:secret@embedded");
    let opts = super::RunOptions {
        seed: Some(3),
        squall_bin: "squall".into(),
        progress: false,
        replay: "replay".into(),
        target: None,
    };
    let report = super::run_on(&s, &opts, Box::new(target)).await.unwrap();
    assert_eq!(report.findings.lost, 0, "{}", report.summary());
    assert!(report.pass, "{}", report.summary());
    assert_eq!(
        report.target, "mem://user:***@embedded (external broker; process faults by its commands)",
        "the report names the backend, without its password"
    );
    let restarts = report
        .injections
        .get("bounce-consumers: restart@deliver")
        .copied()
        .unwrap_or(0);
    assert!(restarts >= 1, "{:?}", report.injections);
    assert!(
        opened.load(Ordering::Relaxed) > 2,
        "producers and consumers connected, then the consumers reopened"
    );
    assert!(
        report.faults.iter().any(|w| w.name == "stop"),
        "the stop/start window is on the timeline: {:?}",
        report.faults
    );
}

#[tokio::test]
async fn an_external_target_without_commands_refuses_process_faults_by_name() {
    let s = Scenario::parse(EXTERNAL, "bounce.toml").unwrap();
    let (connector, _) = embedded_connector();
    let target = super::target::ExternalTarget::new("nats://127.0.0.1:1", connector).names(
        super::target::CommandNames {
            start: "--start",
            stop: "--stop",
            pause: "--pause",
            resume: "--resume",
        },
    );
    let text = refusal(&s, target).await;
    assert!(
        text.contains("--start") && text.contains("--stop") && text.contains("kill9, start"),
        "{text}"
    );
}

#[tokio::test]
async fn a_kafka_target_refuses_fault_proxy_scenarios_instead_of_cutting_only_the_bootstrap() {
    let s = Scenario::parse(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scenarios/partition-producers.toml"
        ))
        .unwrap(),
        "partition-producers.toml",
    )
    .unwrap();
    assert!(s.proxies().is_some(), "the scenario has proxy faults");
    let (connector, _) = embedded_connector();
    let target = super::target::ExternalTarget::new("kafka://127.0.0.1:9092", connector);
    let text = refusal(&s, target).await;
    assert!(
        text.contains("advertised listener") && text.contains("--front"),
        "{text}"
    );
}

#[test]
fn isolated_scenarios_rename_the_subjects_first_token_everywhere() {
    let mut s = Scenario::parse(EXTERNAL, "bounce.toml").unwrap();
    s.phases[1].rules[0].subject = Some(squall_core::Pattern::new("chaos.orders.>").unwrap());
    let i = s.isolated("ab12");
    assert_eq!(i.workload.subject, "chaos-ab12.orders");
    assert_eq!(
        i.phases[1].rules[0].subject.as_ref().unwrap().as_str(),
        "chaos-ab12.orders.>"
    );
    assert_eq!(
        i.workload.groups, s.workload.groups,
        "groups keep their names"
    );
}
