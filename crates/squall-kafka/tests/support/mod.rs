//! Shared by the adapter's tests: the broker URL (from `SQUALL_KAFKA_URL`), a conformance
//! harness ([`KafkaHarness`]), plain rdkafka clients as another application would use, and the
//! deletion of every topic and group a test created once its clients are closed.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use squall_core::{Backend, Publisher, Result};
use squall_kafka::{KafkaBackend, KafkaConfig};
use squall_testkit::{PeerHarness, PeerScope, peer_url};

/// `SQUALL_KAFKA_URL`, or `None` with a printed notice when it is unset; unset under
/// `SQUALL_REQUIRE_PEERS=1` fails the test.
pub fn kafka_url() -> Option<String> {
    peer_url("SQUALL_KAFKA_URL", "the Kafka adapter")
}

/// Options every test adds: short group sessions (tansu makes a join wait about half the
/// session timeout), quick topic discovery, and, unless the URL says otherwise, the storage of
/// the tansu the peers script starts (`memory://`), so acks claim no more than `memory`.
pub fn test_url(base: &str, extra: &str) -> String {
    let mut opts = vec![
        "session_timeout=2s",
        "heartbeat=200ms",
        "metadata_refresh=500ms",
    ];
    if !base.contains("storage=") {
        opts.push("storage=memory");
    }
    if !extra.is_empty() {
        opts.push(extra);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", opts.join("&"))
}

/// Eight random hex characters.
pub fn tag() -> String {
    let s = uuid::Uuid::now_v7().simple().to_string();
    s[s.len() - 8..].to_string()
}

/// One test's Kafka: the handles it opened, extra topics it made, and on drop the closing of
/// those handles and the deletion of every topic they created (after their consumers are
/// closed: deleting a topic a live librdkafka consumer is assigned crashes it on tansu).
pub struct Scope {
    pub url: String,
    backends: Mutex<Vec<KafkaBackend>>,
    extra_topics: Mutex<Vec<String>>,
}

/// Logs to stderr when `RUST_LOG` is set (e.g. `RUST_LOG=squall_kafka=debug`).
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

impl Scope {
    pub fn new(base: &str, extra: &str) -> Scope {
        init_tracing();
        Scope {
            url: test_url(base, extra),
            backends: Mutex::new(Vec::new()),
            extra_topics: Mutex::new(Vec::new()),
        }
    }

    pub fn config(&self) -> KafkaConfig {
        KafkaConfig::from_url(&self.url).expect("test URL")
    }

    /// A new handle (its own producer and clients).
    pub async fn backend(&self) -> Result<KafkaBackend> {
        let b = squall_kafka::connect_url(&self.url).await?;
        self.backends.lock().unwrap().push(b.clone());
        Ok(b)
    }

    /// Deletes `topic` too when the scope ends.
    pub fn also_delete(&self, topic: &str) {
        self.extra_topics.lock().unwrap().push(topic.to_string());
    }

    /// The librdkafka settings of a plain client of the same broker.
    pub fn plain_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.config().bootstrap());
        c
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let backends: Vec<KafkaBackend> = self.backends.lock().unwrap().drain(..).collect();
        let mut topics: Vec<String> = self.extra_topics.lock().unwrap().drain(..).collect();
        let bootstrap = self.config().bootstrap();
        squall_testkit::peers::block_on_in_thread(async move {
            for b in &backends {
                let _ = Publisher::close(b).await;
            }
            let mut groups = Vec::new();
            for b in &backends {
                let open = b.wait_consumers_closed(Duration::from_secs(60));
                if open > 0 {
                    eprintln!("cleanup: {open} consumers still open; topics kept");
                    return;
                }
                topics.extend(b.created_topics());
                groups.extend(b.used_groups());
            }
            if let Some(b) = backends.first()
                && let Err(e) = b.delete_groups(&groups).await
            {
                eprintln!("cleanup: deleting groups {groups:?}: {e}");
            }
            drop(backends);
            topics.sort();
            topics.dedup();
            if topics.is_empty() {
                return;
            }
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .expect("admin client");
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            match admin.delete_topics(&refs, &AdminOptions::new()).await {
                Ok(rs) => {
                    for r in rs {
                        if let Err((t, code)) = r {
                            eprintln!("cleanup: deleting topic {t}: {code}");
                        }
                    }
                }
                Err(e) => eprintln!("cleanup: deleting {topics:?}: {e}"),
            }
        });
    }
}

/// The conformance harness: one [`Scope`] per case, a new handle per `backend()` call, no
/// restart (the machine's tansu is shared, and keeps nothing across restarts anyway).
pub type KafkaHarness = PeerHarness<Scope>;

/// A [`KafkaHarness`] with `extra` adapter options.
pub fn kafka_harness(base: &str, extra: &str) -> KafkaHarness {
    let scope = Scope::new(base, extra);
    PeerHarness::new("kafka", squall_kafka::capabilities(&scope.config()), scope)
}

#[async_trait]
impl PeerScope for Scope {
    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(self.backend().await?))
    }
}

/// Waits up to `limit` for `cond`, checking every 50 ms.
pub async fn eventually<F, Fut>(limit: Duration, cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    squall_testkit::eventually_async(limit, Duration::from_millis(50), cond).await
}
