//! [`Queues`]: the SDK client and everything done with queues — creating them, finding the
//! queues bound to a subject, sending to them, receiving, settling — each request bounded by a
//! timeout and its errors mapped to squall's kinds.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, Message as SqsMessage, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use squall_core::{Error, ErrorKind, PublishAck, Result, Subject};

use crate::codec::Encoded;
use crate::config::{CredentialSource, Endpoint, MAX_WAIT_TIME, SqsConfig};
use crate::error::{kind_of_code, sqs};
use crate::naming;

/// A queue bound to a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Binding {
    pub name: String,
    pub url: String,
}

/// The bindings of a subject and when they were listed.
type Listed = (Instant, Arc<Vec<Binding>>);

/// Where a delivered message goes when no queue is bound to its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// An application publish: dropped, or `NoResponders` when `mandatory`.
    Publish { mandatory: bool },
    /// A dead letter: parked in `<queue_prefix>parked`.
    DeadLetter,
}

/// The SDK client with the adapter's configuration; shared by a backend handle, its publisher,
/// consumers and requester.
pub(crate) struct Queues {
    pub client: Client,
    pub config: Arc<SqsConfig>,
    /// The endpoint, for error messages.
    pub endpoint: String,
    /// Bindings per subject and when they were listed (only with `discovery_ttl > 0`).
    discovery: Mutex<HashMap<Subject, Listed>>,
    /// URLs of queues this handle created or looked up, by name.
    urls: Mutex<HashMap<String, String>>,
    /// With `serial_receive`: one receive at a time per queue URL.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Queues {
    /// Builds the SDK client for `config`. Makes no request.
    pub async fn new(config: Arc<SqsConfig>) -> Queues {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(MAX_WAIT_TIME + config.request_timeout)
            .build();
        let retry = RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(50))
            .with_max_backoff(Duration::from_secs(1));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(timeouts)
            .retry_config(retry);
        if let Endpoint::Url { url, .. } = &config.endpoint {
            loader = loader.endpoint_url(url);
        }
        if let CredentialSource::Static {
            access_key,
            secret_key,
        } = &config.credentials
        {
            loader = loader.credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "squall-sqs-url",
            ));
        }
        let sdk = loader.load().await;
        Queues {
            client: Client::new(&sdk),
            endpoint: config.endpoint_display(),
            config,
            discovery: Mutex::new(HashMap::new()),
            urls: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` for at most `limit`; a timeout is `Unavailable`, naming the endpoint.
    pub async fn bounded<T>(
        &self,
        what: &str,
        limit: Duration,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{what}: no answer from SQS at {} within {limit:?}",
                    self.endpoint
                ),
            )),
        }
    }

    fn limit(&self) -> Duration {
        self.config.request_timeout
    }

    /// Checks that SQS answers (and accepts the credentials).
    pub async fn check(&self) -> Result<()> {
        let what = format!("connecting to {}", self.config.redacted_url());
        self.bounded(&what, self.limit(), async {
            self.client
                .list_queues()
                .queue_name_prefix(&self.config.queue_prefix)
                .max_results(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sqs(&what, &self.endpoint, e))
        })
        .await
    }

    /// Names and URLs of every queue whose name starts with `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let what = format!("listing the queues named `{prefix}…`");
        self.bounded(&what, self.limit() * 3, async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let r = self
                    .client
                    .list_queues()
                    .queue_name_prefix(prefix)
                    .max_results(1000)
                    .set_next_token(token)
                    .send()
                    .await
                    .map_err(|e| sqs(&what, &self.endpoint, e))?;
                for url in r.queue_urls() {
                    out.push((naming::name_from_url(url).to_string(), url.clone()));
                }
                token = r.next_token().map(str::to_string);
                if token.is_none() {
                    return Ok(out);
                }
            }
        })
        .await
    }

    /// Creates queue `name` (or finds it, when it exists with the same attributes) and returns
    /// its URL. `redrive`: give it the native dead-letter queue of `max_receive`.
    pub async fn ensure(&self, name: &str, redrive: bool) -> Result<String> {
        if let Some(url) = self.urls.lock().expect("urls lock").get(name) {
            return Ok(url.clone());
        }
        let cfg = &self.config;
        let mut attrs: HashMap<QueueAttributeName, String> = HashMap::new();
        attrs.insert(
            QueueAttributeName::VisibilityTimeout,
            cfg.visibility_timeout.as_secs().to_string(),
        );
        if let Some(r) = cfg.retention {
            attrs.insert(
                QueueAttributeName::MessageRetentionPeriod,
                r.as_secs().to_string(),
            );
        }
        if cfg.fifo {
            attrs.insert(QueueAttributeName::FifoQueue, "true".into());
            attrs.insert(
                QueueAttributeName::ContentBasedDeduplication,
                "false".into(),
            );
        }
        if redrive && let Some(max) = cfg.max_receive {
            let dlq = naming::dead_letter_queue(name);
            let dlq_url = Box::pin(self.ensure(&dlq, false)).await?;
            let arn = self.arn(&dlq_url).await?;
            let policy = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max });
            attrs.insert(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        let what = format!("creating queue `{name}`");
        let url = self
            .bounded(&what, self.limit(), async {
                let r = self
                    .client
                    .create_queue()
                    .queue_name(name)
                    .set_attributes(Some(attrs))
                    .send()
                    .await
                    .map_err(|e| sqs(&what, &self.endpoint, e))?;
                r.queue_url().map(str::to_string).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        format!("{what}: SQS returned no queue URL"),
                    )
                })
            })
            .await?;
        self.urls
            .lock()
            .expect("urls lock")
            .insert(name.to_string(), url.clone());
        Ok(url)
    }

    /// The URL of an existing queue; `NotFound` when there is none.
    pub async fn url(&self, name: &str) -> Result<String> {
        if let Some(url) = self.urls.lock().expect("urls lock").get(name) {
            return Ok(url.clone());
        }
        let what = format!("looking up queue `{name}`");
        let url = self
            .bounded(&what, self.limit(), async {
                let r = self
                    .client
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(|e| sqs(&what, &self.endpoint, e))?;
                Ok(r.queue_url().unwrap_or_default().to_string())
            })
            .await?;
        Ok(url)
    }

    async fn arn(&self, url: &str) -> Result<String> {
        let what = format!("reading the ARN of `{}`", naming::name_from_url(url));
        self.bounded(&what, self.limit(), async {
            let r = self
                .client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(|e| sqs(&what, &self.endpoint, e))?;
            r.attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn))
                .cloned()
                .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("{what}: none returned")))
        })
        .await
    }

    /// Deletes the queue at `url`; a queue already gone is fine.
    pub async fn delete(&self, url: &str) -> Result<()> {
        let name = naming::name_from_url(url).to_string();
        self.urls.lock().expect("urls lock").remove(&name);
        self.discovery.lock().expect("discovery lock").clear();
        let what = format!("deleting queue `{name}`");
        let r = self
            .bounded(&what, self.limit(), async {
                self.client
                    .delete_queue()
                    .queue_url(url)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| sqs(&what, &self.endpoint, e))
            })
            .await;
        match r {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Forgets what was listed for `subject`, so the next publish lists again.
    pub fn invalidate(&self, subject: &Subject) {
        self.discovery
            .lock()
            .expect("discovery lock")
            .remove(subject);
    }

    /// The queues bound to `subject` (see [`naming`]).
    pub async fn bindings(&self, subject: &Subject) -> Result<Arc<Vec<Binding>>> {
        let ttl = self.config.discovery_ttl;
        if !ttl.is_zero()
            && let Some((at, b)) = self.discovery.lock().expect("discovery lock").get(subject)
            && at.elapsed() < ttl
        {
            return Ok(b.clone());
        }
        let prefix = naming::binding_prefix(&self.config.queue_prefix, subject);
        let found: Vec<Binding> = self
            .list(&prefix)
            .await?
            .into_iter()
            .filter(|(name, _)| naming::is_binding(name, &prefix, self.config.fifo))
            .map(|(name, url)| Binding { name, url })
            .collect();
        let found = Arc::new(found);
        if !ttl.is_zero() {
            self.discovery
                .lock()
                .expect("discovery lock")
                .insert(subject.clone(), (Instant::now(), found.clone()));
        }
        Ok(found)
    }

    /// Sends `enc` to every queue bound to `subject`.
    pub async fn deliver(
        &self,
        subject: &Subject,
        enc: &Encoded,
        route: Route,
    ) -> Result<PublishAck> {
        let bindings = self.bindings(subject).await?;
        let targets: Vec<Binding> = if bindings.is_empty() {
            match route {
                Route::Publish { mandatory: false } => return Ok(self.ack(None)),
                Route::Publish { mandatory: true } => return Err(no_queue(subject)),
                Route::DeadLetter => {
                    let name = naming::parked_queue(&self.config.queue_prefix, self.config.fifo);
                    tracing::warn!(%subject, queue = %name, "no queue is bound for the dead-letter subject; parking the dead letter");
                    let url = self.ensure(&name, false).await?;
                    vec![Binding { name, url }]
                }
            }
        } else {
            bindings.to_vec()
        };
        let sends = targets.iter().map(|b| self.send(b, enc));
        let results = futures::future::join_all(sends).await;
        let mut stored = 0;
        for r in results {
            match r {
                Ok(()) => stored += 1,
                // The subscriber left between the listing and the send.
                Err(e) if e.kind() == ErrorKind::NotFound => self.invalidate(subject),
                Err(e) => return Err(e),
            }
        }
        if stored == 0 && matches!(route, Route::Publish { mandatory: true }) {
            return Err(no_queue(subject));
        }
        let stream = (targets.len() == 1 && stored == 1).then(|| targets[0].name.clone());
        Ok(self.ack(stream))
    }

    /// The ack of a message stored in `stream` (or in several queues, or none).
    pub fn ack(&self, stream: Option<String>) -> PublishAck {
        PublishAck {
            stream,
            sequence: 0,
            durability: self.config.durability,
            duplicate: false,
        }
    }

    /// `SendMessage` of `enc` to `b`.
    pub async fn send(&self, b: &Binding, enc: &Encoded) -> Result<()> {
        let what = format!("sending {} to queue `{}`", enc.id, b.name);
        self.bounded(&what, self.limit(), async {
            self.client
                .send_message()
                .queue_url(&b.url)
                .message_body(&enc.body)
                .set_message_attributes(Some(enc.attributes.clone()))
                .set_delay_seconds((enc.delay_seconds > 0).then_some(enc.delay_seconds))
                .set_message_group_id(enc.group_id.clone())
                .set_message_deduplication_id(enc.dedup_id.clone())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sqs(&what, &self.endpoint, e))
        })
        .await
    }

    /// `SendMessageBatch` of up to 10 messages to `b`; one result per message.
    pub async fn send_batch(&self, b: &Binding, encs: &[&Encoded]) -> Vec<Result<()>> {
        let what = format!("sending a batch of {} to queue `{}`", encs.len(), b.name);
        let mut entries = Vec::with_capacity(encs.len());
        for (i, enc) in encs.iter().enumerate() {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&enc.body)
                .set_message_attributes(Some(enc.attributes.clone()))
                .set_delay_seconds((enc.delay_seconds > 0).then_some(enc.delay_seconds))
                .set_message_group_id(enc.group_id.clone())
                .set_message_deduplication_id(enc.dedup_id.clone())
                .build()
                .expect("id and body are set");
            entries.push(entry);
        }
        let r = self
            .bounded(&what, self.limit(), async {
                self.client
                    .send_message_batch()
                    .queue_url(&b.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sqs(&what, &self.endpoint, e))
            })
            .await;
        let out = match r {
            Ok(out) => out,
            Err(e) => return encs.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut results: Vec<Result<()>> = encs
            .iter()
            .map(|enc| {
                Err(Error::new(
                    ErrorKind::Protocol,
                    format!("{what}: SQS did not report on {}", enc.id),
                ))
            })
            .collect();
        for ok in out.successful() {
            if let Some(r) = ok
                .id()
                .parse::<usize>()
                .ok()
                .and_then(|i| results.get_mut(i))
            {
                *r = Ok(());
            }
        }
        record_failures(&mut results, out.failed(), &what);
        results
    }

    /// With `serial_receive`, the lock a consumer holds while it receives from `url`, shared by
    /// every consumer of that queue through this handle.
    pub fn receive_turn(&self, url: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        if !self.config.serial_receive {
            return None;
        }
        let mut turns = self.turns.lock().expect("turns lock");
        Some(turns.entry(url.to_string()).or_default().clone())
    }

    /// `ReceiveMessage`: up to `n` messages, waiting up to `wait`, invisible for `visibility`;
    /// `attempt` is the FIFO `ReceiveRequestAttemptId` (see [`crate::consumer`]).
    pub async fn receive(
        &self,
        url: &str,
        n: i32,
        wait: Duration,
        visibility: Duration,
        attempt: Option<&str>,
    ) -> Result<Vec<SqsMessage>> {
        let what = format!("receiving from queue `{}`", naming::name_from_url(url));
        self.bounded(&what, wait + self.limit(), async {
            let r = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(n)
                .wait_time_seconds(wait.as_secs() as i32)
                .visibility_timeout(visibility.as_secs().min(i32::MAX as u64) as i32)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .set_receive_request_attempt_id(attempt.map(str::to_string))
                .send()
                .await
                .map_err(|e| sqs(&what, &self.endpoint, e))?;
            Ok(r.messages.unwrap_or_default())
        })
        .await
    }

    /// `DeleteMessageBatch` (one `DeleteMessage` for one receipt); one result per receipt.
    pub async fn delete_messages(&self, url: &str, receipts: &[String]) -> Vec<Result<()>> {
        let what = format!("deleting from queue `{}`", naming::name_from_url(url));
        if let [one] = receipts {
            let r = self
                .bounded(&what, self.limit(), async {
                    self.client
                        .delete_message()
                        .queue_url(url)
                        .receipt_handle(one)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| sqs(&what, &self.endpoint, e))
                })
                .await;
            return vec![r];
        }
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
                    .expect("id and receipt are set")
            })
            .collect();
        let r = self
            .bounded(&what, self.limit(), async {
                self.client
                    .delete_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sqs(&what, &self.endpoint, e))
            })
            .await;
        match r {
            Err(e) => receipts.iter().map(|_| Err(e.clone())).collect(),
            Ok(out) => {
                let mut results: Vec<Result<()>> = receipts.iter().map(|_| Ok(())).collect();
                record_failures(&mut results, out.failed(), &what);
                results
            }
        }
    }

    /// `ChangeMessageVisibility` of one receipt.
    pub async fn change_visibility(&self, url: &str, receipt: &str, after: Duration) -> Result<()> {
        let what = format!(
            "changing a visibility timeout in queue `{}`",
            naming::name_from_url(url)
        );
        self.bounded(&what, self.limit(), async {
            self.client
                .change_message_visibility()
                .queue_url(url)
                .receipt_handle(receipt)
                .visibility_timeout(after.as_secs().min(i32::MAX as u64) as i32)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sqs(&what, &self.endpoint, e))
        })
        .await
    }

    /// Makes the messages of `receipts` visible at once (`ChangeMessageVisibilityBatch` to 0), in
    /// batches of 10; failures are logged (the messages come back when their timeout ends).
    pub async fn release(&self, url: &str, receipts: Vec<String>) {
        for chunk in receipts.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(0)
                        .build()
                        .expect("id and receipt are set")
                })
                .collect();
            let what = format!("releasing deliveries of `{}`", naming::name_from_url(url));
            let r = self
                .bounded(&what, self.limit(), async {
                    self.client
                        .change_message_visibility_batch()
                        .queue_url(url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .map_err(|e| sqs(&what, &self.endpoint, e))
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "releasing deliveries; they return when their visibility timeout ends");
            }
        }
    }
}

/// Puts the entries a batch request reports as failed into `results` (by entry id, the index).
fn record_failures(results: &mut [Result<()>], failed: &[BatchResultErrorEntry], what: &str) {
    for f in failed {
        if let Some(r) = f
            .id()
            .parse::<usize>()
            .ok()
            .and_then(|i| results.get_mut(i))
        {
            *r = Err(Error::new(
                kind_of_code(f.code()),
                format!("{what}: {}: {}", f.code(), f.message().unwrap_or_default()),
            ));
        }
    }
}

fn no_queue(subject: &Subject) -> Error {
    Error::new(
        ErrorKind::NoResponders,
        format!("no queue is bound to `{subject}`: nobody subscribed to it"),
    )
}
