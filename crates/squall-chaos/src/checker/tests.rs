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
        confirmed(1, 1, 1, 7),
        received(1, 1, 1, 2, 7),
        received(1, 1, 1, 3, 7), // redelivery before ack: expected under faults
        acked(1, 1, 1, 4, 7),
        received(1, 1, 2, 5, 7), // same copy after its ack: an anomaly
        received(1, 1, 2, 6, 9), // a second stored copy
    ];
    let f = check(&ev, &groups(), t(0));
    assert_eq!(
        (
            f.redeliveries,
            f.duplicates,
            f.redelivered_after_ack,
            f.stored_twice
        ),
        (1, 2, 1, 1)
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
