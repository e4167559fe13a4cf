//! The universal conformance suite (`squall-testkit`) against the real NATS server at
//! `SQUALL_NATS_URL`, over core NATS: at-most-once, so the cases needing redelivery, dead
//! letters, replay or persistence are skipped by capability, and `capabilities_consistent`
//! checks each of them is refused with `Unsupported`. Every `backend()` call is a new
//! connection; every case uses its own subjects.
//!
//! Without `SQUALL_NATS_URL` every case prints a notice and passes (with
//! `SQUALL_REQUIRE_PEERS=1` it fails instead).

mod support;

use support::{nats_harness, nats_url};

squall_testkit::conformance_tests!(real, || match nats_url() {
    Some(url) => nats_harness(&url, "", "nats-core"),
    None => return,
});
