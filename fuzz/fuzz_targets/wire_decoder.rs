//! Feeds arbitrary bytes to the wire protocol's frame decoder, as a server reads them off a
//! socket: it must return frames or an error, never panic, never read past its limit. Every
//! frame it accepts must encode again and decode to the same frame.
//!
//! `cargo +nightly fuzz run wire_decoder`
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use squall_wire::{DEFAULT_MAX_FRAME, decode, decode_all, encode};

fuzz_target!(|data: &[u8]| {
    // The whole input as a stream of frames, with a small and the default frame limit.
    for max_frame in [64, DEFAULT_MAX_FRAME] {
        let (frames, _error) = decode_all(data, max_frame);
        for frame in frames {
            let mut buf = BytesMut::new();
            encode(&frame, &mut buf, max_frame).expect("a decoded frame encodes within its limit");
            let again = decode(&mut buf, max_frame).expect("a re-encoded frame decodes");
            assert_eq!(again.as_ref(), Some(&frame), "round trip");
            assert!(buf.is_empty(), "one frame, no bytes left over");
        }
    }
    // Byte by byte, as a socket may deliver it: the streaming decoder waits for more or fails.
    let mut buf = BytesMut::new();
    for chunk in data.chunks(7) {
        buf.extend_from_slice(chunk);
        loop {
            match decode(&mut buf, DEFAULT_MAX_FRAME) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
