//! The universal conformance suite (`squall-testkit`) against the Kafka-protocol broker at
//! `SQUALL_KAFKA_URL` (tansu here). Each case has its own topics (subjects start with
//! `t.<case>.<tag>`), every `backend()` call is a new handle, and every topic a case created is
//! deleted when it ends, after its consumers closed.
//!
//! Without `SQUALL_KAFKA_URL` every case prints a notice and passes (with
//! `SQUALL_REQUIRE_PEERS=1` it fails instead).

mod support;

use support::{kafka_harness, kafka_url};

squall_testkit::conformance_tests!(real, || match kafka_url() {
    Some(url) => kafka_harness(&url, ""),
    None => return,
});
