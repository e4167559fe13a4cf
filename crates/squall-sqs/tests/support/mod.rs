//! Shared by the adapter's tests: the server URL (from `SQUALL_SQS_URL`), a unique queue prefix
//! per test, a conformance harness ([`SqsHarness`]), boto3 as another client, and cleanup of
//! every queue a test created.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{Backend, Result};
use squall_sqs::{SqsBackend, SqsConfig};
use squall_testkit::{PeerHarness, PeerScope, peer_url};
// Not every test binary uses each of these.
#[allow(unused_imports)]
pub use squall_testkit::{eventually, with_options};

/// `SQUALL_SQS_URL`, or `None` with a printed notice when it is unset; unset under
/// `SQUALL_REQUIRE_PEERS=1` fails the test.
pub fn sqs_url() -> Option<String> {
    peer_url("SQUALL_SQS_URL", "the SQS adapter")
}

/// A fresh queue prefix: `sqt-<label, 6 at most>-<8 hex>-`.
pub fn unique_prefix(label: &str) -> String {
    let s = uuid::Uuid::now_v7().simple().to_string();
    let label: String = label.chars().take(6).collect();
    format!("sqt-{label}-{}-", &s[s.len() - 8..])
}

/// One test's SQS: a unique queue prefix, and on drop the deletion of every queue under it.
pub struct Scope {
    pub base: String,
    pub prefix: String,
    pub url: String,
}

impl Scope {
    /// A scope for `label` with extra adapter `options` (`key=value&...`).
    pub fn new(base: &str, label: &str, options: &str) -> Scope {
        let prefix = unique_prefix(label);
        let mut opts = format!("queue_prefix={prefix}");
        if !options.is_empty() {
            opts.push('&');
            opts.push_str(options);
        }
        Scope {
            base: base.to_string(),
            url: with_options(base, &opts),
            prefix,
        }
    }

    pub fn config(&self) -> SqsConfig {
        SqsConfig::from_url(&self.url).expect("test URL")
    }

    /// A new handle.
    pub async fn backend(&self) -> Result<SqsBackend> {
        SqsBackend::connect_url(&self.url).await
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let url = self.url.clone();
        squall_testkit::peers::block_on_in_thread(async move {
            match SqsBackend::connect_url(&url).await {
                Ok(b) => {
                    if let Err(e) = b.delete_queues().await {
                        eprintln!("cleanup: deleting the queues of {url}: {e}");
                    }
                }
                Err(e) => eprintln!("cleanup: connecting to {url}: {e}"),
            }
        });
    }
}

/// The conformance harness: one [`Scope`] per case (so one queue prefix per case), a new
/// handle per `backend()` call, and no restart (moto_server keeps everything in memory and is
/// shared).
pub type SqsHarness = PeerHarness<Scope>;

/// An [`SqsHarness`] for `label` with extra adapter `options`.
pub fn sqs_harness(base: &str, label: &str, options: &str) -> SqsHarness {
    let scope = Scope::new(base, label, options);
    PeerHarness::new("sqs", squall_sqs::capabilities(&scope.config()), scope)
}

#[async_trait]
impl PeerScope for Scope {
    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(self.backend().await?))
    }
}

/// `http://host:port` of `SQUALL_SQS_URL`, for boto3.
pub fn endpoint(base: &str) -> String {
    match SqsConfig::from_url(base).expect("SQUALL_SQS_URL").endpoint {
        squall_sqs::Endpoint::Url { url, .. } => url,
        squall_sqs::Endpoint::Aws => panic!("the tests need an endpoint override, not AWS"),
    }
}

/// Runs `script` with python3 and boto3 against the test server: `sqs` is a boto3 client, and
/// `ARGS` the JSON `args`. Returns what the script printed on stdout; panics with its stderr if
/// it failed.
pub async fn boto3(base: &str, script: &str, args: serde_json::Value) -> String {
    let region = SqsConfig::from_url(base).expect("SQUALL_SQS_URL").region;
    let prelude = format!(
        "import json, sys, boto3\n\
         ARGS = json.loads(sys.argv[1])\n\
         sqs = boto3.client('sqs', endpoint_url='{}', region_name='{region}', \
         aws_access_key_id='test', aws_secret_access_key='test')\n",
        endpoint(base)
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .arg(args.to_string())
            .output(),
    )
    .await
    .expect("python3 within 60 s")
    .expect("running python3");
    assert!(
        out.status.success(),
        "python3 failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from python3")
}
