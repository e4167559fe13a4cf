//! The squall conformance suite against a [`ChaosBackend`] with no rules installed, over the
//! embedded broker under tokio's paused clock: without faults the wrapper must be invisible
//! (same deliveries, leases, settles, cancel safety, close and restart behaviour).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use squall_broker::Broker;
use squall_broker::storage::{MemoryStorage, Storage};
use squall_chaos::chaos_backend::ChaosBackend;
use squall_chaos::faults::Faults;
use squall_chaos::rng::Seed;
use squall_core::{Backend, Capabilities, Result};
use squall_testkit::{Harness, Timing};

struct ChaosHarness {
    storage: Arc<MemoryStorage>,
    broker: Mutex<Broker>,
    faults: Faults,
    capabilities: Capabilities,
}

fn open(storage: &Arc<MemoryStorage>) -> Result<Broker> {
    Broker::builder()
        .storage(storage.clone() as Arc<dyn Storage>)
        .open()
}

impl ChaosHarness {
    fn new() -> Self {
        let storage = MemoryStorage::new();
        let broker = open(&storage).expect("opening the embedded broker");
        ChaosHarness {
            capabilities: broker.capabilities(),
            storage,
            broker: Mutex::new(broker),
            faults: Faults::new(Seed::new(0)),
        }
    }

    fn wrap(&self, b: Broker) -> Arc<dyn Backend> {
        Arc::new(ChaosBackend::new(Arc::new(b), self.faults.clone()))
    }
}

#[async_trait]
impl Harness for ChaosHarness {
    fn name(&self) -> String {
        "chaos+embedded".into()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn backend(&self) -> Result<Arc<dyn Backend>> {
        let b = {
            let mut b = self.broker.lock().expect("harness lock");
            if b.is_closed() {
                *b = open(&self.storage)?;
            }
            b.handle()
        };
        Ok(self.wrap(b))
    }

    async fn restart(&self) -> Result<Option<Arc<dyn Backend>>> {
        let old = self.broker.lock().expect("harness lock").clone();
        old.close().await?;
        drop(old);
        let new = open(&self.storage)?;
        *self.broker.lock().expect("harness lock") = new.clone();
        Ok(Some(self.wrap(new)))
    }

    fn timing(&self) -> Timing {
        Timing::paused()
    }
}

squall_testkit::conformance_tests!(paused, || ChaosHarness::new());
