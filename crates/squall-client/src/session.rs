//! One connection: the handshake ([`connect`]), then [`Driver::session`], which reads frames,
//! serves commands and writes batches until the connection dies or the client closes.
//!
//! Writes are batched: whatever accumulated while the previous write was in progress (publishes,
//! settles, credits...) is encoded into as few frames as the budgets allow (`batch.rs`) and
//! written with one flush of the `FramedWrite`. Reading, commands and the flush are branches of
//! one `select!`, so a slow socket never stops confirms from being read.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use squall_core::{Delivery, DeliveryInfo, Error, ErrorKind, PublishAck, Result};
use squall_wire::{
    AckItem, Codec, DeliverItem, Frame, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, PublishItem,
    RemoteError, Subscribe, Welcome, WireError,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::batch::{self, MAX_SMALL_ITEMS, WRITE_BUDGET};
use crate::config::ClientConfig;
use crate::consumer::{Buffered, SubShared};
use crate::driver::{Driver, sleep_until};
use crate::state::ConnectionState;

/// How often a session checks the heartbeat, request deadlines and the close deadline.
const TICK: Duration = Duration::from_millis(100);
/// Commands handled per wake-up before the session writes, so a busy producer cannot starve the
/// socket.
const MAX_DRAIN: usize = 4096;
/// How long a closing session may take to write its Unsubscribe frames.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

type Reader = FramedRead<OwnedReadHalf, Codec>;
type Writer = FramedWrite<OwnedWriteHalf, Codec>;

/// An open, greeted connection.
pub(crate) struct Conn {
    reader: Reader,
    writer: Writer,
    pub welcome: Welcome,
}

/// Why a session ended.
pub(crate) enum SessionEnd {
    /// The client closed (gracefully).
    Closed,
    /// The connection died; reconnect.
    Lost(Error),
}

fn wire_error(server: &str, what: &str, e: WireError) -> Error {
    let kind = match e {
        WireError::Io(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Protocol,
    };
    Error::new(kind, format!("{what} {server} failed")).with_source(e)
}

/// Opens a TCP connection to `server` and greets it (Hello → Welcome), within
/// `client.connect_timeout`.
pub(crate) async fn connect(config: &ClientConfig, server: &str) -> Result<Conn> {
    let attempt = async {
        let stream = TcpStream::connect(server).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot connect to {server}"),
            )
            .with_source(e)
        })?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut reader = FramedRead::new(r, Codec::default());
        let mut writer = FramedWrite::new(w, Codec::default());
        // Frames are only ever flushed explicitly, once per batch.
        writer.set_backpressure_boundary(usize::MAX);
        let hello = Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            min_version: MIN_PROTOCOL_VERSION,
            client_name: config.name.clone(),
            token: config.token.clone().unwrap_or_default(),
        });
        (writer.send(hello).await).map_err(|e| wire_error(server, "greeting", e))?;
        let welcome = match reader.next().await {
            Some(Ok(Frame::Welcome(w))) => w,
            Some(Ok(Frame::Error { error, .. })) => {
                return Err(Error::new(
                    error.kind,
                    format!("{server} refused the session: {}", error.message),
                ));
            }
            Some(Ok(other)) => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "{server} answered Hello with {} instead of Welcome",
                        other.name()
                    ),
                ));
            }
            Some(Err(e)) => return Err(wire_error(server, "greeting", e)),
            None => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("{server} closed the connection during the handshake"),
                ));
            }
        };
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&welcome.version) {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("{server} chose protocol version {}", welcome.version),
            ));
        }
        reader.decoder_mut().max_frame = welcome.max_frame as usize;
        writer.encoder_mut().max_frame = welcome.max_frame as usize;
        Ok(Conn {
            reader,
            writer,
            welcome,
        })
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "connecting to {server} took longer than {:?} (set `client.connect_timeout`)",
                config.connect_timeout
            ),
        )),
    }
}

fn to_ack(a: squall_wire::WireAck) -> PublishAck {
    PublishAck {
        stream: (!a.stream.is_empty()).then_some(a.stream),
        sequence: a.sequence,
        durability: a.durability,
        duplicate: a.duplicate,
    }
}

/// Whether a failed confirm received after Goodbye means "the server is going away" (re-send
/// on the next connection) rather than a verdict on the message.
fn shutting_down(e: &RemoteError) -> bool {
    matches!(e.kind, ErrorKind::Closed | ErrorKind::Unavailable)
}

impl Driver {
    /// Runs one connection until it dies ([`SessionEnd::Lost`]) or the client has closed.
    pub(crate) async fn session(&mut self, conn: Conn) -> SessionEnd {
        let Conn {
            mut reader,
            mut writer,
            welcome,
        } = conn;
        self.attach(&welcome);
        let max_in_flight = (welcome.max_in_flight as usize).max(1);
        let frame_budget = batch::frame_budget(welcome.max_frame as usize);
        let dead_after = welcome.heartbeat.saturating_mul(3);
        let mut last_heard = Instant::now();
        let mut tick = tokio::time::interval(TICK.min(welcome.heartbeat).max(TICK / 10));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Fired when the write in progress completes.
        let mut writing: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            if self.close_due() {
                return self.finish_close(writer, writing).await;
            }
            if writer.write_buffer().is_empty() {
                let frames = self.next_batch(max_in_flight, frame_budget);
                for frame in frames {
                    if let Err(e) = writer.feed(frame).await {
                        return SessionEnd::Lost(wire_error(&self.server, "encoding for", e));
                    }
                }
                writing.append(&mut self.out.on_written);
            }
            let pending_write = !writer.write_buffer().is_empty();
            let deadline = self.closing.as_ref().map(|c| c.deadline);
            tokio::select! {
                biased;
                r = SinkExt::<Frame>::flush(&mut writer), if pending_write => match r {
                    Ok(()) => writing.drain(..).for_each(|done| { let _ = done.send(()); }),
                    Err(e) => return SessionEnd::Lost(wire_error(&self.server, "writing to", e)),
                },
                frame = reader.next() => match frame {
                    Some(Ok(frame)) => {
                        last_heard = Instant::now();
                        if let Err(e) = self.on_frame(frame) {
                            return SessionEnd::Lost(e);
                        }
                    }
                    Some(Err(e)) => {
                        return SessionEnd::Lost(wire_error(&self.server, "reading from", e));
                    }
                    None => {
                        let msg = format!("{} closed the connection", self.server);
                        return SessionEnd::Lost(Error::new(ErrorKind::Unavailable, msg));
                    }
                },
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => {
                        self.on_command(cmd);
                        for _ in 0..MAX_DRAIN {
                            match self.commands.try_recv() {
                                Ok(cmd) => self.on_command(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                    None => self.begin_close(None),
                },
                () = self.shared.wake.notified() => self.on_wake(),
                _ = tick.tick() => {
                    if last_heard.elapsed() > dead_after {
                        let msg = format!(
                            "no frame from {} for {dead_after:?} (three heartbeats); \
                             the connection is dead",
                            self.server
                        );
                        return SessionEnd::Lost(Error::new(ErrorKind::Unavailable, msg));
                    }
                    self.requests.retain(|_, reply| !reply.is_closed());
                }
                () = sleep_until(deadline), if deadline.is_some() => {}
            }
        }
    }

    /// Starts a connection: a new epoch, every subscription resubscribed, every unconfirmed
    /// publish queued for (re-)sending.
    fn attach(&mut self, welcome: &Welcome) {
        self.epoch += 1;
        self.online = true;
        self.goodbye = false;
        self.in_flight = 0;
        self.shared.set_welcome(welcome.clone());
        let mut ids: Vec<u32> = self.subs.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(mut entry) = self.subs.remove(&id) {
                self.attach_sub(id, &mut entry);
                self.subs.insert(id, entry);
            }
        }
        self.state.send_replace(ConnectionState::Connected {
            server: welcome.server_name.clone(),
        });
    }

    /// Everything to write now, as frames: control frames first, then settles, then as many
    /// publishes as the server's in-flight window and the budgets allow, then requests.
    fn next_batch(&mut self, max_in_flight: usize, frame_budget: usize) -> Vec<Frame> {
        let mut frames: Vec<Frame> = self.out.pongs.drain(..).map(Frame::Pong).collect();
        let unsubscribes = self.out.unsubscribes.drain(..);
        frames.extend(unsubscribes.map(|sub_id| Frame::Unsubscribe { sub_id }));
        if !self.goodbye {
            for (request_id, sub_id) in std::mem::take(&mut self.out.subscribes) {
                let Some(entry) = self.subs.get_mut(&sub_id) else {
                    self.subscribe_requests.remove(&request_id);
                    continue;
                };
                entry.attached = true;
                frames.push(Frame::Subscribe(Box::new(Subscribe {
                    request_id,
                    sub_id,
                    subscription: entry.shared.resubscription(&entry.subscription),
                    credit: self.shared.config.prefetch,
                })));
            }
        }
        let credits = self.out.credits.drain(..);
        frames.extend(credits.map(|(sub_id, credit)| Frame::Credit { sub_id, credit }));
        while !self.out.settles.is_empty() {
            let n = self.out.settles.len().min(MAX_SMALL_ITEMS);
            frames.push(Frame::Settle(self.out.settles.drain(..n).collect()));
        }
        if self.goodbye {
            return frames;
        }
        let room = max_in_flight.saturating_sub(self.in_flight);
        let sizes = self
            .unsent
            .iter()
            .map(|id| self.publishes.get(id).map_or(0, |p| p.size));
        for n in batch::pack(sizes, frame_budget, WRITE_BUDGET, room) {
            let mut items = Vec::with_capacity(n);
            for id in self.unsent.drain(..n) {
                if let Some(p) = self.publishes.get(&id) {
                    items.push(PublishItem {
                        request_id: id,
                        message: p.message.clone(),
                    });
                }
            }
            self.in_flight += items.len();
            frames.push(Frame::Publish(items));
        }
        let now = Instant::now();
        while let Some((request_id, deadline, message)) = self.out.requests.pop_front() {
            let live = self
                .requests
                .get(&request_id)
                .is_some_and(|r| !r.is_closed());
            if !live || deadline <= now {
                self.requests.remove(&request_id);
                continue;
            }
            let timeout = deadline - now;
            frames.push(Frame::Request {
                request_id,
                timeout,
                message,
            });
        }
        frames
    }

    /// Handles one frame from the server. An `Err` ends the session.
    fn on_frame(&mut self, frame: Frame) -> Result<()> {
        match frame {
            Frame::Ping(nonce) => self.out.pongs.push(nonce),
            Frame::Pong(_) => {}
            Frame::PublishAcks(acks) => self.on_acks(acks),
            Frame::SubscribeResult { request_id, result } => {
                self.on_subscribe_result(request_id, result.map_err(Error::from));
            }
            Frame::Deliver(items) => self.on_deliver(items),
            Frame::SubscriptionEnded { sub_id, error } => {
                if self.goodbye && error.as_ref().is_none_or(shutting_down) {
                    // The server is shutting down: resubscribe on the next connection.
                    if let Some(e) = self.subs.get_mut(&sub_id) {
                        e.attached = false;
                    }
                } else if let Some(e) = self.subs.remove(&sub_id) {
                    e.shared.end(error.map(Error::from));
                }
            }
            Frame::SettleResults(results) => {
                for r in results {
                    if let Some(reply) = self.settles.remove(&r.request_id) {
                        let _ = reply.send(r.result.map_err(Error::from));
                    }
                }
            }
            Frame::Reply { request_id, result } => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(result.map_err(Error::from));
                }
            }
            Frame::Error {
                request_id,
                fatal,
                error,
            } => {
                let error = Error::from(error);
                if request_id != 0 {
                    self.fail_request(request_id, error.clone());
                } else if !fatal {
                    tracing::warn!(server = %self.server, %error, "server reported an error");
                }
                if fatal {
                    return Err(error);
                }
            }
            Frame::Goodbye(reason) => {
                tracing::info!(server = %self.server, %reason, "server said goodbye");
                self.goodbye = true;
            }
            other => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "{} sent a {} frame, which only clients send",
                        self.server,
                        other.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn on_acks(&mut self, acks: Vec<AckItem>) {
        for a in acks {
            if let Some(p) = self.publishes.remove(&a.request_id) {
                self.in_flight = self.in_flight.saturating_sub(1);
                match a.result {
                    Err(e) if self.goodbye && shutting_down(&e) => {
                        self.publishes.insert(a.request_id, p); // re-sent after reconnecting
                    }
                    result => drop(p.reply.send(result.map(to_ack).map_err(Error::from))),
                }
            }
        }
        self.check_flushes();
    }

    fn fail_request(&mut self, id: u64, error: Error) {
        if let Some(p) = self.publishes.remove(&id) {
            self.in_flight = self.in_flight.saturating_sub(1);
            let _ = p.reply.send(Err(error));
            self.check_flushes();
        } else if let Some(reply) = self.settles.remove(&id) {
            let _ = reply.send(Err(error));
        } else if let Some(reply) = self.requests.remove(&id) {
            let _ = reply.send(Err(error));
        } else {
            self.on_subscribe_result(id, Err(error));
        }
    }

    fn on_subscribe_result(&mut self, request_id: u64, result: Result<()>) {
        let Some(sub_id) = self.subscribe_requests.remove(&request_id) else {
            return;
        };
        let Some(entry) = self.subs.get_mut(&sub_id) else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(reply) = entry.reply.take()
                    && reply.send(Ok(entry.shared.clone())).is_err()
                {
                    // The caller gave up waiting: nobody will consume.
                    self.subs.remove(&sub_id);
                    self.out.unsubscribes.push(sub_id);
                }
            }
            Err(e) => {
                let Some(mut entry) = self.subs.remove(&sub_id) else {
                    return;
                };
                match entry.reply.take() {
                    Some(reply) => drop(reply.send(Err(e))),
                    None => {
                        tracing::warn!(server = %self.server, sub_id, error = %e, "resubscribe refused");
                        entry.shared.end(Some(e));
                    }
                }
            }
        }
    }

    fn on_deliver(&mut self, items: Vec<DeliverItem>) {
        let prefetch = self.shared.config.prefetch as usize;
        let mut touched = Vec::new();
        for item in items {
            let Some(entry) = self.subs.get(&item.sub_id) else {
                continue; // unsubscribed: the server releases it
            };
            let Some(acker) = &entry.acker else {
                continue;
            };
            let sequence = item.lease.sequence;
            let info = DeliveryInfo {
                attempt: item.attempt,
                sequence,
                published_at: item.published_at,
                deadline: item.deadline,
                group: entry.group.clone(),
                lease: item.lease,
            };
            let delivery = Delivery::new(item.message, info, acker.clone());
            let mut q = entry.shared.lock();
            if q.dropped || q.ended {
                continue;
            }
            if q.items.len() >= prefetch {
                metrics::counter!("squall_client_credit_overruns_total").increment(1);
                tracing::warn!(
                    server = %self.server,
                    sub_id = item.sub_id,
                    "server sent a delivery beyond the granted credit; dropped (it will be redelivered)"
                );
                continue;
            }
            if entry.shared.track_resume {
                SubShared::delivered(&mut q, sequence);
            }
            q.items.push_back(Buffered {
                epoch: self.epoch,
                item: Ok(delivery),
            });
            if touched.last() != Some(&item.sub_id) {
                touched.push(item.sub_id);
            }
        }
        // Wake each consumer once per frame, with the frame's deliveries all buffered.
        touched.sort_unstable();
        touched.dedup();
        for sub_id in touched {
            if let Some(entry) = self.subs.get(&sub_id) {
                entry.shared.ready.notify_one();
            }
        }
    }

    /// The close is due: unsubscribe everything, write, shut the socket down.
    async fn finish_close(
        &mut self,
        mut writer: Writer,
        writing: Vec<oneshot::Sender<()>>,
    ) -> SessionEnd {
        let attached = self.subs.iter().filter(|(_, e)| e.attached);
        let mut frames: Vec<Frame> = attached
            .map(|(&sub_id, _)| Frame::Unsubscribe { sub_id })
            .collect();
        frames.extend(
            self.out
                .unsubscribes
                .drain(..)
                .map(|sub_id| Frame::Unsubscribe { sub_id }),
        );
        let write = async {
            for f in frames {
                writer.feed(f).await?;
            }
            SinkExt::<Frame>::flush(&mut writer).await?;
            writer.get_mut().shutdown().await?;
            Ok::<(), WireError>(())
        };
        if let Ok(Err(e)) | Err(e) = tokio::time::timeout(CLOSE_WRITE, write)
            .await
            .map_err(|_| WireError::Io(std::io::ErrorKind::TimedOut.into()))
        {
            tracing::debug!(server = %self.server, error = %e, "closing write failed");
        }
        for done in writing {
            let _ = done.send(());
        }
        SessionEnd::Closed
    }
}
