//! Members of one group in this process leave it one at a time, each while the group is
//! steady.
//!
//! tansu 0.6 keeps a departed member as the leader of a group that is rebalancing
//! (`Forming`) when that leader leaves; nobody can join the group after that (every sync is
//! answered `REBALANCE_IN_PROGRESS` until the broker restarts). A client cannot see who leads
//! a group, so a member leaves only when the group cannot be rebalancing because of this
//! process: every member here that has an assignment got it after the last leave began
//! (the group formed again since), and nobody else here is leaving.
//!
//! The order of events matters. The epoch is raised when a leave *begins*, before the
//! LeaveGroup is sent, not when the leaving client is gone: the others' rebalances after a
//! leave often finish while the leaving client is still shutting down, and an assignment
//! that predates the raise would never count (everyone would wait for the deadline and then
//! leave at once, the very stampede this prevents). Raising it first leaves one window: an
//! assignment from a rebalance still under way when the leave began. So a leave waits until
//! *no* member here is in a rebalance.
//!
//! Waiting is bounded by `join_timeout` since the start or since the last leave here made
//! progress; after that a member leaves anyway (logged), since a member that never closes
//! is worse than a group that needs a broker restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// A member's steadiness while a rebalance is pending.
const PENDING: u64 = u64::MAX;

/// The turn of one group in this process.
#[derive(Default)]
pub(crate) struct Turn {
    /// Held by the member that is leaving, until its client is gone.
    lock: Mutex<()>,
    /// Leaves begun in this process.
    epoch: AtomicU64,
    /// The steadiness of every member that has had an assignment and has not begun to leave.
    members: Mutex<Vec<Weak<AtomicU64>>>,
}

/// The turn of group `group_id` on the cluster `bootstrap`, shared by its members here.
pub(crate) fn turn_of(bootstrap: &str, group_id: &str) -> Arc<Turn> {
    static TURNS: std::sync::LazyLock<Mutex<std::collections::HashMap<String, Arc<Turn>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut m = TURNS.lock().unwrap_or_else(|p| p.into_inner());
    m.retain(|_, v| Arc::strong_count(v) > 1);
    m.entry(format!("{bootstrap}/{group_id}"))
        .or_default()
        .clone()
}

impl Turn {
    fn members(&self) -> MutexGuard<'_, Vec<Weak<AtomicU64>>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One member's place in its group's turn.
pub(crate) struct Member {
    turn: Arc<Turn>,
    /// The epoch when a rebalance last gave this member an assignment; [`PENDING`] while a
    /// rebalance is under way.
    steady: Arc<AtomicU64>,
    registered: std::sync::atomic::AtomicBool,
}

/// What [`Member::leave`] ended with.
pub(crate) enum Leave<'a> {
    /// The group was steady: leave now, and hold this until the client is gone.
    InTurn {
        /// Released when dropped.
        _held: MutexGuard<'a, ()>,
    },
    /// Waited `join_timeout` without the group settling: leave anyway.
    TimedOut,
}

impl Member {
    /// A member of the group whose turn is `turn`, not yet assigned anything.
    pub(crate) fn new(turn: Arc<Turn>) -> Member {
        Member {
            turn,
            steady: Arc::new(AtomicU64::new(PENDING)),
            registered: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A rebalance gave this member its (possibly empty) assignment.
    pub(crate) fn assigned(&self) {
        self.steady
            .store(self.turn.epoch.load(Ordering::Acquire), Ordering::Release);
        if !self.registered.swap(true, Ordering::AcqRel) {
            let mut members = self.turn.members();
            members.retain(|m| m.strong_count() > 0);
            members.push(Arc::downgrade(&self.steady));
        }
    }

    /// A rebalance began (this member's partitions were revoked).
    pub(crate) fn revoked(&self) {
        self.steady.store(PENDING, Ordering::Release);
    }

    /// Whether the member and every other member here is steady since the last leave began,
    /// and the epoch that was judged against.
    fn all_steady(&self) -> (bool, u64) {
        let epoch = self.turn.epoch.load(Ordering::Acquire);
        let mine = self.steady.load(Ordering::Acquire) == epoch;
        let others = self.turn.members().iter().all(|m| {
            m.upgrade()
                .is_none_or(|s| Arc::ptr_eq(&s, &self.steady) || s.load(Ordering::Acquire) == epoch)
        });
        (mine && others, epoch)
    }

    /// Stops counting this member and raises the epoch: a leave begins.
    fn begin_leaving(&self) {
        self.turn
            .members()
            .retain(|m| m.upgrade().is_some_and(|s| !Arc::ptr_eq(&s, &self.steady)));
        self.registered.store(true, Ordering::Release);
        self.turn.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Waits for this member's turn to leave, calling `poll` (which should block briefly
    /// serving the client, so rebalances complete) between looks; gives up `window` after
    /// the start or after the last leave here began.
    pub(crate) fn leave(&self, window: Duration, mut poll: impl FnMut()) -> Leave<'_> {
        let mut seen = self.turn.epoch.load(Ordering::Acquire);
        let mut deadline = Instant::now() + window;
        loop {
            let (steady, epoch) = self.all_steady();
            if steady && let Ok(g) = self.turn.lock.try_lock() {
                // Judged before the lock was taken: look again now that nobody else can
                // begin a leave.
                if self.all_steady() == (true, epoch) {
                    self.begin_leaving();
                    return Leave::InTurn { _held: g };
                }
                drop(g);
            }
            if epoch != seen {
                seen = epoch;
                deadline = Instant::now() + window;
            }
            if Instant::now() >= deadline {
                self.begin_leaving();
                return Leave::TimedOut;
            }
            poll();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: usize) -> Vec<Member> {
        let turn = Arc::new(Turn::default());
        (0..n).map(|_| Member::new(turn.clone())).collect()
    }

    fn leaves_now(m: &Member) -> bool {
        let mut polls = 0;
        let r = m.leave(Duration::from_secs(3600), || {
            polls += 1;
            assert!(polls < 2, "waited instead of leaving");
        });
        matches!(r, Leave::InTurn { .. })
    }

    #[test]
    fn an_assignment_that_arrives_while_the_leaver_is_still_closing_counts() {
        let g = group(2);
        g.iter().for_each(Member::assigned);
        let turn = match g[0].leave(Duration::from_secs(3600), || panic!("waited")) {
            r @ Leave::InTurn { .. } => r,
            Leave::TimedOut => panic!("timed out"),
        };
        // The group rebalances after the LeaveGroup while the leaving client shuts down.
        g[1].revoked();
        g[1].assigned();
        drop(turn);
        assert!(
            leaves_now(&g[1]),
            "the second member waited for a leave that was over"
        );
    }

    #[test]
    fn nobody_leaves_while_another_member_here_is_in_a_rebalance() {
        let g = group(3);
        g.iter().for_each(Member::assigned);
        g[2].revoked();
        let mut polls = 0;
        let r = g[0].leave(Duration::from_millis(30), || {
            polls += 1;
            std::thread::sleep(Duration::from_millis(5));
        });
        assert!(matches!(r, Leave::TimedOut), "left during a rebalance");
        assert!(polls > 1, "gave up without waiting");
        // Once both have been through the rebalance g[0]'s leave caused, g[1] leaves at once.
        g[1].revoked();
        g[1].assigned();
        g[2].assigned();
        assert!(leaves_now(&g[1]));
    }

    #[test]
    fn an_assignment_from_before_the_last_leave_does_not_count() {
        let g = group(2);
        g.iter().for_each(Member::assigned);
        assert!(leaves_now(&g[0]));
        // g[1] has not been through the rebalance g[0]'s leave causes.
        let r = g[1].leave(Duration::from_millis(20), || {
            std::thread::sleep(Duration::from_millis(5))
        });
        assert!(matches!(r, Leave::TimedOut));
    }

    #[test]
    fn members_never_assigned_or_gone_do_not_hold_up_a_leave() {
        let g = group(3);
        g[0].assigned();
        g[1].assigned();
        assert!(
            leaves_now(&g[1]),
            "a member that never joined held up the leave"
        );
        g[0].revoked();
        g[0].assigned();
        let turn = g[0].turn.clone();
        drop(g);
        let last = Member::new(turn);
        last.assigned();
        assert!(leaves_now(&last), "dropped members held up the leave");
    }

    #[test]
    fn the_wait_restarts_when_a_leave_here_makes_progress() {
        let window = Duration::from_secs(1);
        let g = group(3);
        g.iter().for_each(Member::assigned);
        g[2].revoked();
        let started = Instant::now();
        let mut polls = 0;
        let r = g[0].leave(window, || {
            polls += 1;
            match polls {
                // 0.6 s in, another member's leave begins...
                1 => {
                    std::thread::sleep(window * 6 / 10);
                    g[1].begin_leaving();
                }
                // ...and at 1.2 s, past the first window, its rebalance is still going...
                2 => std::thread::sleep(window * 6 / 10),
                // ...until now.
                _ => {
                    g[0].revoked();
                    g[0].assigned();
                    g[2].assigned();
                }
            }
        });
        assert!(
            matches!(r, Leave::InTurn { .. }),
            "gave up after {:?} and {polls} polls despite the progress",
            started.elapsed()
        );
        assert!(started.elapsed() > window);
    }
}
