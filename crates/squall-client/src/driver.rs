//! The connection task: the one owner of the socket and of everything in flight on it.
//!
//! Handles ([`crate::Client`], consumers, ackers) talk to it through one bounded `mpsc` of
//! [`Command`]s; it answers each through a `oneshot`. It runs connections one after the other
//! ([`Driver::run`]): a session (see `session.rs`) until the connection dies, then reconnect
//! attempts with backoff, processing commands all along as `when_disconnected` says, until the
//! client is closed, every handle is gone, or `max_attempts` is exhausted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use squall_core::{
    Acker, Error, ErrorKind, LeaseId, Message, PublishAck, Result, Subscription, Timestamp,
};
use squall_wire::{SettleItem, SettleOp};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::WhenDisconnected;
use crate::consumer::{ClientAcker, SubShared};
use crate::session::{self, SessionEnd};
use crate::state::{ConnectionState, Shared};

/// What handles ask of the connection task.
pub(crate) enum Command {
    /// Publish; the permit bounds unconfirmed publishes (`client.publish_buffer`).
    Publish(PendingPublish),
    /// Open a subscription; answered once the server accepted it.
    Subscribe {
        subscription: Subscription,
        reply: oneshot::Sender<Result<Arc<SubShared>>>,
    },
    /// Close a subscription; `done` fires once the Unsubscribe frame is written.
    Unsubscribe {
        sub_id: u32,
        done: oneshot::Sender<()>,
    },
    /// Settle a delivery received on connection `epoch`.
    Settle {
        sub_id: u32,
        epoch: u64,
        lease: LeaseId,
        op: SettleOp,
        reply: oneshot::Sender<Result<Timestamp>>,
    },
    /// Request-reply; the caller gives up at `deadline` on its own.
    Request {
        message: Message,
        deadline: Instant,
        reply: oneshot::Sender<Result<Message>>,
    },
    /// Answer once every publish handed over before this command is confirmed or failed.
    Flush { reply: oneshot::Sender<Result<()>> },
    /// Flush (until `client.request_timeout`), unsubscribe, close the socket, stop.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// A publish handed over and not yet confirmed. Kept (with its message) until its confirm
/// arrives, so it can be re-sent on a new connection.
pub(crate) struct PendingPublish {
    pub message: Message,
    pub size: usize,
    pub reply: oneshot::Sender<Result<PublishAck>>,
    pub _permit: OwnedSemaphorePermit,
}

/// A live subscription as the connection task keeps it.
pub(crate) struct SubEntry {
    /// As the application asked (re-sent on every connection, see
    /// [`SubShared::resubscription`]).
    pub subscription: Subscription,
    pub shared: Arc<SubShared>,
    /// The acker of this connection's deliveries; `None` while detached.
    pub acker: Option<Arc<dyn Acker>>,
    pub group: Option<Arc<str>>,
    /// Whether the Subscribe frame was written on the current connection.
    pub attached: bool,
    /// The first subscribe's caller, until the server answers.
    pub reply: Option<oneshot::Sender<Result<Arc<SubShared>>>>,
}

/// Frames waiting for the next write (everything but publishes, which wait in `unsent`).
#[derive(Default)]
pub(crate) struct Outbox {
    pub pongs: Vec<u64>,
    pub unsubscribes: Vec<u32>,
    /// (request id, sub id)
    pub subscribes: Vec<(u64, u32)>,
    /// (sub id, credit)
    pub credits: Vec<(u32, u32)>,
    pub settles: Vec<SettleItem>,
    /// (request id, deadline, message); the reply waits in `Driver::requests`.
    pub requests: VecDeque<(u64, Instant, Message)>,
    /// Fired once the frames now queued are written.
    pub on_written: Vec<oneshot::Sender<()>>,
}

/// A close in progress.
pub(crate) struct Closing {
    pub deadline: Instant,
    pub replies: Vec<oneshot::Sender<Result<()>>>,
}

/// The connection task's state. Owned by the task alone: no locks, except the per-subscription
/// queues it shares with consumers ([`SubShared`]).
pub(crate) struct Driver {
    pub shared: Arc<Shared>,
    /// From every handle, consumer and acker; bounded (`client.command_queue`). Closes when the
    /// last of them is dropped, which starts a close.
    pub commands: mpsc::Receiver<Command>,
    /// To make ackers without keeping the channel open ourselves.
    pub commands_tx: mpsc::WeakSender<Command>,
    pub state: watch::Sender<ConnectionState>,
    /// The server as `host:port`.
    pub server: String,
    /// Connection number, incremented per session; deliveries and ackers carry it.
    pub epoch: u64,
    /// Whether a session is running (commands are written to a socket).
    pub online: bool,
    /// The server said Goodbye on this connection: no new publishes, subscribes or requests.
    pub goodbye: bool,
    pub next_request: u64,
    pub next_sub: u32,
    /// Unconfirmed publishes by request id (ascending = send order). Bounded by the publish
    /// permits.
    pub publishes: BTreeMap<u64, PendingPublish>,
    /// Ids in `publishes` not yet written on this connection, in order.
    pub unsent: VecDeque<u64>,
    /// Written on this connection and unconfirmed; at most the server's `max_in_flight`.
    pub in_flight: usize,
    pub subs: HashMap<u32, SubEntry>,
    /// Subscribe request id → sub id.
    pub subscribe_requests: HashMap<u64, u32>,
    /// Settles queued or sent on this connection.
    pub settles: HashMap<u64, oneshot::Sender<Result<Timestamp>>>,
    /// Requests queued or sent.
    pub requests: HashMap<u64, oneshot::Sender<Result<Message>>>,
    pub out: Outbox,
    /// (last publish id covered, reply)
    pub flushes: Vec<(u64, oneshot::Sender<Result<()>>)>,
    pub closing: Option<Closing>,
}

impl Driver {
    /// Runs sessions and reconnects until closed. `first` is the connection `Client::connect`
    /// opened.
    pub async fn run(mut self, first: session::Conn) {
        let policy = self.shared.config.reconnect.clone();
        let mut next = Some(first);
        let mut failures: u32 = 0;
        let mut last_error;
        loop {
            if let Some(conn) = next.take() {
                failures = 0;
                match self.session(conn).await {
                    SessionEnd::Closed => return self.shutdown(None),
                    SessionEnd::Lost(e) => {
                        tracing::warn!(server = %self.server, error = %e, "connection lost");
                        self.detach();
                        self.state
                            .send_replace(ConnectionState::Disconnected { error: e.clone() });
                        last_error = e;
                    }
                }
            } else {
                last_error = Error::new(ErrorKind::Unavailable, "not connected");
            }
            loop {
                if self.close_due() {
                    return self.shutdown(None);
                }
                if policy.max_attempts.is_some_and(|max| failures >= max) {
                    let e = Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "gave up reconnecting to {} after {failures} attempts (set \
                             `client.reconnect.max_attempts`); last error: {last_error}",
                            self.server
                        ),
                    );
                    return self.shutdown(Some(e));
                }
                let delay = policy.delay(failures, &mut rand::rng());
                if self.offline(tokio::time::sleep(delay)).await.is_none() {
                    continue; // a close came due
                }
                self.state.send_replace(ConnectionState::Connecting);
                let (shared, server) = (self.shared.clone(), self.server.clone());
                let attempt = async move { session::connect(&shared.config, &server).await };
                match self.offline(attempt).await {
                    None => continue,
                    Some(Ok(conn)) => {
                        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("squall_client_reconnects_total").increment(1);
                        tracing::info!(server = %self.server, "reconnected");
                        next = Some(conn);
                        break;
                    }
                    Some(Err(e)) => {
                        failures += 1;
                        tracing::debug!(server = %self.server, error = %e, failures, "reconnect failed");
                        self.state
                            .send_replace(ConnectionState::Disconnected { error: e.clone() });
                        last_error = e;
                    }
                }
            }
        }
    }

    /// Awaits `fut` while serving commands as a disconnected client. `None` if a close came due
    /// first.
    pub async fn offline<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        loop {
            if self.close_due() {
                return None;
            }
            let deadline = self.closing.as_ref().map(|c| c.deadline);
            tokio::select! {
                out = &mut fut => return Some(out),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => self.begin_close(None),
                },
                () = self.shared.wake.notified() => self.on_wake(),
                () = sleep_until(deadline), if deadline.is_some() => {}
            }
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    fn wait_mode(&self) -> bool {
        self.shared.config.when_disconnected == WhenDisconnected::Wait
    }

    /// Handles one command, online or not.
    pub fn on_command(&mut self, cmd: Command) {
        let refuse = if self.closing.is_some() {
            Some(Error::closed("the client"))
        } else if !self.online && !self.wait_mode() {
            Some(unavailable(&self.server))
        } else {
            None
        };
        match cmd {
            // `send` already applied `when_disconnected`; a publish it accepted is held until
            // confirmed, even if the connection died while it was queued.
            Command::Publish(p) => match self.closing {
                Some(_) => drop(p.reply.send(Err(Error::closed("the client")))),
                None => {
                    let id = self.next_id();
                    self.publishes.insert(id, p);
                    self.unsent.push_back(id);
                }
            },
            Command::Subscribe {
                subscription,
                reply,
            } => match refuse {
                Some(e) => drop(reply.send(Err(e))),
                None => {
                    let sub_id = self.next_sub;
                    self.next_sub = self.next_sub.wrapping_add(1).max(1);
                    let durable_group = subscription.group.is_some() && subscription.durable;
                    let prefetch = self.shared.config.prefetch;
                    let shared = Arc::new(SubShared::new(sub_id, prefetch, !durable_group));
                    let group = subscription.group.as_deref().map(Arc::from);
                    let mut entry = SubEntry {
                        subscription,
                        shared,
                        acker: None,
                        group,
                        attached: false,
                        reply: Some(reply),
                    };
                    if self.online {
                        self.attach_sub(sub_id, &mut entry);
                    }
                    self.subs.insert(sub_id, entry);
                }
            },
            Command::Unsubscribe { sub_id, done } => match self.subs.remove(&sub_id) {
                Some(e) if e.attached => {
                    self.out.unsubscribes.push(sub_id);
                    self.out.on_written.push(done);
                }
                _ => drop(done.send(())),
            },
            Command::Settle {
                sub_id,
                epoch,
                lease,
                op,
                reply,
            } => {
                let live = self.subs.get(&sub_id).is_some_and(|e| e.attached);
                if !self.online || epoch != self.epoch || !live {
                    let _ = reply.send(Err(lease_lost()));
                    return;
                }
                let request_id = self.next_id();
                self.settles.insert(request_id, reply);
                self.out.settles.push(SettleItem {
                    request_id,
                    sub_id,
                    lease,
                    op,
                });
            }
            Command::Request {
                message,
                deadline,
                reply,
            } => match refuse {
                Some(e) => drop(reply.send(Err(e))),
                None => {
                    let id = self.next_id();
                    self.requests.insert(id, reply);
                    self.out.requests.push_back((id, deadline, message));
                }
            },
            Command::Flush { reply } => {
                self.flushes.push((self.next_request, reply));
                self.check_flushes();
            }
            Command::Close { reply } => self.begin_close(Some(reply)),
        }
    }

    /// Starts (or joins) a close: sends are refused from now on.
    pub fn begin_close(&mut self, reply: Option<oneshot::Sender<Result<()>>>) {
        self.shared.closed.store(true, Ordering::Release);
        let deadline = Instant::now() + self.shared.config.request_timeout;
        let closing = self.closing.get_or_insert_with(|| Closing {
            deadline,
            replies: Vec::new(),
        });
        closing.replies.extend(reply);
    }

    /// A close is in progress and has nothing left to wait for (or its deadline passed).
    pub fn close_due(&self) -> bool {
        self.closing
            .as_ref()
            .is_some_and(|c| self.publishes.is_empty() || Instant::now() >= c.deadline)
    }

    /// Answers the flushes whose publishes are all resolved.
    pub fn check_flushes(&mut self) {
        let oldest = self.publishes.keys().next().copied().unwrap_or(u64::MAX);
        let (done, waiting) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(upto, _)| oldest > *upto);
        self.flushes = waiting;
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
    }

    /// Consumers woke us: collect credit that is due and subscriptions that were dropped.
    pub fn on_wake(&mut self) {
        let mut dropped = Vec::new();
        for (&id, e) in &self.subs {
            let mut q = e.shared.lock();
            if q.dropped {
                dropped.push(id);
            } else if self.online
                && e.attached
                && let Some(n) = q.window.grant()
            {
                self.out.credits.push((id, n));
            }
        }
        for id in dropped {
            if self.subs.remove(&id).is_some_and(|e| e.attached) {
                self.out.unsubscribes.push(id);
            }
        }
    }

    /// Makes `entry` live on the current connection: a fresh acker, an empty buffer, a full
    /// window, and a Subscribe frame queued.
    pub fn attach_sub(&mut self, sub_id: u32, entry: &mut SubEntry) {
        let Some(commands) = self.commands_tx.upgrade() else {
            return; // every handle is gone; the task is closing
        };
        {
            let mut q = entry.shared.lock();
            q.epoch = self.epoch;
            q.window.reset();
            q.items.retain(|b| b.item.is_err());
        }
        entry.acker = Some(Arc::new(ClientAcker {
            sub: entry.shared.clone(),
            epoch: self.epoch,
            commands,
        }));
        entry.attached = false;
        let request_id = self.next_id();
        self.subscribe_requests.insert(request_id, sub_id);
        self.out.subscribes.push((request_id, sub_id));
    }

    /// The connection is gone: what was in flight on it is re-sent (publishes), reported lost
    /// (settles, sent requests), or resubscribed on the next connection.
    pub fn detach(&mut self) {
        self.online = false;
        self.goodbye = false;
        self.in_flight = 0;
        let resent = self.publishes.len() - self.unsent.len();
        if resent > 0 {
            metrics::counter!("squall_client_publishes_resent_total").increment(resent as u64);
        }
        self.unsent = self.publishes.keys().copied().collect();
        for (_, reply) in self.settles.drain() {
            let _ = reply.send(Err(lease_lost()));
        }
        let queued: HashSet<u64> = self.out.requests.iter().map(|(id, ..)| *id).collect();
        let lost = Error::new(
            ErrorKind::Unavailable,
            format!(
                "the connection to {} was lost before the reply",
                self.server
            ),
        );
        let sent: Vec<u64> = (self.requests.keys())
            .filter(|id| !queued.contains(id))
            .copied()
            .collect();
        for id in sent {
            if let Some(reply) = self.requests.remove(&id) {
                let _ = reply.send(Err(lost.clone()));
            }
        }
        let out = std::mem::take(&mut self.out);
        for done in out.on_written {
            let _ = done.send(());
        }
        self.out.requests = out.requests;
        self.subscribe_requests.clear();
        let fail_pending = !self.wait_mode();
        let server = self.server.clone();
        self.subs.retain(|_, e| {
            e.attached = false;
            e.acker = None;
            {
                let mut q = e.shared.lock();
                q.epoch = 0;
                q.window.reset();
                q.items.retain(|b| b.item.is_err());
            }
            if fail_pending && let Some(reply) = e.reply.take() {
                let _ = reply.send(Err(unavailable(&server)));
                return false;
            }
            true
        });
        if fail_pending {
            for (id, ..) in std::mem::take(&mut self.out.requests) {
                if let Some(reply) = self.requests.remove(&id) {
                    let _ = reply.send(Err(unavailable(&server)));
                }
            }
        }
    }

    /// Stops the task: fails what is left (`why`, or `Closed`), ends every consumer, answers
    /// close calls, and publishes [`ConnectionState::Closed`].
    fn shutdown(mut self, why: Option<Error>) {
        self.shared.closed.store(true, Ordering::Release);
        self.online = false;
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            self.on_command(cmd); // refused: closing or offline
        }
        let abandoned = self.publishes.len();
        let publish_error = why.clone().unwrap_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the client closed before this publish was confirmed (deadline \
                     `client.request_timeout` = {:?}); its outcome is unknown",
                    self.shared.config.request_timeout
                ),
            )
        });
        for (_, p) in std::mem::take(&mut self.publishes) {
            let _ = p.reply.send(Err(publish_error.clone()));
        }
        self.check_flushes();
        let closed = why.clone().unwrap_or_else(|| Error::closed("the client"));
        for (_, reply) in self.settles.drain() {
            let _ = reply.send(Err(lease_lost()));
        }
        for (_, reply) in self.requests.drain() {
            let _ = reply.send(Err(closed.clone()));
        }
        for (_, e) in self.subs.drain() {
            if let Some(reply) = e.reply {
                let _ = reply.send(Err(closed.clone()));
            }
            e.shared.end(why.clone());
        }
        for done in std::mem::take(&mut self.out.on_written) {
            let _ = done.send(());
        }
        let result = match (&why, abandoned) {
            (Some(e), _) => Err(e.clone()),
            (None, 0) => Ok(()),
            (None, n) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{n} publishes were not confirmed before the close deadline \
                     (`client.request_timeout`); their outcome is unknown"
                ),
            )),
        };
        for reply in self.closing.take().into_iter().flat_map(|c| c.replies) {
            let _ = reply.send(result.clone());
        }
        self.state.send_replace(ConnectionState::Closed);
        tracing::debug!(server = %self.server, "client closed");
    }
}

/// Sleeps until `at`, or forever if `None`.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The error of calls made while disconnected in [`WhenDisconnected::Fail`] mode.
pub(crate) fn unavailable(server: &str) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!(
            "not connected to {server} (reconnecting); set `client.when_disconnected = wait` to \
             hold publishes until reconnected"
        ),
    )
}

/// The error of settling a delivery whose connection or subscription is gone.
pub(crate) fn lease_lost() -> Error {
    Error::new(
        ErrorKind::LeaseExpired,
        "the lease was lost with its connection or subscription; the server released the \
         message and will redeliver it",
    )
}
