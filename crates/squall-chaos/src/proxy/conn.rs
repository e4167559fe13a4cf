//! One proxied connection: two pumps (client → server, server → client), each a reader and a
//! writer joined by a bounded queue, applying the installed faults chunk by chunk.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{CHUNK, ConnCtl, Cut, Direction, FaultKind, MAX_QUEUED_CHUNKS, ProxyFault, Shared};
use crate::rng::ChaosRng;

/// How long connecting upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `s` with a TCP RST: linger 0, then drop.
pub(crate) fn reset(s: TcpStream) {
    if let Err(e) = s.set_zero_linger() {
        tracing::debug!("setting linger 0: {e}");
    }
    drop(s);
}

/// Serves one accepted client until both directions finish or the connection is cut.
pub(crate) async fn serve(shared: &Arc<Shared>, id: u64, mut client: TcpStream, ctl: &ConnCtl) {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&shared.upstream));
    let mut upstream = tokio::select! {
        _ = ctl.cut.cancelled() => { reset(client); return; }
        r = connect => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(proxy = %shared.name, upstream = %shared.upstream, "connect failed: {e}");
                shared.refused.fetch_add(1, Ordering::Relaxed);
                reset(client);
                return;
            }
            Err(_) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                reset(client);
                return;
            }
        },
    };
    shared.accepted.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up = Pump::new(shared, id, Direction::Upstream, ctl);
        let down = Pump::new(shared, id, Direction::Downstream, ctl);
        // A cut wins over data the pumps could still forward (and they check it themselves
        // before each chunk): after a reset or a close nothing more passes.
        tokio::select! {
            biased;
            _ = ctl.cut.cancelled() => {}
            _ = async { tokio::join!(up.run(cr, uw), down.run(ur, cw)) } => {}
        }
    }
    match ctl.how() {
        Some(Cut::Reset) => {
            reset(client);
            reset(upstream);
        }
        Some(Cut::Close) | None => {
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
    }
}

enum Item {
    Data { bytes: Bytes, read_at: Instant },
    Eof,
}

/// One direction of one connection.
struct Pump<'a> {
    shared: &'a Shared,
    flow: Direction,
    ctl: &'a ConnCtl,
    rng: ChaosRng,
}

/// The faults acting on one direction, from one snapshot.
#[derive(Default)]
struct Active {
    blackhole: bool,
    latency: Option<(Duration, Duration)>,
    bandwidth: Option<u64>,
    slow_close: Option<Duration>,
    slicer: Option<(usize, usize, Duration)>,
}

impl Active {
    fn of(faults: &[ProxyFault], flow: Direction) -> Self {
        let mut a = Active::default();
        for f in faults.iter().filter(|f| f.direction.covers(flow)) {
            match f.kind {
                FaultKind::Blackhole => a.blackhole = true,
                FaultKind::Latency { latency, jitter } => a.latency = Some((latency, jitter)),
                FaultKind::Bandwidth { bytes_per_sec } => a.bandwidth = Some(bytes_per_sec),
                FaultKind::SlowClose { delay } => a.slow_close = Some(delay),
                FaultKind::Slicer {
                    average,
                    variation,
                    delay,
                } => a.slicer = Some((average, variation, delay)),
                FaultKind::Reset => {}
            }
        }
        a
    }
}

/// Waits while a blackhole covers `flow`.
async fn through_blackholes(flow: Direction, rx: &mut watch::Receiver<Arc<Vec<ProxyFault>>>) {
    loop {
        if !Active::of(&rx.borrow_and_update(), flow).blackhole {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A token bucket allowing a burst of 50 ms worth, going into debt for larger writes (the next
/// write waits it off), so the long-run rate is exact.
struct Bucket {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Bucket {
            rate,
            tokens: rate as f64 / 20.0,
            last: Instant::now(),
        }
    }
    async fn take(&mut self, n: usize) {
        let now = Instant::now();
        let cap = self.rate as f64 / 20.0;
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate as f64).min(cap);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / self.rate as f64)).await;
        }
    }
}

impl<'a> Pump<'a> {
    fn new(shared: &'a Shared, id: u64, flow: Direction, ctl: &'a ConnCtl) -> Self {
        let rng = shared
            .seed
            .stream(&format!("proxy:{}:{id}:{}", shared.name, flow.as_str()));
        Pump {
            shared,
            flow,
            ctl,
            rng,
        }
    }

    async fn run<R, W>(self, mut reader: R, mut writer: W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Pump {
            shared,
            flow,
            ctl,
            mut rng,
        } = self;
        let (tx, mut rx) = mpsc::channel::<Item>(MAX_QUEUED_CHUNKS);
        let mut reader_faults = shared.faults.subscribe();
        let read = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                through_blackholes(flow, &mut reader_faults).await;
                if ctl.cut.is_cancelled() {
                    return;
                }
                match reader.read(&mut buf).await {
                    Ok(0) => {
                        let _ = tx.send(Item::Eof).await;
                        return;
                    }
                    Ok(n) => {
                        let item = Item::Data {
                            bytes: Bytes::copy_from_slice(&buf[..n]),
                            read_at: Instant::now(),
                        };
                        if tx.send(item).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(proxy = %shared.name, "read failed, resetting: {e}");
                        ctl.cut(Cut::Reset);
                        return;
                    }
                }
            }
        };
        let mut writer_faults = shared.faults.subscribe();
        let write = async {
            let mut last_due = Instant::now();
            let mut bucket: Option<Bucket> = None;
            while let Some(item) = rx.recv().await {
                through_blackholes(flow, &mut writer_faults).await;
                // The connection's task may be inside this poll when a cut and the removal of
                // a blackhole come one after the other: whoever sees the removal sees the cut
                // too, so nothing held passes onto a cut connection.
                if ctl.cut.is_cancelled() {
                    return;
                }
                let active = Active::of(&writer_faults.borrow(), flow);
                let (bytes, read_at) = match item {
                    Item::Eof => {
                        if let Some(d) = active.slow_close {
                            tokio::time::sleep(d).await;
                        }
                        let _ = writer.shutdown().await;
                        return;
                    }
                    Item::Data { bytes, read_at } => (bytes, read_at),
                };
                if let Some((latency, jitter)) = active.latency {
                    let due = (read_at + jittered(&mut rng, latency, jitter)).max(last_due);
                    last_due = due;
                    tokio::time::sleep_until(due).await;
                }
                match (active.bandwidth, &bucket) {
                    (Some(r), Some(b)) if b.rate == r => {}
                    (Some(r), _) => bucket = Some(Bucket::new(r)),
                    (None, _) => bucket = None,
                }
                if ctl.cut.is_cancelled() {
                    return;
                }
                let out = Out {
                    shared,
                    flow,
                    active: &active,
                };
                if let Err(e) = out
                    .write(&mut writer, &bytes, &mut rng, bucket.as_mut())
                    .await
                {
                    tracing::debug!(proxy = %shared.name, "write failed, resetting: {e}");
                    ctl.cut(Cut::Reset);
                    return;
                }
            }
        };
        tokio::join!(read, write);
    }
}

/// `latency` moved by up to `jitter` either way, clamped at zero.
fn jittered(rng: &mut ChaosRng, latency: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return latency;
    }
    let spread = jitter.as_secs_f64() * (2.0 * rng.random::<f64>() - 1.0);
    Duration::from_secs_f64((latency.as_secs_f64() + spread).max(0.0))
}

/// The writing side's view of one chunk.
struct Out<'a> {
    shared: &'a Shared,
    flow: Direction,
    active: &'a Active,
}

impl Out<'_> {
    /// Writes `bytes` in pieces as the slicer and the bandwidth limit require.
    async fn write<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        bytes: &[u8],
        rng: &mut ChaosRng,
        mut bucket: Option<&mut Bucket>,
    ) -> std::io::Result<()> {
        let active = self.active;
        // Pieces small enough that a bandwidth limit is smooth: 20 ms worth, at least 512 bytes.
        let bw_piece = active.bandwidth.map(|r| ((r / 50) as usize).max(512));
        let mut rest = bytes;
        let mut first = true;
        while !rest.is_empty() {
            let mut n = rest.len();
            if let Some((avg, var, delay)) = active.slicer {
                if !first && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let spread = if var == 0 {
                    0
                } else {
                    rng.random_range(0..=2 * var)
                };
                n = n.min((avg + spread).saturating_sub(var).max(1));
            }
            if let Some(p) = bw_piece {
                n = n.min(p);
            }
            if let Some(b) = bucket.as_deref_mut() {
                b.take(n).await;
            }
            w.write_all(&rest[..n]).await?;
            let counter = match self.flow {
                Direction::Upstream => &self.shared.bytes_up,
                _ => &self.shared.bytes_down,
            };
            counter.fetch_add(n as u64, Ordering::Relaxed);
            metrics::counter!("chaos_proxy_bytes_total", "proxy" => self.shared.name.clone(), "direction" => self.flow.as_str())
                .increment(n as u64);
            rest = &rest[n..];
            first = false;
        }
        w.flush().await
    }
}
