//! Hold-and-reorder for publishes: held messages wait in a buffer and are released shuffled,
//! each sent in turn (errors reported to its own confirm, unlike the seed's fire-and-forget
//! goroutines) when the batch is full, when its first message waited `max_wait`, or on flush,
//! close and restart.

use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use squall_core::{Message, PendingAck, PublishAck, Result};
use tokio::sync::oneshot;

use super::ChaosBackend;
use crate::rules::Hold;

type Held = (Message, oneshot::Sender<Result<PublishAck>>);

/// Publishes waiting for release. Bounded: a batch is released as soon as it holds the count of
/// the verdict that added its last message.
#[derive(Default)]
pub(crate) struct HoldBuffer {
    items: Vec<Held>,
    /// Bumped whenever the buffer is emptied, so a timer armed for an earlier batch does nothing.
    batch: u64,
    /// Shuffle seed of the latest hold verdict.
    shuffle: u64,
}

impl HoldBuffer {
    fn take(&mut self) -> (Vec<Held>, u64) {
        self.batch += 1;
        (std::mem::take(&mut self.items), self.shuffle)
    }
}

impl ChaosBackend {
    fn hold_buffer(&self) -> std::sync::MutexGuard<'_, HoldBuffer> {
        self.shared.hold.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `msg`; its confirm resolves once it is released and confirmed.
    pub(super) async fn hold(&self, msg: Message, h: Hold) -> Result<PendingAck> {
        let (tx, rx) = oneshot::channel();
        let (release, arm) = {
            let mut b = self.hold_buffer();
            b.items.push((msg, tx));
            b.shuffle = h.shuffle;
            if b.items.len() >= h.count.max(1) {
                (Some(b.take()), None)
            } else if b.items.len() == 1 {
                (None, Some(b.batch))
            } else {
                (None, None)
            }
        };
        if let Some(batch) = arm {
            let weak = Arc::downgrade(&self.shared);
            let wait = h.max_wait;
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let Some(shared) = weak.upgrade() else { return };
                let me = ChaosBackend { shared };
                let due = {
                    let mut b = me.hold_buffer();
                    (b.batch == batch && !b.items.is_empty()).then(|| b.take())
                };
                if let Some((items, seed)) = due {
                    me.release(items, seed).await;
                }
            });
        }
        if let Some((items, seed)) = release {
            self.release(items, seed).await;
        }
        Ok(PendingAck::channel(rx))
    }

    /// Releases whatever is held now.
    pub(super) async fn release_held(&self) {
        let due = {
            let mut b = self.hold_buffer();
            (!b.items.is_empty()).then(|| b.take())
        };
        if let Some((items, seed)) = due {
            self.release(items, seed).await;
        }
    }

    async fn release(&self, mut items: Vec<Held>, seed: u64) {
        items.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        for (msg, tx) in items {
            match self.send_inner(msg, false).await {
                Ok(pending) => {
                    tokio::spawn(async move {
                        let _ = tx.send(pending.await);
                    });
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
    }
}
