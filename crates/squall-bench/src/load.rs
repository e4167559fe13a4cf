//! The load generator: an open-loop (fixed rate) or window-limited (max rate) producer, the
//! receive loops, and the histograms.
//!
//! ## Timing
//! Every payload starts with the nanosecond time (on this process's monotonic clock, from
//! [`Epoch`]) the message was *intended* to be sent, then its sequence number. At a fixed rate
//! message `i` is intended at `start + i / rate`: a producer held back (by a full window or a
//! slow send) does not move the schedule, so the delay counts in every latency measured from
//! it (no coordinated omission). A message sent early (the timer's 1 ms granularity) is
//! measured from its actual send time. At max rate the intended time is when the window had
//! room. Publish-ack latency ends when the confirm resolves; end-to-end latency when a
//! receiver gets the message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::drivers::{AckFuture, Producer, Receiver};
use crate::error::{BenchError, Result};

/// Warm-up messages carry this bit in their sequence number and are not measured.
const WARM: u64 = 1 << 63;
/// Most acks a receive loop has in flight.
const MAX_ACKS: usize = 4096;

/// The run's time origin.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(Instant);

impl Epoch {
    /// Now as the origin.
    pub fn new() -> Epoch {
        Epoch(Instant::now())
    }

    /// Nanoseconds since the origin.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// `t` as nanoseconds since the origin.
    pub fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.0).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Epoch {
    fn default() -> Self {
        Epoch::new()
    }
}

/// A histogram of nanoseconds, 1 ns to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// A payload of `size` bytes (at least 16) carrying `intended_ns` and `seq`.
pub fn encode(size: usize, intended_ns: u64, seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(16));
    b.put_u64_le(intended_ns);
    b.put_u64_le(seq);
    b.resize(size.max(16), 0x5a);
    b.freeze()
}

/// `(intended_ns, seq)` from a payload, `None` if it is too short.
pub fn decode(p: &[u8]) -> Option<(u64, u64)> {
    let ns = u64::from_le_bytes(p.get(0..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    Some((ns, seq))
}

/// When the producer stops.
#[derive(Debug, Clone, Copy)]
pub struct Until {
    /// At most this many messages.
    pub count: u64,
    /// And no longer than this.
    pub time: Duration,
}

/// What one publish phase did.
#[derive(Debug)]
pub struct Published {
    /// Messages sent.
    pub sent: u64,
    /// Confirms received (0 where the target has none).
    pub acked: u64,
    /// First intended send, ns since the epoch.
    pub first_ns: u64,
    /// Last confirm (or the final flush), ns since the epoch.
    pub done_ns: u64,
    /// Publish-ack latency; `None` where the target has no confirms.
    pub ack: Option<Histogram<u64>>,
}

/// Publishes until `until`, at `rate` (per second) or as fast as `window` allows.
pub async fn publish(
    producer: Arc<dyn Producer>,
    epoch: Epoch,
    size: usize,
    window: usize,
    rate: Option<u64>,
    until: Until,
    warm: bool,
) -> Result<Published> {
    let window = window.max(1);
    let sem = Arc::new(Semaphore::new(window));
    let (tx, rx) = mpsc::channel::<(u64, AckFuture, tokio::sync::OwnedSemaphorePermit)>(window);
    let collector = tokio::spawn(collect(rx, epoch));
    let start = Instant::now();
    let deadline = start + until.time;
    let first_ns = epoch.ns(start);
    let mut sent = 0u64;
    let mut confirms = false;
    let mut unflushed = 0usize;
    let outcome: Result<()> = async {
        while sent < until.count {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let mut intended = now;
            if let Some(r) = rate {
                let at =
                    start + Duration::from_nanos(sent.saturating_mul(1_000_000_000) / r.max(1));
                if at > now + Duration::from_millis(1) {
                    tokio::time::sleep_until(at.into()).await;
                }
                intended = at;
            }
            let permit = sem
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| BenchError::broker("load", "window", e))?;
            let now = Instant::now();
            // Late: measured from the schedule. Early (timer granularity): from now.
            let from = intended.min(now);
            let seq = if warm { sent | WARM } else { sent };
            let payload = encode(size, epoch.ns(from), seq);
            match producer.send(payload).await? {
                Some(ack) => {
                    confirms = true;
                    if tx.send((epoch.ns(from), ack, permit)).await.is_err() {
                        return Err(BenchError::broker("load", "ack collector", "stopped"));
                    }
                }
                None => {
                    drop(permit);
                    unflushed += 1;
                    if unflushed >= window {
                        producer.finish().await?;
                        unflushed = 0;
                    }
                }
            }
            sent += 1;
        }
        producer.finish().await
    }
    .await;
    drop(tx);
    let collected = collector
        .await
        .map_err(|e| BenchError::broker("load", "ack collector", e))?;
    outcome?;
    let (hist, acked, last_ack) = collected?;
    Ok(Published {
        sent,
        acked,
        first_ns,
        done_ns: if confirms {
            last_ack.max(first_ns)
        } else {
            epoch.now_ns()
        },
        ack: confirms.then_some(hist),
    })
}

async fn collect(
    mut rx: mpsc::Receiver<(u64, AckFuture, tokio::sync::OwnedSemaphorePermit)>,
    epoch: Epoch,
) -> Result<(Histogram<u64>, u64, u64)> {
    let mut hist = histogram();
    let mut pending = FuturesUnordered::new();
    let mut acked = 0u64;
    let mut last = 0u64;
    let mut record = |ns: u64, r: Result<()>| -> Result<()> {
        r?;
        let now = epoch.now_ns();
        hist.saturating_record(now.saturating_sub(ns).max(1));
        acked += 1;
        last = last.max(now);
        Ok(())
    };
    loop {
        tokio::select! {
            Some((ns, r)) = pending.next(), if !pending.is_empty() => record(ns, r)?,
            item = rx.recv() => match item {
                Some((ns, fut, permit)) => pending.push(async move {
                    let r = fut.await;
                    drop(permit);
                    (ns, r)
                }),
                None => break,
            },
        }
    }
    while let Some((ns, r)) = pending.next().await {
        record(ns, r)?;
    }
    Ok((hist, acked, last))
}

/// Counters the receive loops share with the runner.
#[derive(Debug, Default)]
pub struct Sink {
    /// Warm-up deliveries.
    pub warm: AtomicU64,
    /// Measured deliveries.
    pub counted: AtomicU64,
    /// First deliveries left unacked (redelivery mode).
    pub skipped: AtomicU64,
    /// First measured delivery, ns since the epoch (`u64::MAX` until one).
    pub first_ns: AtomicU64,
    /// Last measured delivery, ns since the epoch.
    pub last_ns: AtomicU64,
}

impl Sink {
    /// A fresh sink.
    pub fn new() -> Arc<Sink> {
        Arc::new(Sink {
            first_ns: AtomicU64::new(u64::MAX),
            ..Sink::default()
        })
    }

    /// Measured deliveries so far.
    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::Acquire)
    }
}

/// Receives until `stop`: counts, records end-to-end latency, acks (pipelined). With
/// `redeliver`, a first delivery is left unacked and only later attempts count.
pub async fn receive(
    mut rx: Box<dyn Receiver>,
    sink: Arc<Sink>,
    epoch: Epoch,
    redeliver: bool,
    stop: CancellationToken,
) -> Result<Histogram<u64>> {
    let mut hist = histogram();
    let mut acks = FuturesUnordered::new();
    loop {
        if acks.len() >= MAX_ACKS {
            if let Some(r) = acks.next().await {
                r?;
            }
            continue;
        }
        let incoming = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(r) = acks.next(), if !acks.is_empty() => { r?; continue; }
            m = rx.recv() => m?,
        };
        let now = epoch.now_ns();
        let Some((sent_ns, seq)) = decode(&incoming.payload) else {
            return Err(BenchError::broker(
                "load",
                "receiving",
                "payload shorter than 16 bytes",
            ));
        };
        if seq & WARM != 0 {
            sink.warm.fetch_add(1, Ordering::AcqRel);
        } else if redeliver && incoming.attempt <= 1 {
            sink.skipped.fetch_add(1, Ordering::AcqRel);
            // Dropped unsettled: the lease runs out and the broker redelivers it.
            drop(incoming.settle);
            continue;
        } else {
            hist.saturating_record(now.saturating_sub(sent_ns).max(1));
            sink.first_ns.fetch_min(now, Ordering::AcqRel);
            sink.last_ns.fetch_max(now, Ordering::AcqRel);
            sink.counted.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(s) = incoming.settle {
            acks.push(s.ack());
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(hist)
}

/// Waits until `done()` holds, failing when `progress()` stops moving for `stall`.
pub async fn wait_for(
    what: &str,
    target: &'static str,
    stall: Duration,
    mut progress: impl FnMut() -> u64,
    expected: u64,
) -> Result<()> {
    let mut last = progress();
    let mut moved = Instant::now();
    loop {
        let now = progress();
        if now >= expected {
            return Ok(());
        }
        if now != last {
            last = now;
            moved = Instant::now();
        } else if moved.elapsed() > stall {
            return Err(BenchError::Stalled {
                target,
                what: format!("{what}: {now} of {expected} after {stall:?} without progress"),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_time_and_sequence_at_any_size() {
        for size in [0, 16, 128, 1024] {
            let p = encode(size, 123_456_789, 42 | WARM);
            assert_eq!(p.len(), size.max(16));
            assert_eq!(decode(&p), Some((123_456_789, 42 | WARM)));
        }
        assert_eq!(decode(&[0u8; 15]), None);
    }
}
