//! The universal conformance suite (`squall-testkit`) against the real RabbitMQ at
//! `SQUALL_AMQP_URL`, through a topic exchange and classic queues (the defaults). Each case gets
//! its own exchange (`squall.t.conformance.<tag>`) and deletes what it declared when it ends;
//! every `backend()` call is a new connection. `max_payload` is lowered to 8 MiB so the payload
//! case sends a message at the limit for real.
//!
//! Without `SQUALL_AMQP_URL` every case prints a notice and passes (with `SQUALL_REQUIRE_PEERS=1`
//! it fails instead): the harness expression returns from the generated test before any case runs.

mod support;

use support::{amqp_harness, amqp_url};

squall_testkit::conformance_tests!(real, || match amqp_url() {
    Some(url) => amqp_harness(&url, "conformance", "max_payload=8388608"),
    None => return,
});
