//! Shared by the adapter's tests: the server URL (from `SQUALL_NATS_URL`), a conformance
//! harness ([`NatsHarness`]) over core NATS or JetStream, and deletion of every stream a test used.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{Backend, Result};
use squall_nats::{NatsBackend, NatsConfig};
use squall_testkit::{PeerHarness, PeerScope, peer_url};
// Not every test binary uses each of these.
#[allow(unused_imports)]
pub use squall_testkit::{eventually, with_options};

/// `SQUALL_NATS_URL`, or `None` with a printed notice when it is unset; unset under
/// `SQUALL_REQUIRE_PEERS=1` fails the test.
pub fn nats_url() -> Option<String> {
    peer_url("SQUALL_NATS_URL", "the NATS adapter")
}

/// Eight random hex characters.
pub fn tag() -> String {
    let s = uuid::Uuid::now_v7().simple().to_string();
    s[s.len() - 8..].to_string()
}

/// The options JetStream tests use: streams derived from the first three subject tokens
/// (`t.<case>.<tag>`), so every test has streams of its own.
pub const JS_TEST_OPTIONS: &str = "jetstream=1&stream_depth=3&stream_prefix=sqtest";

/// One test's NATS: the handles it opened, and on drop the deletion of every stream they used.
pub struct Scope {
    pub base: String,
    pub url: String,
    backends: Mutex<Vec<NatsBackend>>,
    extra_streams: Mutex<Vec<String>>,
}

impl Scope {
    pub fn new(base: &str, options: &str) -> Scope {
        Scope {
            base: base.to_string(),
            url: with_options(base, options),
            backends: Mutex::new(Vec::new()),
            extra_streams: Mutex::new(Vec::new()),
        }
    }

    pub fn config(&self) -> NatsConfig {
        NatsConfig::from_url(&self.url).expect("test URL")
    }

    /// A new handle (a new connection).
    pub async fn backend(&self) -> Result<NatsBackend> {
        let b = NatsBackend::connect_url(&self.url).await?;
        self.backends.lock().unwrap().push(b.clone());
        Ok(b)
    }

    /// Deletes `stream` too when the scope ends.
    pub fn also_delete(&self, stream: &str) {
        self.extra_streams.lock().unwrap().push(stream.to_string());
    }

    /// A plain async-nats connection, as another client would have.
    pub async fn plain(&self) -> async_nats::Client {
        let addr = NatsConfig::from_url(&self.base).expect("base URL").server;
        async_nats::connect(addr)
            .await
            .expect("plain NATS connection")
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let mut streams: Vec<String> = self.extra_streams.lock().unwrap().drain(..).collect();
        for b in self.backends.lock().unwrap().drain(..) {
            streams.extend(b.streams());
        }
        streams.sort();
        streams.dedup();
        if streams.is_empty() {
            return;
        }
        let addr = NatsConfig::from_url(&self.base).expect("base URL").server;
        squall_testkit::peers::block_on_in_thread(async move {
            let Ok(client) = async_nats::connect(addr).await else {
                eprintln!("cleanup: cannot connect to delete {streams:?}");
                return;
            };
            let js = async_nats::jetstream::new(client);
            for s in &streams {
                if let Err(e) = js.delete_stream(s).await {
                    eprintln!("cleanup: deleting stream {s}: {e}");
                }
            }
        });
    }
}

/// The conformance harness: one [`Scope`] per case, a new connection per `backend()` call, no
/// restart (the machine's NATS server is shared; tests/restart.rs has a private server that is
/// restarted).
pub type NatsHarness = PeerHarness<Scope>;

/// A [`NatsHarness`] named `name` in reports, with adapter `options`.
pub fn nats_harness(base: &str, options: &str, name: &str) -> NatsHarness {
    let scope = Scope::new(base, options);
    PeerHarness::new(name, squall_nats::capabilities(&scope.config()), scope)
}

#[async_trait]
impl PeerScope for Scope {
    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(self.backend().await?))
    }
}

/// Waits until the server processed everything `client` sent (its `flush` only empties the
/// socket buffer): a message to a private inbox returns only after what preceded it.
pub async fn round_trip(client: &async_nats::Client) {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .expect("publish");
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("round trip within 5 s")
        .expect("connection open");
}

/// The chaos lab's fault proxy in front of the server at `base`, and `base` through it.
pub async fn proxied(base: &str, name: &str) -> (squall_chaos::proxy::ProxyHandle, String) {
    let upstream = squall_chaos::runner::target::host_port(base).expect("host:port in the URL");
    let proxy = squall_chaos::proxy::Proxy::new("127.0.0.1:0".parse().unwrap(), upstream)
        .name(name)
        .spawn()
        .await
        .expect("starting the proxy");
    let url = squall_chaos::runner::target::via(base, &proxy.listen_addr().to_string())
        .expect("a proxied URL");
    (proxy, url)
}
