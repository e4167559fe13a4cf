//! Request-reply: the request carries a fresh inbox in its `reply-to` header (and as the NATS
//! reply subject on core NATS) and a correlation id; the first reply on the inbox whose
//! correlation id matches (or that has none, as plain NATS responders send) is the answer.
//!
//! On core NATS a request nobody subscribes to fails at once with `NoResponders` (the server
//! says so). On JetStream the request is stored in its stream, so consumers of the subject get
//! it like any message; no stored request can report "no responders", so an unanswered one
//! ends in `Timeout`. Replies go to the inbox over core NATS in both modes and are never
//! stored.

use std::time::Duration;

use futures::StreamExt;
use squall_core::headers::{CORRELATION_ID, REPLY_TO};
use squall_core::{Error, ErrorKind, Message, MessageId, Result, Timestamp};

use crate::codec::{self, Received};
use crate::publish::Publishing;

/// Sends `msg` as a request and waits up to `timeout` for its reply.
pub(crate) async fn request(
    p: &Publishing,
    mut msg: Message,
    timeout: Duration,
) -> Result<Message> {
    p.check_open()?;
    let deadline = tokio::time::Instant::now() + timeout;
    let inbox = p.client.new_inbox();
    let correlation = match msg.correlation_id() {
        Some(c) => c.to_string(),
        None => {
            let c = uuid::Uuid::now_v7().simple().to_string();
            msg.headers_mut().insert(CORRELATION_ID, &c)?;
            c
        }
    };
    msg.headers_mut().insert(REPLY_TO, &inbox)?;
    let subject = msg.subject().to_string();
    let mut sub = p.client.subscribe(inbox.clone()).await.map_err(|e| {
        Error::new(ErrorKind::Unavailable, "subscribing to a reply inbox").with_source(e)
    })?;
    let wait = async {
        // Never deduplicated: a re-sent request needs its own reply.
        let unique = inbox.rsplit('.').next().unwrap_or(&inbox);
        p.send_with(msg, Some(unique)).await?.await?;
        loop {
            let Some(reply) = sub.next().await else {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "the connection closed while waiting for a reply",
                ));
            };
            if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(Error::new(
                    ErrorKind::NoResponders,
                    format!("nobody subscribes to `{subject}`"),
                ));
            }
            let fallback = MessageId::generate;
            let m = codec::decode(Received {
                subject: reply.subject.as_str(),
                headers: reply.headers.as_ref(),
                payload: reply.payload.clone(),
                reply: None,
                fallback_id: &fallback,
                fallback_time: Timestamp::now(),
            })?;
            match m.correlation_id() {
                Some(c) if c != correlation => continue,
                _ => return Ok(m),
            }
        }
    };
    let r = tokio::time::timeout_at(deadline, wait).await;
    let _ = sub.unsubscribe().await;
    r.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Timeout,
            format!("no reply to the request on `{subject}` within {timeout:?}"),
        ))
    })
}
