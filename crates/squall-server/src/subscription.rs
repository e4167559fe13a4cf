//! One subscription of one connection: pulls deliveries from the broker while the client has
//! credit, and batches what is ready into one `Deliver` frame.

use std::sync::{Arc, OnceLock};

use futures::FutureExt;
use squall_core::{Acker, Consumer, Delivery};
use squall_wire::{DeliverItem, Frame, RemoteError};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Most deliveries in one frame.
const MAX_BATCH: usize = 256;

/// The session's handle on a subscription task.
#[derive(Clone)]
pub(crate) struct SubHandle {
    /// Deliveries the client will still accept (returned by `Credit` frames).
    pub credit: Arc<Semaphore>,
    /// Ends the task; its consumer is closed and unsettled leases released.
    pub cancel: CancellationToken,
    /// The broker's acker for this consumer, set with the first delivery; settles use it with the
    /// lease the client echoes (the broker checks the lease, so a stale one is refused).
    pub acker: Arc<OnceLock<Arc<dyn Acker>>>,
}

fn item(sub_id: u32, d: Delivery, acker: &OnceLock<Arc<dyn Acker>>) -> (DeliverItem, usize) {
    let _ = acker.set(d.acker().clone());
    let size = d.message().size() + 128;
    let item = DeliverItem {
        sub_id,
        lease: d.lease(),
        attempt: d.attempt(),
        published_at: d.published_at(),
        deadline: d.deadline(),
        group: d.group().map(str::to_string),
        message: d.into_message(),
    };
    (item, size)
}

pub(crate) async fn run_subscription(
    sub_id: u32,
    mut consumer: Box<dyn Consumer>,
    handle: SubHandle,
    out: mpsc::Sender<Frame>,
    max_frame: usize,
) {
    let budget = max_frame / 2;
    loop {
        let permit = tokio::select! {
            _ = handle.cancel.cancelled() => break,
            p = handle.credit.acquire() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let first = tokio::select! {
            _ = handle.cancel.cancelled() => break,
            d = consumer.next() => d,
        };
        let d = match first {
            None => {
                let _ = out
                    .send(Frame::SubscriptionEnded {
                        sub_id,
                        error: None,
                    })
                    .await;
                break;
            }
            Some(Err(e)) => {
                let error = Some(RemoteError::from(&e));
                let _ = out.send(Frame::SubscriptionEnded { sub_id, error }).await;
                break;
            }
            Some(Ok(d)) => d,
        };
        permit.forget();
        let (first, mut bytes) = item(sub_id, d, &handle.acker);
        let mut items = vec![first];
        // Take what is ready now, without waiting, within credit and frame budget. `next` is
        // cancel safe: a poll that finds nothing leases nothing.
        while items.len() < MAX_BATCH && bytes < budget {
            let Ok(p) = handle.credit.try_acquire() else {
                break;
            };
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => {
                    p.forget();
                    let (it, size) = item(sub_id, d, &handle.acker);
                    bytes += size;
                    items.push(it);
                }
                _ => break,
            }
        }
        metrics::counter!("squall_server_delivered_total").increment(items.len() as u64);
        if out.send(Frame::Deliver(items)).await.is_err() {
            break;
        }
    }
    if let Err(e) = consumer.close().await {
        tracing::warn!(sub_id, "closing consumer: {e}");
    }
}
