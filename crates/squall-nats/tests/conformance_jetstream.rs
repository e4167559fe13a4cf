//! The universal conformance suite (`squall-testkit`) against the real NATS server at
//! `SQUALL_NATS_URL`, over JetStream. Streams derive from the first three subject tokens
//! (`t.<case>.<tag>`), so each case has streams of its own, and every stream a case used is
//! deleted when it ends. Every `backend()` call is a new connection.
//!
//! Without `SQUALL_NATS_URL` every case prints a notice and passes (with
//! `SQUALL_REQUIRE_PEERS=1` it fails instead).

mod support;

use support::{JS_TEST_OPTIONS, nats_harness, nats_url};

squall_testkit::conformance_tests!(real, || match nats_url() {
    Some(url) => nats_harness(&url, JS_TEST_OPTIONS, "nats-jetstream"),
    None => return,
});
