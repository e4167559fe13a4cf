//! The checker on hand-made event logs.

use super::*;

const S: u64 = 1_000_000_000;
fn t(ms: u64) -> Timestamp {
    Timestamp(1_000 * S + ms * 1_000_000)
}
fn stamp(p: u32, seq: u64, at: u64) -> Stamp {
    Stamp {
        producer: p,
        seq,
        sent: t(at),
        checksum: 0,
    }
}
fn sent(p: u32, seq: u64, at: u64, key: &str) -> Event {
    Event::Sent {
        stamp: stamp(p, seq, at),
        at: t(at),
        key: Some(key.into()),
        delay: None,
    }
}
fn confirmed(p: u32, seq: u64, at: u64, stream_seq: u64) -> Event {
    Event::Confirmed {
        msg: (p, seq),
        at: t(at),
        stream_seq,
        duplicate: false,
    }
}
fn received(p: u32, seq: u64, consumer: u32, at: u64, stream_seq: u64) -> Event {
    Event::Received {
        msg: (p, seq),
        consumer,
        group: "g".into(),
        at: t(at),
        attempt: 1,
        stream_seq,
        published_at: t(at.saturating_sub(1)),
        deadline: t(at + 30_000),
        intact: true,
    }
}
fn acked(p: u32, seq: u64, consumer: u32, at: u64, stream_seq: u64) -> Event {
    Event::Acked {
        msg: (p, seq),
        consumer,
        group: "g".into(),
        at: t(at),
        stream_seq,
        ok: true,
    }
}
fn groups() -> Vec<String> {
    vec!["g".into()]
}

#[test]
fn a_clean_run_has_nothing_to_report() {
    let mut ev = vec![Event::Phase {
        name: "baseline".into(),
        at: t(0),
    }];
    for i in 1..=10 {
        ev.push(sent(1, i, i * 10, "k"));
        ev.push(confirmed(1, i, i * 10 + 1, i));
        ev.push(received(1, i, 1, i * 10 + 2, i));
        ev.push(acked(1, i, 1, i * 10 + 3, i));
    }
    let f = check(&ev, &groups(), t(0));
    assert_eq!(
        (
            f.sent,
            f.confirmed,
            f.lost,
            f.duplicates,
            f.reorders,
            f.corrupt,
            f.two_holders
        ),
        (10, 10, 0, 0, 0, 0, 0)
    );
    assert_eq!(f.phases[0].delivered, 10);
    assert_eq!(f.end_to_end.count, 10);
    assert!(
        (f.end_to_end.p50_ms - 2.0).abs() < 0.1,
        "{:?}",
        f.end_to_end
    );
}

#[test]
fn confirmed_but_never_delivered_is_lost_and_unconfirmed_delivery_is_not() {
    let ev = vec![
        sent(1, 1, 0, "k"),
        confirmed(1, 1, 1, 1),
        sent(1, 2, 2, "k"),
        Event::Failed {
            msg: (1, 2),
            at: t(3),
            error: "timeout".into(),
        },
        received(1, 2, 1, 4, 2),
    ];
    let f = check(&ev, &groups(), t(0));
    assert_eq!((f.lost, f.failed, f.unconfirmed_delivered), (1, 1, 1));
    assert_eq!(f.lost_sample, vec![(1, 1)]);
}

#[test]
fn deliveries_after_an_ack_are_duplicates_split_by_stored_copy() {
    let ev = vec![
        sent(1, 1, 0, "k"),
        confirmed(1, 1, 1, 1),
        received(1, 1, 1, 2, 1),
        received_attempt(1, 1, 3, 2), // redelivery before ack: expected under faults
        received_attempt(1, 1, 4, 2), // the same attempt handed over twice
        acked(1, 1, 1, 5, 1),
        received_attempt(1, 1, 6, 3), // same copy redelivered after its ack: an anomaly
        received(1, 1, 2, 7, 9),      // a second stored copy
    ];
    let f = check(&ev, &groups(), t(0));
    assert_eq!(
        (
            f.redeliveries,
            f.duplicates,
            f.redelivered_after_ack,
            f.stored_twice,
            f.delivered_twice
        ),
        (1, 3, 1, 1, 1)
    );
}

#[test]
fn out_of_order_first_deliveries_per_key_are_reorders() {
    let ev = vec![
        sent(1, 1, 0, "a"),
        sent(1, 2, 0, "a"),
        sent(1, 3, 0, "b"),
        received(1, 2, 1, 1, 2),
        received(1, 1, 1, 2, 1), // older than 2 on key a
        received(1, 3, 1, 3, 3), // key b on its own
    ];
    assert_eq!(check(&ev, &groups(), t(0)).reorders, 1);
}

#[test]
fn overlapping_holders_corruption_and_early_delays_are_counted() {
    let mut ev = vec![
        Event::Sent {
            stamp: stamp(1, 1, 0),
            at: t(0),
            key: None,
            delay: Some(Duration::from_secs(10)),
        },
        received(1, 1, 1, 100, 1), // holds until 30.1 s
        received(1, 1, 2, 200, 1), // second holder while the first lease is live
    ];
    ev.push(Event::Unreadable {
        consumer: 3,
        at: t(300),
    });
    let f = check(&ev, &groups(), t(0));
    assert_eq!(f.two_holders, 1);
    assert_eq!(
        f.delay_early, 2,
        "delivered 0.1 s and 0.2 s after storing, 10 s delay"
    );
    assert_eq!(f.corrupt, 1);

    // A holder that acked is no longer holding.
    let ev = vec![
        sent(1, 1, 0, "k"),
        received(1, 1, 1, 10, 1),
        acked(1, 1, 1, 20, 1),
        received(1, 1, 2, 30, 1),
    ];
    assert_eq!(check(&ev, &groups(), t(0)).two_holders, 0);
}

#[test]
fn phases_count_by_send_time_and_recovery_is_measured_from_healing() {
    let mut ev = vec![Event::Phase {
        name: "pre".into(),
        at: t(0),
    }];
    let mut seq = 0;
    let mut emit = |ev: &mut Vec<Event>, from_s: u64, to_s: u64, deliver: bool| {
        for s in from_s..to_s {
            for i in 0..10 {
                seq += 1;
                let at = s * 1000 + i * 100;
                ev.push(sent(1, seq, at, "k"));
                ev.push(confirmed(1, seq, at + 1, seq));
                if deliver {
                    ev.push(received(1, seq, 1, at + 2, seq));
                    ev.push(acked(1, seq, 1, at + 3, seq));
                }
            }
        }
    };
    emit(&mut ev, 0, 3, true);
    ev.push(Event::Phase {
        name: "during".into(),
        at: t(3000),
    });
    ev.push(Event::Fault {
        name: "partition".into(),
        start: t(3000),
        end: Some(t(5000)),
    });
    emit(&mut ev, 3, 5, false);
    ev.push(Event::Phase {
        name: "post".into(),
        at: t(5000),
    });
    emit(&mut ev, 5, 8, true);
    let f = check(&ev, &groups(), t(0));
    let names: Vec<_> = f
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.sent, p.delivered, p.lost))
        .collect();
    assert_eq!(
        names,
        [
            ("pre", 30, 30, 0),
            ("during", 20, 0, 20),
            ("post", 30, 30, 0)
        ]
    );
    assert_eq!(f.lost, 20);
    let r = &f.recoveries[0];
    assert_eq!(r.fault, "partition");
    assert_eq!(
        r.recovery, None,
        "the 20 lost messages keep the lag above baseline for good"
    );
}

fn rejected(p: u32, seq: u64, at: u64, stream_seq: u64) -> Event {
    Event::Rejected {
        msg: (p, seq),
        consumer: 1,
        group: "g".into(),
        at: t(at),
        stream_seq,
        ok: true,
    }
}
fn dead(p: u32, seq: u64, at: u64, dlq_seq: u64) -> Event {
    Event::DeadLettered {
        msg: (p, seq),
        group: "g".into(),
        reason: "rejected".into(),
        at: t(at),
        origin_seq: seq,
        dlq_seq,
    }
}
fn received_attempt(p: u32, seq: u64, at: u64, attempt: u32) -> Event {
    match received(p, seq, 1, at, seq) {
        Event::Received {
            msg,
            consumer,
            group,
            at,
            stream_seq,
            published_at,
            deadline,
            intact,
            ..
        } => Event::Received {
            msg,
            consumer,
            group,
            at,
            attempt,
            stream_seq,
            published_at,
            deadline,
            intact,
        },
        _ => unreachable!(),
    }
}

#[test]
fn rejected_and_exhausted_messages_must_be_dead_lettered_exactly_once() {
    let mut ev = Vec::new();
    for seq in 1..=5 {
        ev.push(sent(1, seq, 0, "k"));
        ev.push(confirmed(1, seq, 1, seq));
    }
    // 1: rejected, dead-lettered once. 2: rejected, dead-lettered twice (two stored copies;
    // the observer's redelivery of copy 10 is not a second copy). 3: rejected, never in the DLQ.
    ev.extend([
        received(1, 1, 1, 10, 1),
        rejected(1, 1, 11, 1),
        dead(1, 1, 12, 9),
        received(1, 2, 1, 10, 2),
        rejected(1, 2, 11, 2),
        dead(1, 2, 12, 10),
        dead(1, 2, 13, 10),
        dead(1, 2, 14, 11),
        received(1, 3, 1, 10, 3),
        rejected(1, 3, 11, 3),
    ]);
    // 4: received at its last allowed attempt and never settled: must be dead-lettered; it is
    // not. 5: never seen by the consumer, but dead-lettered: reached its group, not lost.
    ev.extend([received_attempt(1, 4, 10, 3), dead(1, 5, 20, 12)]);
    let f = check_with(&ev, &groups(), Some(3), t(0));
    assert_eq!(f.rejected, 3);
    assert_eq!(f.dead_lettered, 3, "messages 1, 2 and 5");
    assert_eq!(f.dlq_duplicates, 1, "message 2 stored twice in the DLQ");
    assert_eq!(f.dlq_missing, 2, "message 3 (rejected) and 4 (exhausted)");
    assert_eq!(
        f.dlq_missing_sample,
        [("g".to_string(), 1, 3), ("g".to_string(), 1, 4)]
    );
    assert_eq!(f.lost, 0, "every message reached its group or its DLQ");

    // Without a delivery limit an unsettled delivery is not expected in the DLQ.
    assert_eq!(check(&ev, &groups(), t(0)).dlq_missing, 1);
    // A settle after the last attempt clears the expectation.
    ev.push(acked(1, 4, 1, 15, 4));
    assert_eq!(check_with(&ev, &groups(), Some(3), t(0)).dlq_missing, 1);
}

#[test]
fn unconfirmed_messages_are_accounted_for_or_counted() {
    let ev = vec![
        sent(1, 1, 0, "k"),
        confirmed(1, 1, 1, 1),
        sent(1, 2, 0, "k"),
        Event::Failed {
            msg: (1, 2),
            at: t(5),
            error: "unavailable".into(),
        },
        sent(1, 3, 0, "k"), // neither confirmed nor failed
        received(1, 1, 1, 10, 1),
        received(1, 2, 1, 11, 2), // failed at the producer, delivered anyway
    ];
    let f = check(&ev, &groups(), t(0));
    assert_eq!(
        (f.failed, f.unaccounted, f.unconfirmed_delivered),
        (1, 1, 1)
    );
}

#[test]
fn phases_count_deliveries_received_during_them_and_their_latency() {
    let ev = vec![
        Event::Phase {
            name: "pre".into(),
            at: t(0),
        },
        sent(1, 1, 100, "k"),
        confirmed(1, 1, 110, 1),
        Event::Phase {
            name: "during".into(),
            at: t(1000),
        },
        sent(1, 2, 1100, "k"),
        confirmed(1, 2, 1110, 2),
        received(1, 1, 1, 1200, 1), // sent in pre, received during: 1.1 s
        Event::Phase {
            name: "post".into(),
            at: t(2000),
        },
        received(1, 2, 1, 2100, 2), // sent during, received in post: 1 s
    ];
    let f = check(&ev, &groups(), t(0));
    let got: Vec<_> = f
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.sent, p.delivered, p.received))
        .collect();
    assert_eq!(
        got,
        [("pre", 1, 1, 0), ("during", 1, 1, 1), ("post", 0, 0, 1)]
    );
    assert!(
        (f.phases[0].p99_ms - 1100.0).abs() < 2.0,
        "{:?}",
        f.phases[0]
    );
    assert!(
        (f.phases[1].p99_ms - 1000.0).abs() < 2.0,
        "{:?}",
        f.phases[1]
    );
    assert_eq!(
        f.phases[2].delivered_fraction, 1.0,
        "nothing sent: nothing missing"
    );
}

#[test]
fn a_backlog_drained_in_the_second_the_load_ends_is_a_recovery() {
    // The shape of broker-kill's quick run: 100 msg/s, the broker down from 2.0 s to 2.5 s, what
    // was sent meanwhile delivered at 3.5 s, 30 of the next second's sends held behind a lease
    // until 4.2 s, and the last two sends at 4.00 s and 4.01 s (so second 4 is partial).
    let mut ev = vec![Event::Phase {
        name: "base".into(),
        at: t(0),
    }];
    let mut seq = 0;
    let mut send = |ev: &mut Vec<Event>, at: u64, delivered: u64| {
        seq += 1;
        ev.push(sent(1, seq, at, "k"));
        ev.push(confirmed(1, seq, at + 1, seq));
        ev.push(received(1, seq, 1, delivered, seq));
    };
    for i in 0..400u64 {
        let at = i * 10;
        let delivered = match at {
            2000..3000 => 3500,
            3000..3300 => 4200,
            _ => at + 2,
        };
        send(&mut ev, at, delivered);
    }
    send(&mut ev, 4000, 4200);
    send(&mut ev, 4010, 4200);
    ev.push(Event::Fault {
        name: "kill -9".into(),
        start: t(2000),
        end: Some(t(2500)),
    });
    ev.sort_by_key(Event::time);
    let f = check(&ev, &groups(), t(0));
    let last = f.timeline.last().unwrap();
    assert_eq!((last.t, last.sent, last.delivered, last.lag), (4, 2, 32, 0));
    assert_eq!(
        f.recoveries[0].recovery,
        Some(Duration::from_millis(2500)),
        "second 4 ends with nothing outstanding; its low rate is the load ending"
    );
}

#[test]
fn every_fault_window_gets_a_recovery_entry_and_chains_are_measured_at_their_end() {
    let mut ev = vec![Event::Phase {
        name: "base".into(),
        at: t(0),
    }];
    let mut seq = 0;
    for s in 0..12u64 {
        for i in 0..10 {
            seq += 1;
            let at = s * 1000 + i * 100;
            ev.push(sent(1, seq, at, "k"));
            ev.push(confirmed(1, seq, at + 1, seq));
            // Degraded from 2 s to 6 s: deliveries stall and arrive in a burst at 6.5 s.
            let when = if (2..6).contains(&s) { 6_500 } else { at + 2 };
            ev.push(received(1, seq, 1, when, seq));
        }
    }
    for (name, from, to) in [("slow", 2000, 4000), ("slower", 4000, 6000)] {
        ev.push(Event::Fault {
            name: name.into(),
            start: t(from),
            end: Some(t(to)),
        });
    }
    ev.push(Event::Fault {
        name: "stuck".into(),
        start: t(11_000),
        end: None,
    });
    ev.sort_by_key(Event::time);
    let f = check(&ev, &groups(), t(0));
    let r: Vec<_> = f
        .recoveries
        .iter()
        .map(|r| (r.fault.as_str(), r.judged(), r.note.clone()))
        .collect();
    assert_eq!(
        r,
        [
            ("slow", false, Some("followed by slower".to_string())),
            ("slower", true, None),
            (
                "stuck",
                false,
                Some("still active at the end of the run".to_string())
            ),
        ]
    );
    assert_eq!(
        f.recoveries[1].recovery,
        Some(Duration::from_secs(1)),
        "the burst at 6.5 s clears the lag within the second after healing"
    );
}
