use std::time::Duration;

use squall_core::{DeadLetterReason, Message, Subject};

use super::*;

fn rules(max_in_flight: usize, buffer: usize) -> Rules {
    Rules {
        policy: DeliveryPolicy {
            ack_wait: Duration::from_secs(10),
            max_in_flight,
            ..DeliveryPolicy::default()
        },
        group: Some("g".into()),
        buffer,
        commits: true,
    }
}

fn tp() -> Tp {
    ("orders".into(), 0)
}

fn record(i: i64, key: Option<&str>) -> Option<(Message, Timestamp)> {
    let mut m = Message::new(Subject::new("orders").unwrap(), format!("m{i}"));
    m.set_key(key).unwrap();
    Some((m, Timestamp(1)))
}

/// A state with partition `orders/0` holding offsets `from..to`.
fn filled(r: &Rules, from: i64, to: i64) -> State {
    let mut s = State::default();
    s.assign(tp(), Part::new(from, BTreeMap::new()));
    for o in from..to {
        assert_eq!(s.offer(r, &tp(), o, None, record(o, None)), Offer::Accepted);
    }
    s
}

fn take_all(s: &mut State, r: &Rules, nonce: &mut u64) -> Vec<Taken> {
    let mut out = Vec::new();
    loop {
        *nonce += 1;
        match s.take(r, *nonce) {
            Some(t) => out.push(t),
            None => return out,
        }
    }
}

#[test]
fn acks_commit_only_the_contiguous_prefix() {
    let r = rules(10, 10);
    let mut s = filled(&r, 3, 9);
    let mut n = 0;
    let got = take_all(&mut s, &r, &mut n);
    assert_eq!(
        got.iter().map(|t| t.offset).collect::<Vec<_>>(),
        [3, 4, 5, 6, 7, 8]
    );
    let nonce = |off: i64| got.iter().find(|t| t.offset == off).unwrap().nonce;
    let mut fx = Effects::default();
    // 5 before 4: nothing to commit past 4 (nor past 3).
    s.ack(&r, nonce(5), &mut fx).unwrap();
    s.ack(&r, nonce(4), &mut fx).unwrap();
    assert!(!fx.commit);
    assert!(s.take_commits().is_empty());
    assert_eq!(s.parts[&tp()].position(), 3);
    // 3 acked: 3, 4 and 5 go at once; 6 is the new position.
    s.ack(&r, nonce(3), &mut fx).unwrap();
    assert!(fx.commit);
    let commits = s.take_commits();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].1, 6);
    assert_eq!(s.counts(), (3, 3));
    // 8, then 6 and 7: everything, position one past the last offset.
    for o in [8, 6, 7] {
        s.ack(&r, nonce(o), &mut Effects::default()).unwrap();
    }
    assert_eq!(s.take_commits()[0].1, 9);
    assert_eq!(s.counts(), (0, 0));
    // A second ack of a settled lease is refused.
    let e = s.ack(&r, nonce(6), &mut Effects::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LeaseExpired);
}

#[test]
fn the_window_bounds_deliveries_and_the_buffer_bounds_fetching() {
    let r = rules(2, 4);
    let mut s = filled(&r, 0, 4);
    assert_eq!(
        s.offer(&r, &tp(), 4, None, record(4, None)),
        Offer::Overflow(4)
    );
    assert!(s.paused.contains(&tp()));
    assert_eq!(
        s.offer(&r, &tp(), 5, None, record(5, None)),
        Offer::Ignored,
        "paused"
    );
    let mut n = 0;
    let got = take_all(&mut s, &r, &mut n);
    assert_eq!(got.len(), 2, "max_in_flight 2");
    let mut fx = Effects::default();
    s.ack(&r, got[1].nonce, &mut fx).unwrap();
    assert!(
        take_all(&mut s, &r, &mut n).is_empty(),
        "acked 1 of 0..1: still 2 in the window"
    );
    s.ack(&r, got[0].nonce, &mut fx).unwrap();
    assert_eq!(fx.resume, vec![tp()], "half the buffer free: fetch again");
    let more = take_all(&mut s, &r, &mut n);
    assert_eq!(more.iter().map(|t| t.offset).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(
        s.offer(&r, &tp(), 4, None, record(4, None)),
        Offer::Accepted
    );
}

#[test]
fn skipped_records_move_the_position_only_when_nothing_is_held() {
    let r = rules(10, 10);
    let mut s = State::default();
    let mut part = Part::new(0, BTreeMap::new());
    part.min_offset = 2;
    s.assign(tp(), part);
    assert_eq!(s.offer(&r, &tp(), 0, None, record(0, None)), Offer::Skipped);
    assert_eq!(s.offer(&r, &tp(), 1, None, None), Offer::Skipped);
    assert_eq!(s.take_commits()[0].1, 2);
    assert_eq!(
        s.offer(&r, &tp(), 1, None, record(1, None)),
        Offer::Ignored,
        "seen"
    );
    assert_eq!(
        s.offer(&r, &tp(), 2, None, record(2, None)),
        Offer::Accepted
    );
    assert_eq!(s.offer(&r, &tp(), 3, None, None), Offer::Skipped);
    assert!(s.take_commits().is_empty(), "2 is still held");
}

#[test]
fn nacks_redeliver_and_the_last_allowed_one_dead_letters() {
    let mut r = rules(10, 10);
    r.policy.max_deliveries = Some(2);
    let mut s = filled(&r, 0, 1);
    let mut n = 0;
    let d1 = take_all(&mut s, &r, &mut n).pop().unwrap();
    assert_eq!(d1.attempt, 1);
    let mut fx = Effects::default();
    s.nack(&r, d1.nonce, Duration::ZERO, &mut fx).unwrap();
    assert!(fx.dead_letters.is_empty());
    let d2 = take_all(&mut s, &r, &mut n).pop().unwrap();
    assert_eq!((d2.offset, d2.attempt), (0, 2));
    s.nack(&r, d2.nonce, Duration::ZERO, &mut fx).unwrap();
    let job = fx.dead_letters.pop().expect("dead letter");
    assert_eq!(job.envelope.reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(job.envelope.attempts.len(), 2);
    assert_eq!(job.envelope.origin_sequence, 1);
    assert_eq!(job.envelope.group.as_deref(), Some("g"));
    assert!(
        take_all(&mut s, &r, &mut n).is_empty(),
        "settling, not redelivered"
    );
    assert!(s.take_commits().is_empty());
    s.finish(&r, &job.tp, job.offset, Finish::Done, &mut fx);
    assert_eq!(s.take_commits()[0].1, 1);
}

#[tokio::test(start_paused = true)]
async fn leases_expire_nack_delays_wait_and_extensions_hold() {
    let r = rules(10, 10);
    let mut s = filled(&r, 0, 2);
    let mut n = 0;
    let got = take_all(&mut s, &r, &mut n);
    let mut fx = Effects::default();
    s.nack(&r, got[1].nonce, Duration::from_secs(3), &mut fx)
        .unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    s.extend(&r, got[0].nonce, Duration::from_secs(20), &mut fx)
        .unwrap();
    let (woke, next) = s.tick(&r, &mut fx);
    assert!(woke, "the nack delay passed");
    assert!(next.is_some(), "the extended lease is still timed");
    let again = take_all(&mut s, &r, &mut n);
    assert_eq!(
        again
            .iter()
            .map(|t| (t.offset, t.attempt))
            .collect::<Vec<_>>(),
        [(1, 2)]
    );
    tokio::time::advance(Duration::from_secs(21)).await;
    let e = s.ack(&r, got[0].nonce, &mut fx).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::LeaseExpired,
        "past the extended deadline"
    );
    let third = take_all(&mut s, &r, &mut n);
    assert_eq!(
        third
            .iter()
            .map(|t| (t.offset, t.attempt))
            .collect::<Vec<_>>(),
        [(0, 2)]
    );
}

#[test]
fn keyed_records_wait_for_the_previous_one_of_their_key() {
    let mut r = rules(10, 10);
    r.policy.ordered_by_key = true;
    let mut s = State::default();
    s.assign(tp(), Part::new(0, BTreeMap::new()));
    for (o, k) in [(0, "a"), (1, "a"), (2, "b"), (3, "a")] {
        s.offer(&r, &tp(), o, None, record(o, Some(k)));
    }
    let mut n = 0;
    let first = take_all(&mut s, &r, &mut n);
    assert_eq!(first.iter().map(|t| t.offset).collect::<Vec<_>>(), [0, 2]);
    let mut fx = Effects::default();
    s.nack(&r, first[0].nonce, Duration::ZERO, &mut fx).unwrap();
    let again = take_all(&mut s, &r, &mut n);
    assert_eq!(
        again.iter().map(|t| t.offset).collect::<Vec<_>>(),
        [0],
        "a's first again"
    );
    s.ack(&r, again[0].nonce, &mut fx).unwrap();
    let next = take_all(&mut s, &r, &mut n);
    assert_eq!(next.iter().map(|t| t.offset).collect::<Vec<_>>(), [1]);
}

#[test]
fn revoking_ends_leases_and_hands_attempts_on() {
    let r = rules(10, 10);
    let mut s = filled(&r, 10, 14);
    let mut n = 0;
    let got = take_all(&mut s, &r, &mut n);
    let mut fx = Effects::default();
    s.ack(&r, got[0].nonce, &mut fx).unwrap();
    s.nack(&r, got[2].nonce, Duration::from_secs(60), &mut fx)
        .unwrap();
    s.ack(&r, got[3].nonce, &mut fx).unwrap();
    let (pos, attempts, commit) = s.revoke(&tp()).unwrap();
    assert_eq!(pos, 11);
    assert!(commit, "the position moved");
    assert_eq!(
        attempts,
        BTreeMap::from([(11, 1), (12, 1), (13, 1)]),
        "13 was acked but is not committed: it comes again, as a redelivery"
    );
    assert_eq!(s.counts(), (0, 0));
    let e = s.ack(&r, got[1].nonce, &mut fx).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LeaseExpired);
    // The next owner counts on from there.
    s.assign(tp(), Part::new(11, attempts));
    for o in 11..13 {
        s.offer(&r, &tp(), o, None, record(o, None));
    }
    let next = take_all(&mut s, &r, &mut n);
    assert_eq!(next.iter().map(|t| t.attempt).collect::<Vec<_>>(), [2, 2]);
}
