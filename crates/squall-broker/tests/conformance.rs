//! The squall conformance suite (`squall-testkit`) against the embedded broker, under tokio's
//! paused clock: the broker's clock follows tokio's, so 30 s leases and delays take no real time.
//!
//! Each case gets its own broker over its own [`MemoryStorage`]; `restart` closes the broker and
//! opens a new one on the same storage, as a process restart would, and `backend` reopens a broker
//! closed through `Publisher::close` (the broker handle is the backend: closing it closes every
//! clone).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use squall_broker::Broker;
use squall_broker::storage::{MemoryStorage, Storage};
use squall_core::{Backend, Capabilities, Result};
use squall_testkit::{Harness, Timing};

/// The embedded broker on in-memory storage that outlives the broker handle.
struct EmbeddedHarness {
    storage: Arc<MemoryStorage>,
    broker: Mutex<Broker>,
    capabilities: Capabilities,
}

impl EmbeddedHarness {
    /// Opens a broker; must run inside a tokio runtime.
    fn new() -> Self {
        let storage = MemoryStorage::new();
        let broker = open(&storage).expect("opening the embedded broker");
        EmbeddedHarness {
            capabilities: broker.capabilities(),
            storage,
            broker: Mutex::new(broker),
        }
    }

    /// The open broker; one closed through `Publisher::close` is reopened on the same storage,
    /// as a client would reconnect.
    fn current(&self) -> Result<Broker> {
        let mut b = self.broker.lock().expect("harness lock");
        if b.is_closed() {
            *b = open(&self.storage)?;
        }
        Ok(b.clone())
    }
}

fn open(storage: &Arc<MemoryStorage>) -> Result<Broker> {
    Broker::builder()
        .storage(storage.clone() as Arc<dyn Storage>)
        .open()
}

#[async_trait]
impl Harness for EmbeddedHarness {
    fn name(&self) -> String {
        "embedded".into()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    /// A new handle each time, as a client opens a new connection: closing one (through
    /// `Publisher::close`) leaves the others and the broker running.
    async fn backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(self.current()?.handle()))
    }

    async fn restart(&self) -> Result<Option<Arc<dyn Backend>>> {
        let old = self.broker.lock().expect("harness lock").clone();
        old.close().await?;
        drop(old);
        let new = open(&self.storage)?;
        *self.broker.lock().expect("harness lock") = new.clone();
        Ok(Some(Arc::new(new)))
    }

    fn timing(&self) -> Timing {
        Timing::paused()
    }
}

squall_testkit::conformance_tests!(paused, || EmbeddedHarness::new());

/// The suite must be able to fail: the embedded broker behind a wrapper that breaks one promise,
/// and the case guarding that promise must panic.
mod faults {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use squall_core::{
        Acker, Backend, Capabilities, Consumer, Delivery, DeliveryInfo, LeaseId, Message,
        PendingAck, PublishAck, Publisher, Requester, Result, Settle, Subscriber, Subscription,
        Timestamp,
    };
    use squall_testkit::{Case, Harness, Timing};

    use super::EmbeddedHarness;

    /// One broken promise.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// Every fifth publish is confirmed but never stored.
        LoseEveryFifthPublish,
        /// Acks report success and do nothing.
        NoopAck,
    }

    struct Faulty {
        inner: Arc<dyn Backend>,
        fault: Fault,
        sent: AtomicU64,
    }

    struct FaultyConsumer {
        inner: Box<dyn Consumer>,
        fault: Fault,
    }

    struct FaultyAcker {
        settle: Settle,
        fault: Fault,
    }

    #[async_trait]
    impl Acker for FaultyAcker {
        async fn ack(&self, _: LeaseId) -> Result<()> {
            match self.fault {
                Fault::NoopAck => Ok(()),
                Fault::LoseEveryFifthPublish => self.settle.ack().await,
            }
        }
        async fn nack(&self, _: LeaseId, delay: Duration) -> Result<()> {
            self.settle.nack(delay).await
        }
        async fn reject(&self, _: LeaseId, reason: &str) -> Result<()> {
            self.settle.reject(reason).await
        }
        async fn extend(&self, _: LeaseId, by: Duration) -> Result<Timestamp> {
            self.settle.extend(by).await
        }
    }

    #[async_trait]
    impl Consumer for FaultyConsumer {
        async fn next(&mut self) -> Option<Result<Delivery>> {
            let d = match self.inner.next().await? {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            let info = DeliveryInfo {
                attempt: d.attempt(),
                sequence: d.sequence(),
                published_at: d.published_at(),
                deadline: d.deadline(),
                group: d.group().map(Into::into),
                lease: d.lease(),
            };
            let (message, settle) = d.into_parts();
            let acker = Arc::new(FaultyAcker {
                settle,
                fault: self.fault,
            });
            Some(Ok(Delivery::new(message, info, acker)))
        }
        async fn close(&mut self) -> Result<()> {
            self.inner.close().await
        }
    }

    #[async_trait]
    impl Publisher for Faulty {
        async fn send(&self, msg: Message) -> Result<PendingAck> {
            let n = self.sent.fetch_add(1, Ordering::Relaxed);
            if let Fault::LoseEveryFifthPublish = self.fault
                && n % 5 == 4
            {
                return Ok(PendingAck::ready(Ok(PublishAck {
                    stream: None,
                    sequence: 0,
                    durability: squall_core::Durability::Memory,
                    duplicate: false,
                })));
            }
            self.inner.send(msg).await
        }
        async fn flush(&self) -> Result<()> {
            self.inner.flush().await
        }
        async fn close(&self) -> Result<()> {
            Publisher::close(self.inner.as_ref()).await
        }
    }

    #[async_trait]
    impl Subscriber for Faulty {
        async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
            let inner = self.inner.subscribe(sub).await?;
            Ok(Box::new(FaultyConsumer {
                inner,
                fault: self.fault,
            }))
        }
    }

    #[async_trait]
    impl Requester for Faulty {
        async fn request(&self, msg: Message, timeout: Duration) -> Result<Message> {
            self.inner.request(msg, timeout).await
        }
    }

    impl Backend for Faulty {
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        fn name(&self) -> &str {
            "faulty"
        }
    }

    struct FaultyHarness(EmbeddedHarness, Fault);

    #[async_trait]
    impl Harness for FaultyHarness {
        fn name(&self) -> String {
            format!("embedded with {:?}", self.1)
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        async fn backend(&self) -> Result<Arc<dyn Backend>> {
            let inner = self.0.backend().await?;
            Ok(Arc::new(Faulty {
                inner,
                fault: self.1,
                sent: AtomicU64::new(0),
            }))
        }
        async fn restart(&self) -> Result<Option<Arc<dyn Backend>>> {
            Ok(None)
        }
        fn timing(&self) -> Timing {
            Timing::paused()
        }
    }

    /// Runs `case` against the broker with `fault`; returns the failure message.
    async fn failure(fault: Fault, case: Case) -> String {
        let run = tokio::spawn(async move {
            let h = FaultyHarness(EmbeddedHarness::new(), fault);
            squall_testkit::run_case(&h, case).await;
        });
        let err = run.await.expect_err("the case passed despite the fault");
        let panic = err.into_panic();
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn lost_publishes_are_reported_missing() {
        let msg = failure(Fault::LoseEveryFifthPublish, Case::PublishSubscribe).await;
        assert!(msg.contains("missing 10"), "{msg}");
    }

    #[tokio::test(start_paused = true)]
    async fn acks_that_do_nothing_are_caught() {
        let msg = failure(Fault::NoopAck, Case::ContinueAfterSubscriberClose).await;
        assert!(msg.contains("unexpected 2"), "{msg}");
        let msg = failure(Fault::NoopAck, Case::NoAckNoNext).await;
        assert!(msg.contains("nothing arrived"), "{msg}");
    }
}
