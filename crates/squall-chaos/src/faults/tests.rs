use std::sync::Mutex as StdMutex;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use squall_core::{Message, Subject};

use super::*;
use crate::rules::{Hold, PartitionMode, Point};

/// Runs `n` decisions at alternating points on a lab registry with a mixed rule set and returns
/// the verdict sequence.
fn schedule(seed: u64, n: usize) -> Vec<Verdict> {
    let f = Faults::new(Seed::new(seed));
    let ms = Duration::from_millis;
    f.install(Rule::new("drop", Point::Publish, Fault::Drop).probability(0.2))
        .unwrap();
    f.install(
        Rule::new(
            "delay",
            Point::Publish,
            Fault::Delay(DelayDist::uniform(ms(1), ms(9))),
        )
        .probability(0.3),
    )
    .unwrap();
    f.install(Rule::new("corrupt", Point::Deliver, Fault::Corrupt).probability(0.25))
        .unwrap();
    f.install(
        Rule::new(
            "hold",
            Point::Deliver,
            Fault::Hold {
                count: 3,
                max_wait: ms(10),
            },
        )
        .probability(0.25),
    )
    .unwrap();
    (0..n)
        .map(|i| {
            let p = if i % 2 == 0 {
                Point::Publish
            } else {
                Point::Deliver
            };
            f.decide(&Site::new(p))
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_fault_schedule_twice() {
    let a = schedule(0x5eed, 400);
    let b = schedule(0x5eed, 400);
    assert_eq!(a, b, "same seed and decisions must give the same verdicts");
    let fired = a.iter().filter(|v| **v != Verdict::Pass).count();
    assert!(
        (100..300).contains(&fired),
        "the schedule should mix faults and passes, fired {fired}/400"
    );
    let c = schedule(0x5eee, 400);
    assert_ne!(a, c, "a different seed must give a different schedule");
}

#[test]
fn adding_a_rule_does_not_change_another_rules_schedule() {
    let run = |extra: bool| -> Vec<Verdict> {
        let f = Faults::new(Seed::new(9));
        // The extra rule is installed *first* and fires often, so it wins the verdict whenever
        // it fires; the drop rule's own draws must be unaffected.
        if extra {
            f.install(Rule::new("noise", Point::Ack, Fault::Duplicate).probability(0.5))
                .unwrap();
        }
        f.install(Rule::new("drop", Point::Ack, Fault::Drop).probability(0.3))
            .unwrap();
        (0..300).map(|_| f.decide(&Site::new(Point::Ack))).collect()
    };
    let alone = run(false);
    let with_noise = run(true);
    for (i, (a, b)) in alone.iter().zip(&with_noise).enumerate() {
        if *a == Verdict::Drop {
            assert!(
                *b == Verdict::Drop || *b == Verdict::Duplicate,
                "decision {i}: drop fired alone but the run with another rule gave {b:?}"
            );
        }
        if *b == Verdict::Drop {
            assert_eq!(
                *a,
                Verdict::Drop,
                "decision {i}: drop fired only beside the other rule"
            );
        }
    }
}

#[test]
fn guards_remove_their_rule_and_names_are_unique() {
    let f = Faults::new(Seed::new(1));
    let g = f.add(Rule::new("a", Point::Confirm, Fault::Drop)).unwrap();
    let dup = f
        .add(Rule::new("a", Point::Confirm, Fault::Drop))
        .unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Conflict);
    assert_eq!(f.decide(&Site::new(Point::Confirm)), Verdict::Drop);
    drop(g);
    assert!(f.rules().is_empty(), "dropping the guard must uninstall");
    f.add(Rule::new("b", Point::Confirm, Fault::Drop))
        .unwrap()
        .forget();
    assert_eq!(f.rules().len(), 1, "a forgotten guard leaves the rule");
    assert!(f.remove_named("b"));
    assert!(!f.remove_named("b"));
    let bad = f
        .add(Rule::new("c", Point::Connect, Fault::Corrupt))
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidConfig);
}

#[test]
fn production_preset_is_off_until_enabled_then_fires_about_one_percent() {
    let f = Faults::production(Seed::new(3));
    let site = Site::new(Point::Publish).group(Some("checkout"));
    assert!(!f.is_enabled());
    assert!(
        (0..1000).all(|_| f.decide(&site) == Verdict::Pass),
        "disabled must never inject"
    );
    f.enable();
    let n = 20_000;
    let fired = (0..n).filter(|_| f.decide(&site) != Verdict::Pass).count();
    // 1 % of 20 000 = 200; a binomial's 4.5 sigma is about 63.
    assert!(
        (137..=263).contains(&fired),
        "expected about 1 % injected, got {fired}/{n}"
    );
    assert_eq!(
        f.decide_where(&site, |_| false),
        Verdict::Pass,
        "a filter excluding all rules passes"
    );

    f.set_targets(["billing"]);
    f.set_rate(1.0).unwrap();
    assert_eq!(
        f.decide(&site),
        Verdict::Pass,
        "a group outside the targets is spared"
    );
    let billing = Site::new(Point::Publish).group(Some("billing"));
    assert_eq!(f.decide(&billing), Verdict::Error(ErrorKind::Unavailable));
    assert!(f.set_rate(1.5).is_err());
    assert_eq!(f.state().targets, vec!["billing".to_string()]);
}

#[test]
fn the_log_records_injections_and_stays_bounded() {
    let f = Faults::new(Seed::new(5));
    f.set_clock(|| Timestamp(42));
    f.install(
        Rule::new("dup", Point::Deliver, Fault::Duplicate)
            .group("g")
            .limit(5),
    )
    .unwrap();
    let subject = Subject::new("orders.1").unwrap();
    let msg = Message::new(subject, "x");
    for _ in 0..10 {
        f.decide(&Site::new(Point::Deliver).message(&msg).group(Some("g")));
    }
    assert_eq!(f.injected(), 5, "the limit caps injections");
    let ev = f.events();
    assert_eq!(ev.len(), 5);
    assert_eq!(ev[0].at, Timestamp(42));
    assert_eq!(ev[0].fault, "duplicate");
    assert_eq!(ev[0].rule, "dup");
    assert_eq!(ev[0].subject.as_deref(), Some("orders.1"));
    assert_eq!(ev[0].message_id.as_deref(), Some(msg.id().as_str()));
    f.set_log_capacity(2);
    assert_eq!(f.events().len(), 2);
    assert_eq!(f.dropped_events(), 3);
    assert_eq!(f.take_events().len(), 2);
    assert!(f.events().is_empty());
}

#[test]
fn phases_switch_rules_on_and_off() {
    let f = Faults::new(Seed::new(5));
    f.install(
        Rule::new(
            "p",
            Point::Publish,
            Fault::Partition {
                mode: PartitionMode::Hang,
            },
        )
        .phase("cut"),
    )
    .unwrap();
    let site = Site::new(Point::Publish);
    assert!(!f.is_partitioned(&site));
    f.set_phase(Some("cut"));
    assert!(f.is_partitioned(&site));
    assert_eq!(f.decide(&site), Verdict::Partition(PartitionMode::Hang));
    f.disable();
    assert!(!f.is_partitioned(&site), "disabling heals");
    f.enable();
    f.heal();
    assert!(!f.is_partitioned(&site) && f.rules().is_empty());
}

#[tokio::test(start_paused = true)]
async fn wait_healed_returns_when_the_partition_is_removed() {
    let f = Faults::new(Seed::new(5));
    let id = f
        .install(Rule::new(
            "p",
            Point::Deliver,
            Fault::Partition {
                mode: PartitionMode::Hang,
            },
        ))
        .unwrap();
    let f2 = f.clone();
    let waiter = tokio::spawn(async move { f2.wait_healed(&Site::new(Point::Deliver)).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiter.is_finished(), "must hang while partitioned");
    f.remove(id);
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("healed")
        .unwrap();
}

#[test]
fn hold_verdicts_carry_their_parameters() {
    let f = Faults::new(Seed::new(11));
    f.install(Rule::new(
        "h",
        Point::Publish,
        Fault::Hold {
            count: 4,
            max_wait: Duration::from_millis(7),
        },
    ))
    .unwrap();
    match f.decide(&Site::new(Point::Publish)) {
        Verdict::Hold(Hold {
            count, max_wait, ..
        }) => {
            assert_eq!((count, max_wait), (4, Duration::from_millis(7)));
        }
        v => panic!("expected a hold, got {v:?}"),
    }
}

/// Counts `chaos_injected_total` increments per label set.
#[derive(Default)]
struct CountingRecorder(Arc<StdMutex<Vec<(String, u64)>>>);

struct Cell(Arc<StdMutex<Vec<(String, u64)>>>, String);

impl metrics::CounterFn for Cell {
    fn increment(&self, v: u64) {
        self.0.lock().unwrap().push((self.1.clone(), v));
    }
    fn absolute(&self, _: u64) {}
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Counter::from_arc(Arc::new(Cell(
            self.0.clone(),
            format!("{}{{{}}}", key.name(), labels.join(",")),
        )))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn every_injection_increments_the_metric() {
    let rec = CountingRecorder::default();
    let seen = rec.0.clone();
    let f = Faults::new(Seed::new(5));
    f.install(Rule::new("d", Point::Ack, Fault::Drop)).unwrap();
    metrics::with_local_recorder(&rec, || {
        f.decide(&Site::new(Point::Ack).group(Some("billing")));
        f.decide(&Site::new(Point::Publish));
    });
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        vec![(
            "chaos_injected_total{point=ack,fault=drop,group=billing}".to_string(),
            1
        )],
        "one injection, one increment with its labels; passes are not counted"
    );
}

#[test]
fn restart_verdicts_are_counted_like_the_others() {
    let rec = CountingRecorder::default();
    let seen = rec.0.clone();
    let f = Faults::new(Seed::new(6));
    let _able = f.reopener();
    f.install(Rule::new(
        "bounce",
        Point::Deliver,
        Fault::Restart {
            downtime: Duration::from_millis(250),
        },
    ))
    .unwrap();
    let v = metrics::with_local_recorder(&rec, || {
        f.decide(&Site::new(Point::Deliver).group(Some("billing")))
    });
    assert_eq!(v, Verdict::Restart(Duration::from_millis(250)));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(
            "chaos_injected_total{point=deliver,fault=restart,group=billing}".to_string(),
            1
        )]
    );
    assert_eq!(f.events()[0].detail.as_deref(), Some("down 250ms"));
}
