//! The write half of a connection: one bounded queue in, coalesced writes out.

use bytes::BytesMut;
use squall_wire::{Frame, encode};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Bytes gathered before a write is issued even if more frames are queued.
const WRITE_BUDGET: usize = 256 * 1024;

/// Writes frames until the queue closes, then flushes and shuts the socket down. Frames queued
/// while a write is in progress go out together in the next write.
pub(crate) async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Frame>,
    max_frame: usize,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(frame) = rx.recv().await {
        put(&frame, &mut buf, max_frame);
        while buf.len() < WRITE_BUDGET {
            match rx.try_recv() {
                Ok(f) => put(&f, &mut buf, max_frame),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            tracing::debug!("write failed: {e}");
            return;
        }
        metrics::counter!("squall_server_bytes_out_total").increment(buf.len() as u64);
        buf.clear();
    }
    let _ = wr.shutdown().await;
}

fn put(frame: &Frame, buf: &mut BytesMut, max_frame: usize) {
    if let Err(e) = encode(frame, buf, max_frame) {
        // Only a frame the server built too large can fail here; batches are sized under half the
        // frame limit, so this is a bug worth a loud log rather than a dead connection.
        tracing::error!(frame = frame.name(), "cannot encode outgoing frame: {e}");
    }
}
