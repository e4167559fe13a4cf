//! [`Client`]: the cloneable handle, and its implementations of the `squall-core` traits.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{
    Backend, Capabilities, Consumer, Durability, Error, ErrorKind, Message, PendingAck, Publisher,
    Requester, Result, Subscriber, Subscription,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::batch::publish_item_len;
use crate::config::{ClientConfig, WhenDisconnected};
use crate::consumer::ClientConsumer;
use crate::driver::{Command, Driver, PendingPublish, unavailable};
use crate::session;
use crate::state::{ConnectionState, Shared};

/// A connection to `squall serve`, implementing [`Publisher`], [`Subscriber`], [`Requester`] and
/// [`Backend`].
///
/// Cheap to clone: every clone talks to the same connection task, which owns the socket,
/// batches what all clones send, and reconnects when the connection dies (see the
/// [crate documentation](crate) for what survives a reconnect). The task stops after
/// [`close`](Self::close), or once every clone, consumer and delivery is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    state: watch::Receiver<ConnectionState>,
    server: String,
}

impl Client {
    /// Connects (one attempt, within `connect_timeout`) and starts the connection task. Fails
    /// with [`ErrorKind::InvalidConfig`] on a bad configuration (naming the key), or with the
    /// connection's error ([`ErrorKind::Unavailable`], [`ErrorKind::Timeout`], or the server's
    /// refusal). Later losses of the connection are repaired by reconnecting.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let server = config.server()?;
        let conn = session::connect(&config, &server).await?;
        let connected = ConnectionState::Connected {
            server: conn.welcome.server_name.clone(),
        };
        let (state_tx, state) = watch::channel(connected);
        let (commands, rx) = mpsc::channel(config.command_queue);
        let shared = Arc::new(Shared::new(config, conn.welcome.clone()));
        let driver = Driver {
            shared: shared.clone(),
            commands: rx,
            commands_tx: commands.downgrade(),
            state: state_tx,
            server: server.clone(),
            epoch: 0,
            online: false,
            goodbye: false,
            next_request: 0,
            next_sub: 1,
            publishes: Default::default(),
            unsent: Default::default(),
            in_flight: 0,
            subs: Default::default(),
            subscribe_requests: Default::default(),
            settles: Default::default(),
            requests: Default::default(),
            out: Default::default(),
            flushes: Vec::new(),
            closing: None,
        };
        tokio::spawn(driver.run(conn));
        Ok(Client {
            inner: Arc::new(Inner {
                commands,
                shared,
                state,
                server,
            }),
        })
    }

    /// Connects to `url` (`squall://host[:port][?options]`, see [`ClientConfig::from_url`]).
    pub async fn connect_url(url: &str) -> Result<Client> {
        Client::connect(ClientConfig::from_url(url)?).await
    }

    /// The connection's state, as it changes: `Connected`, then `Disconnected`/`Connecting`
    /// during an outage, and finally `Closed`.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.inner.state.borrow().is_connected()
    }

    /// Successful reconnects so far (also counted in `squall_client_reconnects_total`).
    pub fn reconnects(&self) -> u64 {
        self.inner.shared.reconnects.load(Ordering::Relaxed)
    }

    /// The server, as `host:port`.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The configuration the client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.shared.config
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.shared.is_closed() {
            return Err(Error::closed("the client"));
        }
        Ok(())
    }

    fn check_payload(&self, msg: &Message) -> Result<()> {
        let max = self.inner.shared.welcome().max_payload as usize;
        if msg.payload().len() > max {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "payload of {} bytes exceeds the server's limit of {max} (set \
                     `broker.max_payload` on the server)",
                    msg.payload().len()
                ),
            ));
        }
        Ok(())
    }

    /// Sends `make(reply)` to the connection task and waits for the answer, at most `timeout`.
    async fn call<T>(
        &self,
        timeout: Duration,
        what: &str,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let sent = self.inner.commands.send(make(reply)).await;
        sent.map_err(|_| Error::closed("the client"))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::closed("the client")),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{what} took longer than {timeout:?} (set `client.request_timeout`)"),
            )),
        }
    }

    /// The server's statistics of every stream, as JSON (a `_sys.stats` system request; see
    /// `docs/protocol.md`).
    pub async fn stats_json(&self, timeout: Duration) -> Result<String> {
        let req = Message::builder("_sys.stats")?.build();
        let reply = Requester::request(self, req, timeout).await?;
        String::from_utf8(reply.payload().to_vec())
            .map_err(|e| Error::new(ErrorKind::Protocol, "statistics are not UTF-8").with_source(e))
    }

    /// Waits for every confirm, unsubscribes every consumer, closes the socket and stops the
    /// connection task. Publishes still unconfirmed after `client.request_timeout` fail with
    /// [`ErrorKind::Unavailable`] (outcome unknown) and `close` returns [`ErrorKind::Timeout`].
    /// Afterwards every call fails with [`ErrorKind::Closed`] and consumers end. Closing twice
    /// is harmless.
    pub async fn close(&self) -> Result<()> {
        let first = !self.inner.shared.closed.swap(true, Ordering::AcqRel);
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Close { reply })
            .await
            .is_err()
        {
            return Ok(()); // the task already stopped
        }
        match rx.await {
            Ok(result) if first => result,
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Publisher for Client {
    /// Queues `msg` for the connection task and returns once it is queued; the confirm is the
    /// second await. Waits while `client.publish_buffer` publishes are unconfirmed; while
    /// disconnected, fails with [`ErrorKind::Unavailable`] (`when_disconnected = fail`) or queues
    /// (`wait`) until the buffer is full, then fails with [`ErrorKind::Full`].
    ///
    /// Once `send` returned, the publish is held until confirmed, across reconnects (re-sent with
    /// its id). Cancelling `send` while it waits for room hands nothing over; cancelling it
    /// after that may or may not have handed the message over (as the trait says).
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        self.check_open()?;
        self.check_payload(&msg)?;
        let shared = &self.inner.shared;
        let permits = shared.publish_permits.clone();
        let permit = loop {
            self.check_open()?;
            if !self.is_connected() {
                break match shared.config.when_disconnected {
                    WhenDisconnected::Fail => return Err(unavailable(&self.inner.server)),
                    WhenDisconnected::Wait => permits.try_acquire_owned().map_err(|_| {
                        Error::new(
                            ErrorKind::Full,
                            format!(
                                "{} publishes are waiting for the connection to {} (set \
                                 `client.publish_buffer`)",
                                shared.config.publish_buffer, self.inner.server
                            ),
                        )
                    })?,
                };
            }
            // Connected and the buffer is full: wait for a confirm (backpressure), unless the
            // connection drops meanwhile; then `when_disconnected` decides.
            let mut state = self.inner.state.clone();
            tokio::select! {
                p = permits.clone().acquire_owned() => {
                    break p.map_err(|_| Error::closed("the client"))?;
                }
                _ = state.wait_for(|s| !s.is_connected()) => {}
            }
        };
        let (reply, rx) = oneshot::channel();
        let size = publish_item_len(&msg);
        let publish = PendingPublish {
            message: msg,
            size,
            reply,
            _permit: permit,
        };
        (self.inner.commands.send(Command::Publish(publish)).await)
            .map_err(|_| Error::closed("the client"))?;
        Ok(PendingAck::channel(rx))
    }

    async fn flush(&self) -> Result<()> {
        self.check_open()?;
        let timeout = self.inner.shared.config.request_timeout;
        self.call(timeout, "flush", |reply| Command::Flush { reply })
            .await
    }

    /// Closes the whole client (see [`Client::close`]), as closing the embedded broker's handle
    /// closes the broker.
    async fn close(&self) -> Result<()> {
        Client::close(self).await
    }
}

#[async_trait]
impl Subscriber for Client {
    /// Subscribes with a credit window of `client.prefetch`. Waits for the server's answer at
    /// most `client.request_timeout`.
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        self.check_open()?;
        sub.validate()?;
        let timeout = self.inner.shared.config.request_timeout;
        let shared = self
            .call(timeout, "subscribing", |reply| Command::Subscribe {
                subscription: sub,
                reply,
            })
            .await?;
        Ok(Box::new(ClientConsumer::new(
            shared,
            self.inner.commands.clone(),
            self.inner.shared.clone(),
        )))
    }
}

#[async_trait]
impl Requester for Client {
    /// Sends a `Request` frame; the server adds the reply subject and correlation id. Times out
    /// on both sides: the server stops waiting after `timeout`, and so does the client (counted
    /// from this call, queueing included).
    async fn request(&self, msg: Message, timeout: Duration) -> Result<Message> {
        self.check_open()?;
        self.check_payload(&msg)?;
        let deadline = Instant::now() + timeout;
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Request {
            message: msg,
            deadline,
            reply,
        };
        (self.inner.commands.send(cmd).await).map_err(|_| Error::closed("the client"))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::closed("the client")),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("no reply within {timeout:?}"),
            )),
        }
    }
}

impl Backend for Client {
    /// The capabilities of the server's embedded broker, which this client mirrors without
    /// asking (protocol version 1 has no capability query): every feature native, `max_payload`
    /// from the server's Welcome, and up to `Fsynced` durability (each ack states what was
    /// actually reached; a server on memory storage acks `Memory`).
    fn capabilities(&self) -> Capabilities {
        let max_payload = self.inner.shared.welcome().max_payload as usize;
        Capabilities::all_native(max_payload, Durability::Fsynced)
    }

    fn name(&self) -> &str {
        "client"
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.server)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}
