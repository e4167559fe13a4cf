//! Request-reply, emulated: SQS has no reply channel, so each backend handle makes one inbox
//! on its first request — a subscription without a group to the subject `_inbox.<32 hex>`, so a
//! queue of its own — and matches replies to requests by correlation id.
//!
//! A request is published with `reply-to` set to the inbox subject and a fresh
//! `correlation-id`; it fails at once with `NoResponders` when no queue is bound to its subject,
//! and with `Timeout` when no reply came in time. A responder answers with
//! [`Message::reply_to`](squall_core::Message::reply_to) and an ordinary publish, which finds the
//! inbox's queue like any other. The inbox is deleted when the handle closes; a reply arriving
//! after its request gave up is dropped.
//!
//! Cost: one queue per handle that makes requests, one long-polling receive loop for it, and a
//! round trip through SQS each way (tens of milliseconds at best; not a low-latency RPC).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squall_core::{Consumer, Error, ErrorKind, Message, Result, Subject, Subscription, headers};
use tokio::sync::{OnceCell, oneshot};
use tokio_util::sync::CancellationToken;

use crate::codec::encode;
use crate::consumer::SqsConsumer;
use crate::queues::{Queues, Route};

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

struct Inbox {
    subject: Subject,
    waiters: Waiters,
}

/// The requesting half of a backend handle.
pub(crate) struct Requester {
    queues: Arc<Queues>,
    cancel: CancellationToken,
    inbox: OnceCell<Inbox>,
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Requester {
    /// `closed` ends the inbox (with the handle); dropping the requester ends it too.
    pub fn new(queues: Arc<Queues>, closed: &CancellationToken) -> Requester {
        Requester {
            queues,
            cancel: closed.child_token(),
            inbox: OnceCell::new(),
        }
    }

    async fn inbox(&self) -> Result<&Inbox> {
        self.inbox
            .get_or_try_init(|| async {
                let id = uuid::Uuid::now_v7().simple().to_string();
                let subject = Subject::new(format!("_inbox.{id}"))?;
                let sub = Subscription::new(subject.as_str())?
                    .ack_wait(Duration::from_secs(60))
                    .max_in_flight(256);
                let mut consumer =
                    SqsConsumer::start(self.queues.clone(), sub, subject.clone(), &self.cancel)
                        .await?;
                let waiters: Waiters = Arc::default();
                let routes = waiters.clone();
                tokio::spawn(async move {
                    while let Some(d) = consumer.next().await {
                        let d = match d {
                            Ok(d) => d,
                            Err(e) => {
                                tracing::warn!(error = %e, "the request inbox");
                                continue;
                            }
                        };
                        let reply = d.message().clone();
                        let _ = d.ack().await;
                        let waiter = reply
                            .correlation_id()
                            .and_then(|c| routes.lock().expect("waiters lock").remove(c));
                        match waiter {
                            Some(w) => {
                                let _ = w.send(reply);
                            }
                            None => tracing::debug!(id = %reply.id(), "a reply nobody waits for"),
                        }
                    }
                });
                Ok::<_, Error>(Inbox { subject, waiters })
            })
            .await
    }

    pub async fn request(&self, mut msg: Message, timeout: Duration) -> Result<Message> {
        if self.cancel.is_cancelled() {
            return Err(Error::closed("the SQS backend handle"));
        }
        let inbox = self.inbox().await?;
        let corr = uuid::Uuid::now_v7().simple().to_string();
        msg.headers_mut()
            .insert(headers::REPLY_TO, inbox.subject.as_str())?;
        msg.headers_mut().insert(headers::CORRELATION_ID, &corr)?;
        let enc = encode(&msg, &self.queues.config)?;
        let (tx, rx) = oneshot::channel();
        inbox
            .waiters
            .lock()
            .expect("waiters lock")
            .insert(corr.clone(), tx);
        let forget = || {
            inbox.waiters.lock().expect("waiters lock").remove(&corr);
        };
        let subject = msg.subject().clone();
        let deadline = tokio::time::Instant::now() + timeout;
        // The publish is let finish (it has its own bound, `request_timeout`): cut short, the
        // request could reach a responder or not, unknown to both sides.
        if let Err(e) = self
            .queues
            .deliver(&subject, &enc, Route::Publish { mandatory: true })
            .await
        {
            forget();
            return Err(e);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::closed("the SQS requester")),
            Err(_) => {
                forget();
                Err(timed_out(&subject, timeout))
            }
        }
    }
}

fn timed_out(subject: &Subject, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("no reply to the request on `{subject}` within {timeout:?}"),
    )
}
