//! Request-reply over an inbox topic (emulated: Kafka has no replies of its own).
//!
//! The first request of a backend handle creates its inbox, the subject
//! `squall-inbox.<handle id>` (a topic of its own) with a fan-out consumer that routes replies
//! by correlation id. Each request gets a fresh correlation id and the inbox as `reply-to`;
//! nobody answering is a `Timeout` (Kafka cannot tell that nobody listens). Closing the handle
//! closes the inbox consumer and deletes the inbox topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squall_core::headers::{CORRELATION_ID, REPLY_TO};
use squall_core::{
    Consumer, Error, ErrorKind, Message, Publisher, Result, StartPosition, Subject, Subscription,
};
use tokio::sync::oneshot;

use crate::backend::KafkaBackend;
use crate::consumer::KafkaConsumer;
use crate::link::Link;

/// Requests waiting for replies at once, per handle.
const MAX_PENDING: usize = 10_000;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// A handle's inbox: its subject, the waiting requests, the routing task.
pub(crate) struct Inbox {
    pub subject: Subject,
    pending: Pending,
    task: Mutex<Option<tokio::task::JoinHandle<KafkaConsumer>>>,
    stop: Arc<tokio::sync::Notify>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Ends the routing task, which drops (and so closes) the consumer.
        self.stop.notify_one();
    }
}

impl Inbox {
    /// Creates the inbox topic and starts routing replies.
    pub(crate) async fn start(link: Link, id: &str) -> Result<Inbox> {
        let subject = Subject::new(format!("squall-inbox.{id}"))?;
        let sub = Subscription::new(subject.as_str())?
            .start(StartPosition::New)
            .ack_wait(Duration::from_secs(3600))
            .max_in_flight(1024);
        let mut consumer = crate::consumer::subscribe(link, sub).await?;
        let pending: Pending = Arc::default();
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (pending, stop) = (pending.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let d = tokio::select! {
                        _ = stop.notified() => break,
                        d = consumer.next() => d,
                    };
                    match d {
                        Some(Ok(d)) => {
                            let waiter = d
                                .message()
                                .correlation_id()
                                .and_then(|c| pending.lock().expect("pending lock").remove(c));
                            if let Some(tx) = waiter {
                                let _ = tx.send(d.message().clone());
                            }
                            let _ = d.ack().await;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(target: "squall_kafka", error = %e, "reply inbox error")
                        }
                        None => break,
                    }
                }
                consumer
            })
        };
        Ok(Inbox {
            subject,
            pending,
            task: Mutex::new(Some(task)),
            stop,
        })
    }

    /// Stops routing, then closes the inbox consumer; waiting requests fail with `Closed`.
    pub(crate) async fn finish(&self) -> Result<()> {
        self.stop.notify_one();
        self.pending.lock().expect("pending lock").clear();
        let task = self.task.lock().expect("task lock").take();
        let Some(task) = task else {
            return Ok(());
        };
        match task.await {
            Ok(mut c) => c.close().await,
            Err(e) => Err(Error::new(
                ErrorKind::Internal,
                format!("reply routing task failed: {e}"),
            )),
        }
    }
}

/// Sends `msg` as a request through `backend` and waits up to `timeout` for its reply.
pub(crate) async fn request(
    backend: &KafkaBackend,
    inbox: &Inbox,
    mut msg: Message,
    timeout: Duration,
) -> Result<Message> {
    let corr = uuid::Uuid::now_v7().simple().to_string();
    msg.headers_mut().insert(REPLY_TO, inbox.subject.as_str())?;
    msg.headers_mut().insert(CORRELATION_ID, &corr)?;
    let (tx, rx) = oneshot::channel();
    {
        let mut p = inbox.pending.lock().expect("pending lock");
        if p.len() >= MAX_PENDING {
            return Err(Error::new(
                ErrorKind::Full,
                format!("{MAX_PENDING} requests are already waiting for replies"),
            ));
        }
        p.insert(corr.clone(), tx);
    }
    let forget = || {
        inbox.pending.lock().expect("pending lock").remove(&corr);
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let sent = tokio::time::timeout_at(deadline, async { backend.send(msg).await?.await }).await;
    match sent {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            forget();
            return Err(e);
        }
        Err(_) => {
            forget();
            return Err(timeout_error(timeout));
        }
    }
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(_)) => Err(Error::closed("the request's backend handle")),
        Err(_) => {
            forget();
            Err(timeout_error(timeout))
        }
    }
}

fn timeout_error(timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("no reply within {timeout:?} (Kafka cannot tell whether anybody listens)"),
    )
}
