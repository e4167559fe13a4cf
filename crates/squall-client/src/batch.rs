//! Sizing and packing of outgoing batches: how many queued publishes go into each `Publish`
//! frame, so that one write carries everything the application sent while the previous write was
//! in progress, without a frame ever exceeding the server's `max_frame`.

use squall_core::Message;
use squall_wire::HEADER_LEN;

/// Target size of one `Publish` frame. Larger frames save little and delay the first confirm.
pub(crate) const FRAME_BUDGET: usize = 256 * 1024;
/// Target size of one write (several frames). Bounds the time a write occupies the socket.
pub(crate) const WRITE_BUDGET: usize = 1024 * 1024;
/// Most items (settles, credits) in one frame of small items.
pub(crate) const MAX_SMALL_ITEMS: usize = 4096;

/// The exact encoded size of one publish item (request id + message), per `docs/protocol.md`.
pub(crate) fn publish_item_len(m: &Message) -> usize {
    let str16 = |s: &str| 2 + s.len().min(u16::MAX as usize);
    let headers: usize = m.headers().iter().map(|(n, v)| str16(n) + str16(v)).sum();
    8 // request id
        + 1 // flags
        + str16(m.id().as_str())
        + str16(m.subject().as_str())
        + m.key().map_or(0, str16)
        + 8 // timestamp
        + if m.delay().is_some() { 8 } else { 0 }
        + if m.ttl().is_some() { 8 } else { 0 }
        + 2
        + headers
        + 4
        + m.payload().len()
}

/// The budget of one frame's items given the server's `max_frame` (length field included).
pub(crate) fn frame_budget(max_frame: usize) -> usize {
    // header + the u32 item count
    max_frame.saturating_sub(HEADER_LEN + 4).min(FRAME_BUDGET)
}

/// Splits items of the given sizes (in queue order) into frames: returns the item count of each
/// frame. A frame holds items while their total stays within `frame_budget`, but always at least
/// one (a single large item is bounded by the server's limits, checked before queueing). The
/// whole write stops after `write_budget` bytes or `max_items` items; the rest waits for the
/// next write.
pub(crate) fn pack(
    sizes: impl IntoIterator<Item = usize>,
    frame_budget: usize,
    write_budget: usize,
    max_items: usize,
) -> Vec<usize> {
    let mut frames = Vec::new();
    let (mut in_frame, mut frame_bytes, mut total_bytes, mut total_items) = (0, 0, 0, 0);
    for size in sizes {
        if total_items == max_items || (total_items > 0 && total_bytes + size > write_budget) {
            break;
        }
        if in_frame > 0 && frame_bytes + size > frame_budget {
            frames.push(in_frame);
            in_frame = 0;
            frame_bytes = 0;
        }
        in_frame += 1;
        frame_bytes += size;
        total_bytes += size;
        total_items += 1;
    }
    if in_frame > 0 {
        frames.push(in_frame);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;
    use squall_wire::{DEFAULT_MAX_FRAME, Frame, PublishItem, encode};
    use std::time::Duration;

    #[test]
    fn item_length_matches_the_encoder() {
        let plain = Message::builder("a.b").unwrap().payload("hello").build();
        let full = Message::builder("orders.eu.created")
            .unwrap()
            .id("order-1")
            .unwrap()
            .key("customer-7")
            .unwrap()
            .header("content-type", "application/json")
            .unwrap()
            .delay(Duration::from_secs(1))
            .ttl(Duration::from_secs(9))
            .payload(vec![7u8; 1000])
            .build();
        for m in [plain, full] {
            let mut buf = BytesMut::new();
            let frame = Frame::Publish(vec![PublishItem {
                request_id: 1,
                message: m.clone(),
            }]);
            encode(&frame, &mut buf, DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(buf.len(), HEADER_LEN + 4 + publish_item_len(&m));
        }
    }

    #[test]
    fn small_items_share_one_frame_and_large_ones_split() {
        assert_eq!(pack([10; 5], 100, 1000, 100), vec![5]);
        assert_eq!(pack([40; 5], 100, 1000, 100), vec![2, 2, 1]);
        assert_eq!(
            pack([500, 10], 100, 1000, 100),
            vec![1, 1],
            "an oversized item goes alone"
        );
        assert_eq!(
            pack([10; 5], 100, 25, 100),
            vec![2],
            "the write budget stops the batch"
        );
        assert_eq!(pack([10; 5], 100, 1000, 3), vec![3]);
        assert!(pack([], 100, 1000, 3).is_empty());
        assert_eq!(frame_budget(DEFAULT_MAX_FRAME), FRAME_BUDGET);
        assert_eq!(frame_budget(1000), 990);
    }

    proptest! {
        #[test]
        fn packing_keeps_order_and_bounds(
            sizes in proptest::collection::vec(1usize..500, 0..200),
            frame in 1usize..2000,
            write in 1usize..20_000,
            max_items in 1usize..300,
        ) {
            let frames = pack(sizes.iter().copied(), frame, write, max_items);
            let taken: usize = frames.iter().sum();
            prop_assert!(taken <= max_items);
            prop_assert!(taken <= sizes.len());
            prop_assert_eq!(taken == 0, sizes.is_empty());
            let mut at = 0;
            for n in &frames {
                prop_assert!(*n > 0);
                let bytes: usize = sizes[at..at + n].iter().sum();
                prop_assert!(*n == 1 || bytes <= frame, "a frame over budget holds one item");
                at += n;
            }
            let bytes: usize = sizes[..taken].iter().sum();
            prop_assert!(taken == 1 || bytes <= write);
        }
    }
}
