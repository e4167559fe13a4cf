//! Model-based test: random interleavings of publish / receive / ack / nack / reject / extend /
//! time passing, run against the broker and against a deliberately naive reference model of the
//! delivery contract. Every observable outcome (which message a receive returns and its attempt,
//! whether a settle is accepted, how many messages were dead-lettered, what is in flight) must agree.
//!
//! The model knows nothing of cursors, indexes or lookahead: it scans all messages in sequence order
//! each time, which is what the contract says ("the lowest-sequence deliverable message").

use std::time::Duration;

use proptest::prelude::*;
use squall_broker::{Broker, Clock};
use squall_core::{
    Consumer, ErrorKind, Message, Publisher, Settle, Subscriber, Subscription, Timestamp,
};

const ACK_WAIT: u64 = 5;
const MAX_DELIVERIES: u32 = 3;
const MAX_IN_FLIGHT: usize = 3;
const MEMBERS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        key: Option<u8>,
        delay: Option<u64>,
        ttl: Option<u64>,
    },
    Take {
        member: usize,
    },
    Ack {
        idx: usize,
    },
    Nack {
        idx: usize,
        delay: u64,
    },
    Reject {
        idx: usize,
    },
    Extend {
        idx: usize,
        by: u64,
    },
    Advance {
        secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (prop::option::of(0u8..3), prop::option::weighted(0.2, 1u64..6), prop::option::weighted(0.2, 1u64..9))
            .prop_map(|(key, delay, ttl)| Op::Publish { key, delay, ttl: if delay.is_some() { None } else { ttl } }),
        4 => (0..MEMBERS).prop_map(|member| Op::Take { member }),
        3 => (0usize..64).prop_map(|idx| Op::Ack { idx }),
        1 => (0usize..64, 0u64..4).prop_map(|(idx, delay)| Op::Nack { idx, delay }),
        1 => (0usize..64).prop_map(|idx| Op::Reject { idx }),
        1 => (0usize..64, 1u64..10).prop_map(|(idx, by)| Op::Extend { idx, by }),
        2 => (1u64..8).prop_map(|secs| Op::Advance { secs }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Unseen,
    Pending {
        deadline: u64,
        member: usize,
        lease: usize,
    },
    Waiting {
        not_before: u64,
    },
    Settled,
}

#[derive(Debug, Clone)]
struct M {
    key: Option<u8>,
    published: u64,
    delay: u64,
    ttl: Option<u64>,
    attempts: u32,
    state: State,
}

/// The reference: times in whole seconds since the start.
#[derive(Debug, Default)]
struct Model {
    ordered: bool,
    now: u64,
    msgs: Vec<M>,
    dead: usize,
    leases: usize,
}

#[derive(Debug, PartialEq)]
enum Settled {
    Ok,
    Refused,
}

impl Model {
    fn expire(&mut self) {
        let mut expired: Vec<(u64, usize)> = self
            .msgs
            .iter()
            .enumerate()
            .filter_map(|(i, m)| match m.state {
                State::Pending { deadline, .. } if deadline <= self.now => Some((deadline, i)),
                _ => None,
            })
            .collect();
        expired.sort();
        for (_, i) in expired {
            self.give_up_or_requeue(i, self.now);
        }
    }

    fn give_up_or_requeue(&mut self, i: usize, not_before: u64) {
        if self.msgs[i].attempts >= MAX_DELIVERIES {
            self.msgs[i].state = State::Settled;
            self.dead += 1;
        } else {
            self.msgs[i].state = State::Waiting { not_before };
        }
    }

    fn in_flight(&self, member: usize) -> usize {
        self.msgs
            .iter()
            .filter(|m| matches!(m.state, State::Pending { member: x, .. } if x == member))
            .count()
    }

    fn blocked_by_key(&self, i: usize) -> bool {
        let Some(k) = self.msgs[i].key else {
            return false;
        };
        self.ordered
            && self.msgs[..i]
                .iter()
                .any(|m| m.key == Some(k) && m.state != State::Settled)
    }

    /// Returns (index, attempt, lease number).
    fn take(&mut self, member: usize) -> Option<(usize, u32, usize)> {
        self.expire();
        if self.in_flight(member) >= MAX_IN_FLIGHT {
            return None;
        }
        for i in 0..self.msgs.len() {
            let due_at = match self.msgs[i].state {
                State::Unseen => self.msgs[i].published + self.msgs[i].delay,
                State::Waiting { not_before } => not_before,
                _ => continue,
            };
            if due_at > self.now || self.blocked_by_key(i) {
                continue;
            }
            if self.msgs[i]
                .ttl
                .is_some_and(|t| self.msgs[i].published + t <= self.now)
            {
                self.msgs[i].state = State::Settled;
                continue;
            }
            let lease = self.leases;
            self.leases += 1;
            let m = &mut self.msgs[i];
            m.attempts += 1;
            m.state = State::Pending {
                deadline: self.now + ACK_WAIT,
                member,
                lease,
            };
            return Some((i, m.attempts, lease));
        }
        None
    }

    /// Finds the message leased under `lease`, if still held; processes expiry like the broker.
    fn held(&mut self, lease: usize) -> Option<usize> {
        let i = self
            .msgs
            .iter()
            .position(|m| matches!(m.state, State::Pending { lease: l, .. } if l == lease))?;
        let State::Pending { deadline, .. } = self.msgs[i].state else {
            unreachable!()
        };
        if deadline <= self.now {
            self.expire();
            return None;
        }
        Some(i)
    }

    fn settle(&mut self, lease: usize, op: &Op) -> Settled {
        let Some(i) = self.held(lease) else {
            return Settled::Refused;
        };
        match *op {
            Op::Ack { .. } => self.msgs[i].state = State::Settled,
            Op::Nack { delay, .. } => self.give_up_or_requeue(i, self.now + delay),
            Op::Reject { .. } => {
                self.msgs[i].state = State::Settled;
                self.dead += 1;
            }
            Op::Extend { by, .. } => {
                if let State::Pending { deadline, .. } = &mut self.msgs[i].state {
                    *deadline = (*deadline).max(self.now + by);
                }
            }
            _ => unreachable!(),
        }
        Settled::Ok
    }
}

const EPOCH: u64 = 1_700_000_000_000_000_000;

fn secs_since_epoch(t: Timestamp) -> f64 {
    (t.as_nanos() - EPOCH) as f64 / 1e9
}

async fn run(ops: Vec<Op>, ordered: bool) -> Result<(), TestCaseError> {
    let broker = Broker::builder()
        .clock(Clock::starting_at(Timestamp(EPOCH)))
        .open()
        .unwrap();
    let sub = Subscription::new("m.>")
        .unwrap()
        .group("g")
        .unwrap()
        .ack_wait(Duration::from_secs(ACK_WAIT))
        .max_deliveries(MAX_DELIVERIES)
        .max_in_flight(MAX_IN_FLIGHT)
        .ordered_by_key(ordered);
    let mut members: Vec<Box<dyn Consumer>> = Vec::new();
    for _ in 0..MEMBERS {
        members.push(broker.subscribe(sub.clone()).await.unwrap());
    }
    let mut model = Model {
        ordered,
        ..Default::default()
    };
    // Leases handed out, by the model's lease number: (sequence, settle handle).
    let mut leases: Vec<(u64, Settle)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Publish { key, delay, ttl } => {
                let mut b = Message::builder(format!("m.{}", model.msgs.len())).unwrap();
                if let Some(k) = key {
                    b = b.key(format!("k{k}")).unwrap();
                }
                if let Some(d) = delay {
                    b = b.delay(Duration::from_secs(*d));
                }
                if let Some(t) = ttl {
                    b = b.ttl(Duration::from_secs(*t));
                }
                let ack = broker.publish(b.build()).await.unwrap();
                prop_assert_eq!(ack.sequence, model.msgs.len() as u64 + 1);
                model.msgs.push(M {
                    key: *key,
                    published: model.now,
                    delay: delay.unwrap_or(0),
                    ttl: *ttl,
                    attempts: 0,
                    state: State::Unseen,
                });
            }
            Op::Take { member } => {
                // Poll without letting virtual time pass, yielding between polls so the broker's
                // spawned work (dead letters) can finish; `next` is cancel safe, so dropping it
                // unfinished leases nothing.
                let got = {
                    let fut = members[*member].next();
                    tokio::pin!(fut);
                    let mut got = None;
                    for _ in 0..32 {
                        if let std::task::Poll::Ready(r) = futures::poll!(&mut fut) {
                            got = Some(r);
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    got
                };
                let got = match got {
                    Some(Some(Ok(d))) => Some(d),
                    Some(other) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: consumer ended: {other:?}"
                        )));
                    }
                    None => None,
                };
                let want = model.take(*member);
                match (got, want) {
                    (None, None) => {}
                    (Some(d), Some((i, attempt, lease))) => {
                        prop_assert_eq!(d.sequence(), i as u64 + 1, "step {}: wrong message", step);
                        prop_assert_eq!(d.attempt(), attempt, "step {}: wrong attempt", step);
                        prop_assert_eq!(lease, leases.len());
                        let seq = d.sequence();
                        leases.push((seq, d.into_parts().1));
                    }
                    (got, want) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step} at t={}s: broker gave {:?}, model {:?}; model state {:#?}",
                            model.now,
                            got.map(|d| (d.sequence(), d.attempt())),
                            want.map(|(i, a, _)| (i + 1, a)),
                            model.msgs
                        )));
                    }
                }
            }
            Op::Ack { idx }
            | Op::Nack { idx, .. }
            | Op::Reject { idx }
            | Op::Extend { idx, .. } => {
                if leases.is_empty() {
                    continue;
                }
                let lease = idx % leases.len();
                let settle = leases[lease].1.clone();
                let got = match op {
                    Op::Ack { .. } => settle.ack().await,
                    Op::Nack { delay, .. } => settle.nack(Duration::from_secs(*delay)).await,
                    Op::Reject { .. } => settle.reject("model says no").await,
                    Op::Extend { by, .. } => {
                        settle.extend(Duration::from_secs(*by)).await.map(|_| ())
                    }
                    _ => unreachable!(),
                };
                let want = model.settle(lease, op);
                match (&got, &want) {
                    (Ok(()), Settled::Ok) => {}
                    (Err(e), Settled::Refused) => {
                        prop_assert_eq!(e.kind(), ErrorKind::LeaseExpired)
                    }
                    _ => {
                        return Err(TestCaseError::fail(format!(
                            "step {step} {op:?} on lease {lease} (seq {}) at t={}s (broker t={:.1}s): broker {got:?}, model {want:?}",
                            leases[lease].0,
                            model.now,
                            secs_since_epoch(broker.clock().now())
                        )));
                    }
                }
            }
            Op::Advance { secs } => {
                tokio::time::advance(Duration::from_secs(*secs)).await;
                model.now += secs;
            }
        }
    }
    model.expire();
    let stats = broker.stream_stats("default").await.unwrap();
    let g = stats.groups.iter().find(|g| g.name == "g").unwrap();
    let model_in_flight = model
        .msgs
        .iter()
        .filter(|m| matches!(m.state, State::Pending { .. }))
        .count();
    prop_assert_eq!(g.in_flight, model_in_flight, "in flight");
    prop_assert_eq!(
        g.counters.dead_lettered as usize,
        model.dead,
        "dead-lettered"
    );
    let dlq = broker.stream_stats("dlq").await.unwrap();
    prop_assert_eq!(dlq.messages as usize, model.dead, "dead letters stored");
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Without per-key order: lowest-sequence deliverable first, leases, redelivery, dead letters.
    #[test]
    fn broker_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        runtime().block_on(run(ops, false))?;
    }

    /// With per-key order: a key's next message waits for the previous one to be settled.
    #[test]
    fn broker_matches_model_with_key_order(ops in prop::collection::vec(op(), 1..120)) {
        runtime().block_on(run(ops, true))?;
    }
}
