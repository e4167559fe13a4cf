//! The universal conformance suite again, with group queues of RabbitMQ's quorum type
//! (`queue_type=quorum`): confirms after the Raft log's fsync, and exact delivery counts
//! (`x-delivery-count`) when a channel closes holding messages. See `conformance.rs` for the
//! harness; it skips the same way without `SQUALL_AMQP_URL`.

mod support;

use support::{amqp_harness, amqp_url};

squall_testkit::conformance_tests!(real, || match amqp_url() {
    Some(url) => amqp_harness(&url, "quorum", "queue_type=quorum&max_payload=8388608"),
    None => return,
});
