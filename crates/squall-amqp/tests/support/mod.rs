//! Shared by the adapter's tests: the broker URL (from `SQUALL_AMQP_URL`), unique exchange names,
//! a conformance harness ([`AmqpHarness`]), and cleanup of everything a test declared.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use squall_amqp::{AmqpBackend, AmqpConfig};
use squall_core::{Backend, Result};
use squall_testkit::{PeerHarness, PeerScope, peer_url};
// Not every test binary uses each of these.
#[allow(unused_imports)]
pub use squall_testkit::{eventually, with_options};

/// `SQUALL_AMQP_URL`, or `None` with a printed notice when it is unset; unset under
/// `SQUALL_REQUIRE_PEERS=1` fails the test.
pub fn amqp_url() -> Option<String> {
    peer_url("SQUALL_AMQP_URL", "the RabbitMQ adapter")
}

/// A fresh exchange name: `squall.t.<label>.<8 hex>`.
pub fn unique_exchange(label: &str) -> String {
    let s = uuid::Uuid::now_v7().simple().to_string();
    format!("squall.t.{label}.{}", &s[s.len() - 8..])
}

/// One test's RabbitMQ: a unique exchange, the handles opened on it, and cleanup on drop of
/// every exchange and durable queue they declared (plus any named with [`Scope::also_delete`]).
pub struct Scope {
    pub base: String,
    pub exchange: String,
    pub url: String,
    backends: Mutex<Vec<AmqpBackend>>,
    extra_queues: Mutex<Vec<String>>,
}

impl Scope {
    /// A scope for `label` with extra adapter `options` (`key=value&...`).
    pub fn new(base: &str, label: &str, options: &str) -> Scope {
        let exchange = unique_exchange(label);
        let mut opts = format!("exchange={exchange}");
        if !options.is_empty() {
            opts.push('&');
            opts.push_str(options);
        }
        Scope {
            base: base.to_string(),
            url: with_options(base, &opts),
            exchange,
            backends: Mutex::new(Vec::new()),
            extra_queues: Mutex::new(Vec::new()),
        }
    }

    pub fn config(&self) -> AmqpConfig {
        AmqpConfig::from_url(&self.url).expect("test URL")
    }

    /// A new handle (a new connection).
    pub async fn backend(&self) -> Result<AmqpBackend> {
        let b = AmqpBackend::connect_url(&self.url).await?;
        self.backends.lock().unwrap().push(b.clone());
        Ok(b)
    }

    /// Deletes `queue` too when the scope ends.
    pub fn also_delete(&self, queue: &str) {
        self.extra_queues.lock().unwrap().push(queue.to_string());
    }

    /// A plain AMQP connection, as another client would have.
    pub async fn plain(&self) -> Connection {
        Connection::connect(&self.base, ConnectionProperties::default())
            .await
            .expect("plain AMQP connection")
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let mut queues: Vec<String> = self.extra_queues.lock().unwrap().drain(..).collect();
        let mut exchanges = vec![self.exchange.clone(), format!("{}.delay", self.exchange)];
        for b in self.backends.lock().unwrap().drain(..) {
            let d = b.declared();
            queues.extend(d.queues);
            exchanges.extend(d.exchanges);
        }
        queues.sort();
        queues.dedup();
        exchanges.sort();
        exchanges.dedup();
        let base = self.base.clone();
        squall_testkit::peers::block_on_in_thread(async move {
            let Ok(conn) = Connection::connect(&base, ConnectionProperties::default()).await else {
                eprintln!("cleanup: cannot connect to delete {queues:?}");
                return;
            };
            for q in &queues {
                if let Ok(ch) = conn.create_channel().await
                    && let Err(e) = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await
                {
                    eprintln!("cleanup: deleting queue {q}: {e}");
                }
            }
            for x in &exchanges {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "cleanup".into()).await;
        });
    }
}

/// The conformance harness: one [`Scope`] per case (so one exchange per case), a new
/// connection per `backend()` call, and no restart (the machine's RabbitMQ is shared).
pub type AmqpHarness = PeerHarness<Scope>;

/// An [`AmqpHarness`] for `label` with extra adapter `options`.
pub fn amqp_harness(base: &str, label: &str, options: &str) -> AmqpHarness {
    let scope = Scope::new(base, label, options);
    PeerHarness::new("amqp", squall_amqp::capabilities(&scope.config()), scope)
}

#[async_trait]
impl PeerScope for Scope {
    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(self.backend().await?))
    }
}
