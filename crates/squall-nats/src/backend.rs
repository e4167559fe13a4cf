//! [`NatsBackend`]: the connection, the squall traits, and [`capabilities`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::ConnectOptions;
use async_trait::async_trait;
use squall_core::{
    Backend, Capabilities, Consumer, Durability, Error, ErrorKind, Message, PendingAck, Publisher,
    Requester, Result, Subscriber, Subscription, Support,
};

use crate::config::{HEADER_RESERVE, Mode, NatsConfig, Storage};
use crate::core_consumer::{self, CoreConsumer};
use crate::js_consumer::JsConsumer;
use crate::publish::{Js, Publishing};
use crate::request;
use crate::streams::Streams;

/// What the adapter can do with `config`, declared honestly (see the crate docs).
pub fn capabilities(config: &NatsConfig) -> Capabilities {
    use Support::{Emulated, Missing, Native};
    let mut c = Capabilities::all_native(config.max_payload, Durability::Memory);
    c.delayed_delivery = Missing;
    c.key_ordering = Missing;
    match config.mode {
        Mode::Core => {
            c.persistence = Missing;
            c.durable_groups = Missing;
            c.redelivery = Missing;
            c.nack_delay = Missing;
            c.lease_extend = Missing;
            c.dead_letter = Missing;
            c.ttl = Missing;
            c.dedup = Missing;
            c.replay_by_sequence = Missing;
            c.replay_by_time = Missing;
        }
        Mode::JetStream => {
            c.persistence = match config.storage {
                Storage::File => Native,
                Storage::Memory => Missing,
            };
            c.dead_letter = Emulated;
            c.ttl = Emulated;
            c.max_durability = match (config.storage, config.sync_always) {
                (Storage::Memory, _) => Durability::Memory,
                (Storage::File, false) => Durability::Written,
                (Storage::File, true) if config.replicas > 1 => Durability::Replicated,
                (Storage::File, true) => Durability::Fsynced,
            };
        }
    }
    c
}

/// A connection to a NATS server, used as a squall backend: core NATS or JetStream, as its
/// [`NatsConfig`] says. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct NatsBackend {
    p: Arc<Publishing>,
    caps: Capabilities,
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("server", &self.p.config.server)
            .field("mode", &self.p.config.mode)
            .finish()
    }
}

impl NatsBackend {
    /// Connects as `url` says (see [`NatsConfig::from_url`]).
    pub async fn connect_url(url: &str) -> Result<NatsBackend> {
        NatsBackend::connect(NatsConfig::from_url(url)?).await
    }

    /// Connects with `config`. Fails with `Unavailable` if the server cannot be reached,
    /// `InvalidConfig` if its `max_payload` is below the configured one plus
    /// [`HEADER_RESERVE`], and `Unsupported` if it lacks headers or (for JetStream) JetStream.
    /// Once connected, the client reconnects by itself, with backoff, for as long as it lives.
    pub async fn connect(config: NatsConfig) -> Result<NatsBackend> {
        let (connected, connections) = tokio::sync::watch::channel(0u64);
        let connected = Arc::new(connected);
        let mut opts = ConnectOptions::new()
            .name(&config.name)
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.api_timeout))
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            connected.send_modify(|n| *n += 1);
                            tracing::info!("NATS connected")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS disconnected; reconnecting")
                        }
                        other => tracing::warn!(event = %other, "NATS connection event"),
                    }
                }
            });
        if let (Some(u), Some(p)) = (&config.user, &config.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        } else if let Some(t) = &config.token {
            opts = opts.token(t.clone());
        }
        let client = opts.connect(config.server.as_str()).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("connecting to NATS at {}", config.server),
            )
            .with_source(e)
        })?;
        let info = client.server_info();
        if !info.headers {
            return Err(Error::unsupported(
                "nats",
                "a server without message headers (NATS 2.2 or later is needed)",
            ));
        }
        if info.max_payload < config.max_payload + HEADER_RESERVE {
            return Err(Error::config(
                "max_payload",
                format!(
                    "the server accepts {} bytes per message; squall needs max_payload ({}) plus {HEADER_RESERVE} for its headers",
                    info.max_payload, config.max_payload
                ),
            ));
        }
        let js = match config.mode {
            Mode::Core => None,
            Mode::JetStream => {
                if !info.jetstream {
                    return Err(Error::unsupported(
                        "nats-jetstream",
                        "this server: JetStream is not enabled (start nats-server with -js)",
                    ));
                }
                let ctx = async_nats::jetstream::ContextBuilder::new()
                    .timeout(config.api_timeout)
                    .max_ack_inflight(config.max_pending_acks)
                    .backpressure_on_inflight(true)
                    .build(client.clone());
                Some(Js {
                    streams: Streams::new(ctx.clone(), config.clone()),
                    ctx,
                })
            }
        };
        let caps = capabilities(&config);
        Ok(NatsBackend {
            p: Publishing::new(client, js, config, connections),
            caps,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.p.config
    }

    /// The underlying async-nats client (for what squall does not cover).
    pub fn client(&self) -> &async_nats::Client {
        &self.p.client
    }

    /// The JetStream streams this handle created or bound so far (empty on core NATS).
    pub fn streams(&self) -> Vec<String> {
        self.p
            .js
            .as_ref()
            .map(|js| js.streams.used())
            .unwrap_or_default()
    }

    /// The version the server reports.
    pub fn server_version(&self) -> String {
        self.p.client.server_info().version
    }

    fn check_subscription(&self, sub: &Subscription) -> Result<()> {
        sub.validate()?;
        match self.p.config.mode {
            Mode::Core => core_consumer::check(sub, self.p.backend),
            Mode::JetStream => Ok(()),
        }
    }
}

#[async_trait]
impl Publisher for NatsBackend {
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        self.p.send(msg).await
    }

    async fn flush(&self) -> Result<()> {
        self.p.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.p.closed.store(true, Ordering::Release);
        self.p.flush().await
    }
}

#[async_trait]
impl Subscriber for NatsBackend {
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        self.p.check_open()?;
        self.check_subscription(&sub)?;
        Ok(match self.p.config.mode {
            Mode::Core => Box::new(CoreConsumer::open(&self.p, sub).await?),
            Mode::JetStream => Box::new(JsConsumer::open(self.p.clone(), sub).await?),
        })
    }
}

#[async_trait]
impl Requester for NatsBackend {
    async fn request(&self, msg: Message, timeout: Duration) -> Result<Message> {
        request::request(&self.p, msg, timeout).await
    }
}

impl Backend for NatsBackend {
    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }

    fn name(&self) -> &str {
        self.p.backend
    }
}
