//! Queue names: how subjects, groups and subscribers become SQS queues, and how a publisher finds
//! the queues bound to a subject.
//!
//! SQS queue names are 1 to 80 ASCII letters, digits, `-` and `_` (a FIFO queue's ends in
//! `.fifo`, counted in the 80). Subjects are up to 256 bytes of any printable ASCII, so a subject
//! is mapped to a **subject key** of at most 33 characters: its first 20 characters with every
//! character outside `[A-Za-z0-9_-]` replaced by `_`, a `-`, and 12 hex digits of a 64-bit
//! FNV-1a hash of the whole subject (so `a.b` and `a_b` get different keys).
//!
//! ```text
//! <queue_prefix><subject key>--<binding>[-dlq][.fifo]
//! squall-orders_created-3f2a9c0d41b7--g5e0c1a2b3d4f        group `billing` of `orders.created`
//! squall-orders_created-3f2a9c0d41b7--s0d9e8f7a6b5c        one subscriber without a group
//! squall-orders_created-3f2a9c0d41b7--g5e0c1a2b3d4f-dlq    its native dead-letter queue (max_receive)
//! squall-parked                                            dead letters nobody is subscribed to
//! ```
//!
//! The binding is `g` and 12 hex digits of the group name's hash (one queue per group and
//! subject, shared by its members), or `s` and 12 random hex digits (one queue per subscription
//! without a group, deleted when it closes). At most 20 (prefix) + 33 + 2 + 13 + 4 + 5 = 77
//! characters.
//!
//! **Discovery**: a publisher lists the queues whose names start with
//! `<queue_prefix><subject key>--` (`ListQueues` with `QueueNamePrefix`) and sends a copy to
//! each whose remainder is exactly a binding (`[gs]` and 12 hex digits, with `.fifo` when FIFO):
//! native dead-letter queues and anything else sharing the prefix are not bindings.
//!
//! ```
//! use squall_core::Subject;
//! use squall_sqs::naming;
//!
//! let s = Subject::new("orders.eu.created")?;
//! let q = naming::group_queue("shop-", &s, "billing", false);
//! assert!(q.starts_with(&naming::binding_prefix("shop-", &s)));
//! assert!(naming::is_binding(&q, &naming::binding_prefix("shop-", &s), false));
//! assert!(!naming::is_binding(&naming::dead_letter_queue(&q), &naming::binding_prefix("shop-", &s), false));
//! assert!(q.len() <= 80);
//! # Ok::<(), squall_core::Error>(())
//! ```

use squall_core::Subject;

/// The longest `queue_prefix`.
pub const MAX_PREFIX_LEN: usize = 20;
/// Characters of a subject kept readable in its key.
const READABLE: usize = 20;
/// Hex digits of a hash or random part.
const HEX: usize = 12;
/// Suffix of FIFO queue names.
pub const FIFO_SUFFIX: &str = ".fifo";
/// Suffix (before `.fifo`) of native dead-letter queues.
pub const DLQ_SUFFIX: &str = "-dlq";

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// 128-bit FNV-1a, for ids too long for SQS (deduplication and group ids).
pub fn fnv1a128(bytes: &[u8]) -> u128 {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in bytes {
        h ^= u128::from(*b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    h
}

fn hex12(h: u64) -> String {
    format!("{:012x}", h >> 16)
}

/// The subject key: readable part, `-`, hash; at most 33 characters of `[A-Za-z0-9_-]`.
pub fn subject_key(subject: &Subject) -> String {
    let s = subject.as_str();
    let readable: String = s
        .chars()
        .take(READABLE)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{readable}-{}", hex12(fnv1a64(s.as_bytes())))
}

/// `<prefix><subject key>--`: what every binding of `subject` starts with.
pub fn binding_prefix(prefix: &str, subject: &Subject) -> String {
    format!("{prefix}{}--", subject_key(subject))
}

fn fifo(name: String, fifo: bool) -> String {
    if fifo { name + FIFO_SUFFIX } else { name }
}

/// The queue the members of `group` share for `subject`.
pub fn group_queue(prefix: &str, subject: &Subject, group: &str, is_fifo: bool) -> String {
    fifo(
        format!(
            "{}g{}",
            binding_prefix(prefix, subject),
            hex12(fnv1a64(group.as_bytes()))
        ),
        is_fifo,
    )
}

/// A new queue for one subscription to `subject` without a group.
pub fn fanout_queue(prefix: &str, subject: &Subject, is_fifo: bool) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    fifo(
        format!(
            "{}s{}",
            binding_prefix(prefix, subject),
            &id[id.len() - HEX..]
        ),
        is_fifo,
    )
}

/// The native dead-letter queue of `queue` (`-dlq` before any `.fifo`).
pub fn dead_letter_queue(queue: &str) -> String {
    match queue.strip_suffix(FIFO_SUFFIX) {
        Some(base) => format!("{base}{DLQ_SUFFIX}{FIFO_SUFFIX}"),
        None => format!("{queue}{DLQ_SUFFIX}"),
    }
}

/// Where dead letters go when no queue is bound to their subject.
pub fn parked_queue(prefix: &str, is_fifo: bool) -> String {
    fifo(format!("{prefix}parked"), is_fifo)
}

/// Whether `name` (found by listing `binding_prefix`) is a binding: the prefix, `g` or `s`,
/// 12 lowercase hex digits, and `.fifo` exactly when `is_fifo`.
pub fn is_binding(name: &str, binding_prefix: &str, is_fifo: bool) -> bool {
    let Some(rest) = name.strip_prefix(binding_prefix) else {
        return false;
    };
    let rest = match (rest.strip_suffix(FIFO_SUFFIX), is_fifo) {
        (Some(r), true) => r,
        (None, false) => rest,
        _ => return false,
    };
    let b = rest.as_bytes();
    b.len() == 1 + HEX
        && matches!(b[0], b'g' | b's')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The queue name at the end of a queue URL.
pub fn name_from_url(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(s: &str) -> Subject {
        Subject::new(s).unwrap()
    }

    #[test]
    fn names_are_valid_sqs_names_at_the_longest() {
        let long = subject(&format!("x.{}", "#".repeat(250)));
        let prefix = "p".repeat(MAX_PREFIX_LEN);
        for fifo in [false, true] {
            for q in [
                group_queue(&prefix, &long, &"G".repeat(64), fifo),
                fanout_queue(&prefix, &long, fifo),
            ] {
                let dlq = dead_letter_queue(&q);
                for name in [&q, &dlq] {
                    assert!(name.len() <= 80, "{name} is {} long", name.len());
                    let base = name.strip_suffix(FIFO_SUFFIX).unwrap_or(name);
                    assert_eq!(name.ends_with(FIFO_SUFFIX), fifo, "{name}");
                    assert!(
                        base.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                        "{name}"
                    );
                }
            }
        }
    }

    #[test]
    fn similar_subjects_get_different_keys_and_groups_share_a_queue() {
        assert_ne!(subject_key(&subject("a.b")), subject_key(&subject("a_b")));
        let s = subject("orders.created");
        assert!(subject_key(&s).starts_with("orders_created-"));
        assert_eq!(
            group_queue("p-", &s, "billing", false),
            group_queue("p-", &s, "billing", false)
        );
        assert_ne!(
            group_queue("p-", &s, "billing", false),
            group_queue("p-", &s, "shipping", false)
        );
        assert_ne!(fanout_queue("p-", &s, false), fanout_queue("p-", &s, false));
    }

    #[test]
    fn only_bindings_are_bindings() {
        let s = subject("a.b");
        let p = binding_prefix("p-", &s);
        let g = group_queue("p-", &s, "g", false);
        let f = fanout_queue("p-", &s, true);
        assert!(is_binding(&g, &p, false));
        assert!(
            !is_binding(&g, &p, true),
            "FIFO mode ignores standard queues"
        );
        assert!(is_binding(&f, &p, true));
        assert!(!is_binding(&dead_letter_queue(&g), &p, false));
        assert!(!is_binding(&format!("{p}x0123456789ab"), &p, false));
        assert!(!is_binding(
            &format!("{p}g0123456789ab--s0123456789ab"),
            &p,
            false
        ));
        assert!(!is_binding(&parked_queue("p-", false), &p, false));
        assert_eq!(name_from_url("http://h:1/000/q-1"), "q-1");
    }
}
