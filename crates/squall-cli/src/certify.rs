//! `squall certify --backend URL...`: the guarantee certificate of a backend.
//!
//! For each backend it runs, against the real broker:
//! 1. the universal conformance suite (`squall-testkit`), case by case, recording pass / fail /
//!    skip (a skip names the capability the backend lacks);
//! 2. redelivery probes: how long a `nack` (no delay) and an expired lease (1 s `ack_wait`) take
//!    to come back;
//! 3. a short fault scenario (the chaos lab's workload through its fault proxy: the connection is
//!    cut and healed mid-run) counting lost, duplicated and reordered messages and the recovery
//!    time;
//!
//! and writes one table — capabilities native / emulated / missing plus the observed figures —
//! as Markdown and JSON. The README's table is this command's output, not typed by hand.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use serde::Serialize;
use squall_core::{Backend, Capabilities, Message, Subject, Subscription, Support};
use squall_testkit::{Case, Harness, Timing};

use crate::backends;
use crate::certify_faults::{self, FaultFigures};

/// Arguments of `squall certify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Backend URL (`squall://`, `nats://`, `nats://…?jetstream=1`, `amqp://`, `sqs://`,
    /// `kafka://`); repeat for several backends side by side.
    #[arg(long = "backend", required = true)]
    backends: Vec<String>,
    /// Write the certificates as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown table here (it is always printed too).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Run only the conformance cases whose name contains this.
    #[arg(long)]
    cases: Option<String>,
    /// Messages the fault scenario sends (0: no fault scenario).
    #[arg(long, default_value_t = 2000)]
    fault_messages: u64,
}

/// One conformance case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CaseOutcome {
    /// The case.
    pub name: &'static str,
    /// `pass`, `fail` or `skip`.
    pub outcome: &'static str,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// How long it ran.
    pub millis: u64,
}

/// The certificate of one backend.
#[derive(Debug, Clone, Serialize)]
pub struct Certificate {
    /// The URL given (credentials removed).
    pub backend: String,
    /// The backend's own name.
    pub name: String,
    /// Its declared capabilities.
    pub capabilities: Capabilities,
    /// Conformance cases run and their outcomes.
    pub cases: Vec<CaseOutcome>,
    /// Time from `nack(0)` to the redelivery, if the backend redelivers.
    pub nack_redelivery_ms: Option<u64>,
    /// Time from receiving to the redelivery when the 1 s lease is left to expire.
    pub lease_redelivery_ms: Option<u64>,
    /// What the fault scenario observed.
    pub faults: Option<FaultFigures>,
    /// Problems met while certifying (a probe that could not run...).
    pub notes: Vec<String>,
}

impl Certificate {
    fn count(&self, outcome: &str) -> usize {
        self.cases.iter().filter(|c| c.outcome == outcome).count()
    }
}

/// Runs the command; `Ok(false)` when a conformance case failed (exit code 1).
pub fn run(args: Args, out: &mut impl std::io::Write) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut certs = Vec::new();
    for url in &args.backends {
        writeln!(out, "certifying {}", backends::redact(url))?;
        let cert = rt.block_on(certify(url, &args))?;
        writeln!(
            out,
            "  conformance: {} passed, {} failed, {} skipped",
            cert.count("pass"),
            cert.count("fail"),
            cert.count("skip")
        )?;
        for c in cert.cases.iter().filter(|c| c.outcome == "fail") {
            writeln!(out, "  FAILED {}: {}", c.name, c.detail)?;
        }
        certs.push(cert);
    }
    let table = markdown(&certs);
    writeln!(out, "\n{table}")?;
    if let Some(p) = &args.markdown {
        std::fs::write(p, &table).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&certs)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(certs.iter().all(|c| c.count("fail") == 0))
}

/// The suite's view of a backend given by URL: every `backend()` is a new connection.
struct UrlHarness {
    url: String,
    name: String,
    caps: Capabilities,
}

/// A JetStream URL gets one stream per case and probe (`stream_depth=3`: `t.<case>.<tag>`), all
/// named `squall_certify…`, so the run never binds a stream that captures other subjects and
/// deletes every stream it made at the end (a concurrent certify run of the same server would
/// lose its streams too: run one at a time).
fn suite_url(url: &str) -> String {
    let has = |key: &str| url.contains(&format!("?{key}=")) || url.contains(&format!("&{key}="));
    if is_jetstream(url) && !has("stream_depth") && !has("stream") && !has("stream_prefix") {
        format!("{url}&stream_depth=3&stream_prefix=squall_certify")
    } else {
        url.to_string()
    }
}

fn is_jetstream(url: &str) -> bool {
    url.starts_with("nats://") && url.contains("jetstream=1")
}

/// Deletes the JetStream streams a certify run made (their names start with
/// `squall_certify`); the problems met, as notes.
async fn delete_certify_streams(url: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let server = match squall_nats::NatsConfig::from_url(url) {
        Ok(c) => c.server,
        Err(e) => return vec![format!("cleanup: {e}")],
    };
    let client = match async_nats::connect(server).await {
        Ok(c) => c,
        Err(e) => return vec![format!("cleanup: connecting: {e}")],
    };
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = match js.stream_names().try_collect().await {
        Ok(n) => n,
        Err(e) => return vec![format!("cleanup: listing streams: {e}")],
    };
    let mut problems = Vec::new();
    for s in names.iter().filter(|n| n.starts_with("squall_certify")) {
        if let Err(e) = js.delete_stream(s).await {
            problems.push(format!("cleanup: deleting stream {s}: {e}"));
        }
    }
    problems
}

#[async_trait]
impl Harness for UrlHarness {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }
    async fn backend(&self) -> squall_core::Result<Arc<dyn Backend>> {
        backends::connect(&self.url).await
    }
    async fn restart(&self) -> squall_core::Result<Option<Arc<dyn Backend>>> {
        // The certificate's restart evidence comes from the fault scenario, not the suite.
        Ok(None)
    }
    fn timing(&self) -> Timing {
        Timing::real()
    }
}

async fn certify(url: &str, args: &Args) -> anyhow::Result<Certificate> {
    let url = &suite_url(url);
    let first = backends::connect(url)
        .await
        .with_context(|| format!("connecting to {}", backends::redact(url)))?;
    let harness = Arc::new(UrlHarness {
        url: suite_url(url),
        name: first.name().to_string(),
        caps: first.capabilities(),
    });
    let mut cert = Certificate {
        backend: backends::redact(url),
        name: harness.name.clone(),
        capabilities: harness.caps.clone(),
        cases: Vec::new(),
        nack_redelivery_ms: None,
        lease_redelivery_ms: None,
        faults: None,
        notes: Vec::new(),
    };
    for &case in Case::ALL {
        let info = case.info();
        if args
            .cases
            .as_ref()
            .is_some_and(|f| !info.name.contains(f.as_str()))
        {
            continue;
        }
        let missing = info.missing(&harness.caps);
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|f| f.name()).collect();
            cert.cases.push(CaseOutcome {
                name: info.name,
                outcome: "skip",
                detail: format!("lacks {}", names.join(", ")),
                millis: 0,
            });
            continue;
        }
        let h = harness.clone();
        let started = Instant::now();
        // A failing case panics with its reason; a task keeps that from ending the run.
        let joined = tokio::spawn(async move { squall_testkit::run_case(&*h, case).await }).await;
        let (outcome, detail) = match joined {
            Ok(()) => ("pass", String::new()),
            Err(e) if e.is_panic() => ("fail", panic_text(e.into_panic())),
            Err(e) => ("fail", e.to_string()),
        };
        cert.cases.push(CaseOutcome {
            name: info.name,
            outcome,
            detail,
            millis: started.elapsed().as_millis() as u64,
        });
    }
    if harness.caps.redelivery.available() {
        match redelivery_probes(first.as_ref()).await {
            Ok((nack, lease)) => {
                cert.nack_redelivery_ms = Some(nack.as_millis() as u64);
                cert.lease_redelivery_ms = Some(lease.as_millis() as u64);
            }
            Err(e) => cert.notes.push(format!("redelivery probe: {e}")),
        }
    }
    if args.fault_messages > 0 {
        match certify_faults::run(url, args.fault_messages).await {
            Ok(f) => cert.faults = Some(f),
            Err(e) => cert.notes.push(format!("fault scenario: {e:#}")),
        }
    }
    let _ = first.close().await;
    if is_jetstream(url) {
        cert.notes.extend(delete_certify_streams(url).await);
    }
    Ok(cert)
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    let text = match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "panicked".into()),
    };
    text.lines().next().unwrap_or_default().to_string()
}

/// Publishes one message to a fresh group, nacks its first delivery without delay, and leaves
/// the second delivery's 1 s lease to expire; returns (nack → redelivery, receive → redelivery).
async fn redelivery_probes(backend: &dyn Backend) -> anyhow::Result<(Duration, Duration)> {
    let tag = uuid_tag();
    let subject = Subject::new(format!("certify.{tag}.probe"))?;
    let sub = Subscription::new(subject.as_str())?
        .group(format!("certify{tag}"))?
        .ack_wait(Duration::from_secs(1))
        .max_deliveries(10);
    let mut consumer = backend.subscribe(sub).await?;
    backend
        .publish(Message::new(subject, &b"probe"[..]))
        .await?;
    let wait = Duration::from_secs(30);
    let first = next(&mut consumer, wait).await?;
    let nacked = Instant::now();
    first.nack(Duration::ZERO).await?;
    let second = next(&mut consumer, wait).await?;
    let nack = nacked.elapsed();
    // Held, never settled: the lease runs out.
    let held = Instant::now();
    let third = next(&mut consumer, wait).await?;
    let lease = held.elapsed();
    drop(second);
    third.ack().await?;
    consumer.close().await?;
    Ok((nack, lease))
}

async fn next(
    c: &mut Box<dyn squall_core::Consumer>,
    wait: Duration,
) -> anyhow::Result<squall_core::Delivery> {
    match tokio::time::timeout(wait, c.next()).await {
        Ok(Some(Ok(d))) => Ok(d),
        Ok(Some(Err(e))) => Err(anyhow::anyhow!("receiving: {e}")),
        Ok(None) => Err(anyhow::anyhow!("the consumer closed")),
        Err(_) => Err(anyhow::anyhow!("nothing within {wait:?}")),
    }
}

fn uuid_tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn support(s: Support) -> &'static str {
    match s {
        Support::Native => "native",
        Support::Emulated => "emulated",
        Support::Missing => "—",
    }
}

fn ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v} ms")).unwrap_or_else(|| "—".into())
}

/// One table, a column per backend.
pub fn markdown(certs: &[Certificate]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Certificate) -> String| {
        rows.push((name.to_string(), certs.iter().map(f).collect()));
    };
    row("conformance passed / failed / skipped", &|c| {
        format!(
            "{} / {} / {}",
            c.count("pass"),
            c.count("fail"),
            c.count("skip")
        )
    });
    if let Some(first) = certs.first() {
        for (i, (name, _)) in first.capabilities.table().into_iter().enumerate() {
            row(name, &|c| support(c.capabilities.table()[i].1).to_string());
        }
    }
    row("max durability of an ack", &|c| {
        format!("{:?}", c.capabilities.max_durability)
    });
    row("max payload", &|c| {
        format!("{} B", c.capabilities.max_payload)
    });
    row("redelivery after nack(0)", &|c| ms(c.nack_redelivery_ms));
    row("redelivery after a 1 s lease expires", &|c| {
        ms(c.lease_redelivery_ms)
    });
    certify_faults::rows(&mut row);
    row("notes", &|c| {
        if c.notes.is_empty() {
            "—".into()
        } else {
            c.notes.join("; ").replace('|', "/")
        }
    });
    let mut s = String::from("| |");
    for c in certs {
        s.push_str(&format!(" `{}` |", c.name));
    }
    s.push_str("\n|---|");
    for _ in certs {
        s.push_str("---|");
    }
    s.push('\n');
    for (name, cells) in rows {
        s.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jetstream_url_gets_per_case_streams_unless_it_names_its_own() {
        assert_eq!(
            suite_url("nats://h:1?jetstream=1"),
            "nats://h:1?jetstream=1&stream_depth=3&stream_prefix=squall_certify"
        );
        let own = "nats://h:1?jetstream=1&stream=S&subjects=t.>";
        assert_eq!(suite_url(own), own);
        assert_eq!(suite_url("nats://h:1"), "nats://h:1");
    }
}
