//! One client connection: handshake, then a loop reading frames and acting on the broker.
//!
//! Tasks per connection and what each owns:
//! - the **session loop** (this module's `session`) owns the read half, the table of
//!   subscriptions and the set of unconfirmed publishes. It stops reading publishes while
//!   `max_in_flight` are unconfirmed, which pushes back on the client through TCP;
//! - the **writer** (`writer.rs`) owns the write half; everything outgoing goes through one
//!   bounded queue, and it coalesces whatever is queued into one write;
//! - one **subscription task** per subscription (`subscription.rs`) pulls deliveries from the
//!   broker only while the client has granted credit;
//! - short-lived **request tasks** run request-reply calls (bounded by a semaphore).
//!
//! All of them stop when the connection ends or the server's shutdown token fires; unsettled
//! deliveries are released to the broker (redelivered to others) when a subscription ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use squall_broker::Broker;
use squall_core::{
    Acker, Error, ErrorKind, PublishAck, Publisher, Requester, Result, Subscriber, Timestamp,
};
use squall_wire::{
    AckItem, Codec, Frame, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RemoteError, SettleItem,
    SettleOp, SettleResult, Welcome, WireAck,
};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::subscription::{SubHandle, run_subscription};
use crate::writer::write_loop;

/// Most credit a subscription may accumulate (a client cannot make the server hold more).
const MAX_CREDIT: usize = 1 << 20;

/// What every connection shares.
pub(crate) struct Shared {
    pub broker: Broker,
    pub config: ServerConfig,
    pub shutdown: CancellationToken,
}

type PublishFuture = Pin<Box<dyn Future<Output = (u64, Result<PublishAck>)> + Send>>;

/// Serves one connection to its end.
pub(crate) async fn serve(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%peer, "set_nodelay failed: {e}");
    }
    let (rd, wr) = socket.into_split();
    let mut reader = FramedRead::new(
        rd,
        Codec {
            max_frame: shared.config.max_frame,
        },
    );
    let (out, out_rx) = mpsc::channel(shared.config.outbound_queue);
    let writer = tokio::spawn(write_loop(wr, out_rx, shared.config.max_frame));
    metrics::gauge!("squall_connections").increment(1.0);
    let tasks = TaskTracker::new();
    let conn_cancel = shared.shutdown.child_token();
    let end = session(&mut reader, &out, &shared, &tasks, &conn_cancel).await;
    match &end {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(e) => {
            tracing::info!(%peer, "connection ended: {e}");
            let fatal = Frame::Error {
                request_id: 0,
                fatal: true,
                error: RemoteError::from(e),
            };
            // The writer may already be gone (peer closed); nothing more to tell it then.
            let _ = out.try_send(fatal);
        }
    }
    conn_cancel.cancel();
    tasks.close();
    if tokio::time::timeout(shared.config.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(%peer, "connection tasks did not stop within the grace period");
    }
    drop(out);
    // The writer flushes what is queued, then closes the socket.
    let _ = tokio::time::timeout(shared.config.shutdown_grace, writer).await;
    metrics::gauge!("squall_connections").decrement(1.0);
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, msg)
}

async fn send(out: &mpsc::Sender<Frame>, frame: Frame) -> Result<()> {
    out.send(frame)
        .await
        .map_err(|_| Error::new(ErrorKind::Unavailable, "connection writer stopped"))
}

async fn handshake(
    reader: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, Codec>,
    out: &mpsc::Sender<Frame>,
    shared: &Shared,
) -> Result<()> {
    let first = tokio::time::timeout(shared.config.handshake_timeout, reader.next())
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "no Hello within the handshake timeout"))?;
    let hello: Hello = match first {
        None => return Err(Error::closed("connection")),
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(Frame::Hello(h))) => h,
        Some(Ok(other)) => return Err(protocol(format!("expected Hello, got {}", other.name()))),
    };
    if hello.version < MIN_PROTOCOL_VERSION || hello.min_version > PROTOCOL_VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "client speaks protocol {}..={}, server {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}",
                hello.min_version, hello.version
            ),
        ));
    }
    if let Some(token) = &shared.config.token
        && hello.token != *token
    {
        return Err(Error::new(ErrorKind::InvalidConfig, "bad or missing token"));
    }
    let caps = squall_core::Backend::capabilities(&shared.broker);
    send(
        out,
        Frame::Welcome(Welcome {
            version: hello.version.min(PROTOCOL_VERSION),
            server_name: shared.config.server_name.clone(),
            max_frame: shared.config.max_frame as u32,
            max_payload: caps.max_payload as u32,
            max_in_flight: shared.config.max_in_flight as u32,
            heartbeat: shared.config.heartbeat,
        }),
    )
    .await?;
    tracing::debug!(client = %hello.client_name, "session open");
    Ok(())
}

async fn session(
    reader: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, Codec>,
    out: &mpsc::Sender<Frame>,
    shared: &Shared,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<()> {
    handshake(reader, out, shared).await?;
    let cfg = &shared.config;
    let mut subs: HashMap<u32, SubHandle> = HashMap::new();
    let mut publishes: FuturesUnordered<PublishFuture> = FuturesUnordered::new();
    let requests = Arc::new(Semaphore::new(cfg.max_requests));
    // The first ping after one heartbeat (a plain `interval` would ping at once).
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.heartbeat, cfg.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    let mut ping_nonce = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = out.try_send(Frame::Goodbye("server shutting down".into()));
                break;
            }
            Some((id, r)) = publishes.next(), if !publishes.is_empty() => {
                let mut acks = vec![ack_item(id, r)];
                while acks.len() < 4096 {
                    match publishes.next().now_or_never() {
                        Some(Some((id, r))) => acks.push(ack_item(id, r)),
                        _ => break,
                    }
                }
                send(out, Frame::PublishAcks(acks)).await?;
            }
            frame = reader.next(), if publishes.len() < cfg.max_in_flight => {
                let frame = match frame {
                    None => break,
                    Some(Err(e)) => {
                        metrics::counter!("squall_protocol_errors_total").increment(1);
                        return Err(e.into());
                    }
                    Some(Ok(f)) => f,
                };
                last_heard = tokio::time::Instant::now();
                handle(frame, out, shared, tasks, cancel, &mut subs, &mut publishes, &requests).await?;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > cfg.heartbeat * 3 {
                    return Err(Error::new(ErrorKind::Timeout, "client silent for three heartbeats"));
                }
                ping_nonce += 1;
                send(out, Frame::Ping(ping_nonce)).await?;
            }
        }
    }
    // Drain: confirm what was accepted, within the grace period.
    let drain = async {
        while let Some((id, r)) = publishes.next().await {
            if out
                .send(Frame::PublishAcks(vec![ack_item(id, r)]))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    if tokio::time::timeout(cfg.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!("unconfirmed publishes left at connection end");
    }
    for (_, s) in subs.drain() {
        s.cancel.cancel();
    }
    Ok(())
}

fn ack_item(request_id: u64, r: Result<PublishAck>) -> AckItem {
    AckItem {
        request_id,
        result: r
            .map(|a| WireAck {
                stream: a.stream.unwrap_or_default(),
                sequence: a.sequence,
                durability: a.durability,
                duplicate: a.duplicate,
            })
            .map_err(|e| RemoteError::from(&e)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    frame: Frame,
    out: &mpsc::Sender<Frame>,
    shared: &Shared,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
    subs: &mut HashMap<u32, SubHandle>,
    publishes: &mut FuturesUnordered<PublishFuture>,
    requests: &Arc<Semaphore>,
) -> Result<()> {
    match frame {
        Frame::Publish(items) => {
            metrics::counter!("squall_server_published_total").increment(items.len() as u64);
            for item in items {
                let id = item.request_id;
                match shared.broker.send(item.message).await {
                    Ok(pending) => publishes.push(Box::pin(pending.map(move |r| (id, r)))),
                    Err(e) => publishes.push(Box::pin(futures::future::ready((id, Err(e))))),
                }
            }
        }
        Frame::Subscribe(s) => {
            let s = *s;
            let result = if subs.len() >= shared.config.max_subscriptions {
                Err(Error::config(
                    "server.max_subscriptions",
                    "too many subscriptions on this connection",
                ))
            } else if subs.contains_key(&s.sub_id) {
                Err(Error::new(
                    ErrorKind::Conflict,
                    format!("subscription id {} is in use", s.sub_id),
                ))
            } else {
                shared.broker.subscribe(s.subscription).await
            };
            match result {
                Ok(consumer) => {
                    send(
                        out,
                        Frame::SubscribeResult {
                            request_id: s.request_id,
                            result: Ok(()),
                        },
                    )
                    .await?;
                    let handle = SubHandle {
                        credit: Arc::new(Semaphore::new((s.credit as usize).min(MAX_CREDIT))),
                        cancel: cancel.child_token(),
                        acker: Arc::new(OnceLock::new()),
                    };
                    tasks.spawn(run_subscription(
                        s.sub_id,
                        consumer,
                        handle.clone(),
                        out.clone(),
                        shared.config.max_frame,
                    ));
                    subs.insert(s.sub_id, handle);
                }
                Err(e) => {
                    let result = Err(RemoteError::from(&e));
                    send(
                        out,
                        Frame::SubscribeResult {
                            request_id: s.request_id,
                            result,
                        },
                    )
                    .await?;
                }
            }
        }
        Frame::Unsubscribe { sub_id } => {
            if let Some(s) = subs.remove(&sub_id) {
                s.cancel.cancel();
            }
        }
        Frame::Credit { sub_id, credit } => {
            if let Some(s) = subs.get(&sub_id) {
                let room = MAX_CREDIT.saturating_sub(s.credit.available_permits());
                s.credit.add_permits((credit as usize).min(room));
            }
        }
        Frame::Settle(items) => {
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                let request_id = item.request_id;
                let result = settle(subs, item).await.map_err(|e| RemoteError::from(&e));
                results.push(SettleResult { request_id, result });
            }
            send(out, Frame::SettleResults(results)).await?;
        }
        Frame::Request {
            request_id,
            timeout,
            message,
        } => {
            let Ok(permit) = requests.clone().try_acquire_owned() else {
                let e = Error::config(
                    "server.max_requests",
                    "too many concurrent requests on this connection",
                );
                return send(
                    out,
                    Frame::Reply {
                        request_id,
                        result: Err(RemoteError::from(&e)),
                    },
                )
                .await;
            };
            let broker = shared.broker.clone();
            let out = out.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let result = tokio::select! {
                    r = system_or_broker(&broker, message, timeout) => r.map_err(|e| RemoteError::from(&e)),
                    _ = cancel.cancelled() => return,
                };
                // If the connection is gone the reply has nowhere to go.
                let _ = out.send(Frame::Reply { request_id, result }).await;
                drop(permit);
            });
        }
        Frame::Ping(n) => send(out, Frame::Pong(n)).await?,
        Frame::Pong(_) => {}
        other => return Err(protocol(format!("a client may not send {}", other.name()))),
    }
    Ok(())
}

async fn settle(subs: &HashMap<u32, SubHandle>, item: SettleItem) -> Result<Timestamp> {
    let acker: Arc<dyn Acker> = subs
        .get(&item.sub_id)
        .and_then(|s| s.acker.get().cloned())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::LeaseExpired,
                format!(
                    "no live subscription {} holds lease {}",
                    item.sub_id, item.lease.sequence
                ),
            )
        })?;
    let lease = item.lease;
    match item.op {
        SettleOp::Ack => acker.ack(lease).await.map(|()| Timestamp(0)),
        SettleOp::Nack(d) => acker.nack(lease, d).await.map(|()| Timestamp(0)),
        SettleOp::Reject(reason) => acker.reject(lease, &reason).await.map(|()| Timestamp(0)),
        SettleOp::Extend(d) => {
            acker
                .extend(lease, d.min(Duration::from_secs(24 * 3600)))
                .await
        }
    }
}

/// Requests to subjects under `_sys.` are answered by the server itself; see `docs/protocol.md`.
pub const SYSTEM_PREFIX: &str = "_sys";

async fn system_or_broker(
    broker: &Broker,
    message: squall_core::Message,
    timeout: Duration,
) -> Result<squall_core::Message> {
    if message.subject().tokens().next() != Some(SYSTEM_PREFIX) {
        return broker.request(message, timeout).await;
    }
    match message.subject().as_str() {
        "_sys.stats" => {
            let stats = broker.stats().await?;
            let json = serde_json::to_vec(&stats).map_err(|e| {
                Error::new(ErrorKind::Internal, "encoding statistics").with_source(e)
            })?;
            let mut reply = squall_core::Message::new(message.subject().clone(), json);
            reply
                .headers_mut()
                .insert(squall_core::headers::CONTENT_TYPE, "application/json")?;
            Ok(reply)
        }
        other => Err(Error::new(
            ErrorKind::NotFound,
            format!("no system request `{other}` (known: _sys.stats)"),
        )),
    }
}
