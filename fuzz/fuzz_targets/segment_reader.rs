//! Feeds arbitrary bytes to the log storage's segment scanner and record decoder: whatever the
//! input, they must return (records, holes, torn bytes), never panic.
//!
//! `cargo +nightly fuzz run segment_reader`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let check = squall_broker::storage::decode_segment_for_fuzz(data);
    // A record is at least 45 bytes, so no input holds more records than that allows.
    assert!(check.records <= data.len() as u64 / 45);
});
