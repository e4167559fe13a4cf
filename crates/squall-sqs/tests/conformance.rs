//! The universal conformance suite (`squall-testkit`) against the SQS server at `SQUALL_SQS_URL`
//! (moto_server here), on standard queues. Each case gets its own queue prefix
//! (`sqt-conf-<8 hex>-`) and deletes every queue under it when it ends; every `backend()` call
//! is a new handle. The adapter's defaults otherwise (5 s long polls, as `squall certify` runs
//! it).
//!
//! Without `SQUALL_SQS_URL` every case prints a notice and passes (with `SQUALL_REQUIRE_PEERS=1`
//! it fails instead): the harness expression returns from the generated test before any case runs.

mod support;

use support::{sqs_harness, sqs_url};

squall_testkit::conformance_tests!(real, || match sqs_url() {
    Some(url) => sqs_harness(&url, "conf", ""),
    None => return,
});
