//! The listener: accepts connections within the limit and runs each until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use squall_broker::Broker;
use squall_core::{Error, ErrorKind, Result};
use squall_wire::{Codec, Frame, RemoteError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::connection::{Shared, serve};

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    broker: Broker,
    config: ServerConfig,
}

impl Server {
    /// Validates the configuration and binds the listener.
    pub async fn bind(config: ServerConfig, broker: Broker) -> Result<Server> {
        config.validate(squall_core::Backend::capabilities(&broker).max_payload)?;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot listen on {} (set `server.listen`)", config.listen),
            )
            .with_source(e)
        })?;
        Ok(Server {
            listener,
            broker,
            config,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The broker served.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Accepts connections until `shutdown` fires; then tells every client Goodbye, lets each
    /// connection drain for `shutdown_grace`, and returns. The broker is not closed: its owner
    /// closes it (which syncs storage) after this returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let shared = Arc::new(Shared {
            broker: self.broker,
            config: self.config,
            shutdown: shutdown.clone(),
        });
        let slots = Arc::new(Semaphore::new(shared.config.max_connections));
        let tracker = TaskTracker::new();
        tracing::info!(addr = %self.listener.local_addr().map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?, "listening");
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            let (socket, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: log, pause briefly, go on.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared = shared.clone();
                    tracker.spawn(async move {
                        serve(socket, peer, shared).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    metrics::counter!("squall_connections_refused_total").increment(1);
                    tracker.spawn(refuse(socket, shared.config.max_frame));
                }
            }
        }
        tracker.close();
        let grace = shared.config.shutdown_grace * 2;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period");
        }
        Ok(())
    }
}

/// Tells a connection over the limit why, then closes it.
async fn refuse(socket: tokio::net::TcpStream, max_frame: usize) {
    use futures::SinkExt;
    let mut w = tokio_util::codec::FramedWrite::new(socket, Codec { max_frame });
    let e = Error::config(
        "server.max_connections",
        "the server is at its connection limit",
    );
    let _ = w
        .send(Frame::Error {
            request_id: 0,
            fatal: true,
            error: RemoteError::from(&e),
        })
        .await;
}
