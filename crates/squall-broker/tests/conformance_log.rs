//! The squall conformance suite (`squall-testkit`) against the embedded broker over the durable
//! [`LogStorage`] (segment files, group commit with fsync), in real time: file I/O runs on
//! threads, which tokio's paused clock would not wait for.
//!
//! Each case gets its own broker over its own data directory. `restart` closes the broker and
//! opens a new one over the same open storage, which rebuilds streams, groups and pending leases
//! from what the storage holds, as after a process restart. (Reopening the files themselves
//! would need every handle the case still holds to be dropped first: the directory is locked
//! while a storage lives. Recovery from the files after kill -9 is what `tests/log_crash.rs`
//! and `squall-cli`'s `serve_crash` test check.) `backend` reopens a broker closed through
//! `Publisher::close` on the open storage.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use squall_broker::Broker;
use squall_broker::storage::{LogConfig, LogStorage, Storage};
use squall_core::{Backend, Capabilities, Durability, Result};
use squall_testkit::{Harness, Timing};

/// The embedded broker on log storage in a temporary directory.
struct LogHarness {
    /// The data directory, removed when the harness is dropped.
    _dir: tempfile::TempDir,
    /// `None` only while `restart` reopens the storage.
    state: Mutex<Option<(Arc<LogStorage>, Broker)>>,
    capabilities: Capabilities,
}

impl LogHarness {
    /// Opens a broker; must run inside a tokio runtime.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let storage = LogStorage::open(dir.path(), LogConfig::default()).expect("opening storage");
        let broker = open(&storage).expect("opening the embedded broker");
        let capabilities = broker.capabilities();
        assert_eq!(
            capabilities.max_durability,
            Durability::Fsynced,
            "log storage in fsync mode reports fsync durability"
        );
        LogHarness {
            _dir: dir,
            state: Mutex::new(Some((storage, broker))),
            capabilities,
        }
    }

    /// The open broker; one closed through `Publisher::close` is reopened on the same storage.
    fn current(&self) -> Result<Broker> {
        let mut state = self.state.lock().expect("harness lock");
        let Some((storage, broker)) = state.as_mut() else {
            return Err(squall_core::Error::new(
                squall_core::ErrorKind::Closed,
                "the broker is restarting",
            ));
        };
        if broker.is_closed() {
            *broker = open(storage)?;
        }
        Ok(broker.clone())
    }
}

fn open(storage: &Arc<LogStorage>) -> Result<Broker> {
    Broker::builder()
        .storage(storage.clone() as Arc<dyn Storage>)
        .open()
}

#[async_trait]
impl Harness for LogHarness {
    fn name(&self) -> String {
        "embedded-log".into()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    /// A new handle each time, as a client opens a new connection.
    async fn backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(self.current()?.handle()))
    }

    /// Closes the broker and opens a new one over the same storage.
    async fn restart(&self) -> Result<Option<Arc<dyn Backend>>> {
        let taken = self.state.lock().expect("harness lock").take();
        let Some((storage, broker)) = taken else {
            return Ok(None);
        };
        broker.close().await?;
        drop(broker);
        let broker = open(&storage)?;
        *self.state.lock().expect("harness lock") = Some((storage, broker.clone()));
        Ok(Some(Arc::new(broker)))
    }

    fn timing(&self) -> Timing {
        Timing::real()
    }
}

squall_testkit::conformance_tests!(real, || LogHarness::new());
