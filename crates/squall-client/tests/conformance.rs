//! The universal conformance suite (`squall-testkit`) through the client, against a real
//! `squall serve` on 127.0.0.1. Each case gets its own server; every `backend()` call is a new
//! client (a new connection), so closing one case's publisher never stops its consumers.
//! `restart` restarts the server on the same port and storage and hands back the first client,
//! once it has reconnected by itself.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use squall_broker::config::DEFAULT_MAX_PAYLOAD;
use squall_client::Client;
use squall_core::{Backend, Capabilities, Durability, Result};
use squall_testkit::{Harness, Timing};
use support::{TestServer, wait_reconnected};

struct ClientHarness {
    server: tokio::sync::Mutex<Option<TestServer>>,
    clients: Mutex<Vec<Client>>,
}

impl ClientHarness {
    fn new() -> Self {
        ClientHarness {
            server: tokio::sync::Mutex::new(None),
            clients: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl Harness for ClientHarness {
    fn name(&self) -> String {
        "client".into()
    }

    /// What a client reports for a server with the default broker settings.
    fn capabilities(&self) -> Capabilities {
        Capabilities::all_native(DEFAULT_MAX_PAYLOAD, Durability::Fsynced)
    }

    async fn backend(&self) -> Result<Arc<dyn Backend>> {
        let mut server = self.server.lock().await;
        if server.is_none() {
            *server = Some(TestServer::start().await);
        }
        let client = Client::connect(server.as_ref().expect("started").client_config()).await?;
        self.clients.lock().unwrap().push(client.clone());
        Ok(Arc::new(client))
    }

    async fn restart(&self) -> Result<Option<Arc<dyn Backend>>> {
        let mut server = self.server.lock().await;
        let Some(server) = server.as_mut() else {
            return Ok(None);
        };
        let first = self.clients.lock().unwrap().first().cloned();
        let Some(client) = first else {
            server.restart().await?;
            return Ok(None);
        };
        let before = client.reconnects();
        server.restart().await?;
        wait_reconnected(&client, before, Duration::from_secs(10)).await?;
        Ok(Some(Arc::new(client)))
    }

    fn timing(&self) -> Timing {
        Timing::real()
    }
}

squall_testkit::conformance_tests!(real, ClientHarness::new);
