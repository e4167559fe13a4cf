//! Subjects as Kafka topic names, and back; patterns as topic regexes.
//!
//! A squall subject is up to 256 bytes of printable ASCII; a Kafka topic name is up to 249 of
//! `[a-zA-Z0-9._-]`. The mapping is injective and keeps the token structure:
//!
//! | subject byte | in the topic name |
//! |---|---|
//! | `a`-`z`, `A`-`Z`, `0`-`9`, `-`, `.` | itself |
//! | `_` | `__` |
//! | any other printable byte `b` | `_` and two lowercase hex digits (`:` is `_3a`) |
//!
//! so `orders.eu.created` is the topic `orders.eu.created` and `a_b:c` is `a__b_3ac`, with the
//! configured `topic_prefix` in front. A name that would be longer than 249 characters is cut at
//! 230 and ends in `_h` and 16 hex digits of a SHA-1 based hash of the subject (`_h` never comes
//! out of the escaping, so a hashed name never equals an escaped one); its subject travels in the
//! `squall.subject` header, as it cannot be decoded from the name.
//!
//! Patterns become anchored regular expressions over topic names (librdkafka's `^regex`
//! subscriptions): `*` is `[^.]+`, a trailing `>` is `.+`. Hashed topic names are matched by a
//! wildcard only where the regex happens to match their visible part, so wildcard subscriptions
//! may miss subjects too long for a topic name; literal subscriptions always reach them.

use squall_core::{Error, ErrorKind, Pattern, Result, Subject};

/// The longest Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;
/// Where an over-long name is cut before its hash suffix.
const HASH_CUT: usize = MAX_TOPIC_LEN - 19;

/// The topic name of `subject` under `prefix`.
pub fn topic_for(prefix: &str, subject: &Subject) -> String {
    let mut out = String::with_capacity(prefix.len() + subject.as_str().len());
    out.push_str(prefix);
    let mut cut = None;
    for b in subject.as_str().bytes() {
        if cut.is_none() && out.len() + 3 > HASH_CUT {
            cut = Some(out.len());
        }
        escape_byte(b, &mut out);
    }
    if out.len() <= MAX_TOPIC_LEN {
        return out;
    }
    let keep = cut.unwrap_or(HASH_CUT).min(out.len());
    out.truncate(keep);
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, subject.as_str().as_bytes());
    let hex = digest.simple().to_string();
    out.push_str("_h");
    out.push_str(&hex[..16]);
    out
}

/// Whether `topic` is a hashed name under `prefix` (see the [module docs](self)).
pub fn is_hashed(prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .is_some_and(|rest| decode_raw(rest).is_err_and(|e| e.kind() == ErrorKind::Conflict))
}

fn escape_byte(b: u8, out: &mut String) {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' => out.push(b as char),
        b'_' => out.push_str("__"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push('_');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// Escapes one subject token (no dots) for use in a topic name.
fn escape_token(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        escape_byte(b, &mut out);
    }
    out
}

/// The subject `topic` was derived from under `prefix`: `None` if the topic does not start
/// with the prefix, is hashed, or is not an escaped subject (e.g. written by another
/// application under its own naming).
pub fn subject_for(prefix: &str, topic: &str) -> Option<Subject> {
    let rest = topic.strip_prefix(prefix)?;
    let raw = decode_raw(rest).ok()?;
    Subject::new(raw).ok()
}

/// Decodes the escaping; `Conflict` marks the `_h` hash suffix.
fn decode_raw(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => match (b.get(i + 1), b.get(i + 2)) {
                (Some(b'_'), _) => {
                    out.push('_');
                    i += 2;
                }
                (Some(b'h'), _) => {
                    return Err(Error::new(ErrorKind::Conflict, "hashed topic name"));
                }
                (Some(h), Some(l)) => {
                    let v = hex(*h).zip(hex(*l)).map(|(h, l)| h * 16 + l);
                    match v {
                        Some(v) if v.is_ascii_graphic() && !is_plain(v) => out.push(v as char),
                        _ => return Err(bad(s)),
                    }
                    i += 3;
                }
                _ => return Err(bad(s)),
            },
            c if is_plain(c) => {
                out.push(c as char);
                i += 1;
            }
            _ => return Err(bad(s)),
        }
    }
    Ok(out)
}

fn bad(s: &str) -> Error {
    Error::new(
        ErrorKind::InvalidSubject,
        format!("topic `{s}` is not an escaped squall subject"),
    )
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Whether `topic` is a valid Kafka topic name (what brokers accept).
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The anchored librdkafka regex (`^...$`) of the topics `pattern` can match under `prefix`.
pub fn topic_regex(prefix: &str, pattern: &Pattern) -> String {
    let mut re = String::from("^");
    re.push_str(&regex_escape(prefix));
    let tokens: Vec<&str> = pattern.as_str().split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            re.push_str("\\.");
        }
        match *t {
            "*" => re.push_str("[^.]+"),
            ">" => re.push_str(".+"),
            lit => re.push_str(&regex_escape(&escape_token(lit))),
        }
    }
    re.push('$');
    re
}

/// Escaped topic characters: only `.` is special among `[a-zA-Z0-9._-]`.
fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

/// Whether a topic name matches `pattern` under `prefix`, for decodable names; the same rule as
/// [`topic_regex`], evaluated without a regex engine.
pub fn topic_matches(prefix: &str, pattern: &Pattern, topic: &str) -> bool {
    subject_for(prefix, topic).is_some_and(|s| pattern.matches(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Subject {
        Subject::new(x).unwrap()
    }

    #[test]
    fn plain_subjects_keep_their_name_and_round_trip() {
        assert_eq!(topic_for("", &s("orders.eu.created")), "orders.eu.created");
        assert_eq!(topic_for("sq.", &s("a_b:c")), "sq.a__b_3ac");
        for x in [
            "a_b:c",
            "x.__.y",
            "q!#$%&'()+,/;<=?@[]^`{|}~\"\\",
            "_3a",
            "a-b.C9",
        ] {
            let t = topic_for("p-", &s(x));
            assert!(valid_topic(&t), "{t}");
            assert_eq!(subject_for("p-", &t), Some(s(x)), "{x} -> {t}");
        }
        assert_eq!(subject_for("p-", "other.topic"), None);
        assert_eq!(subject_for("", "a_zz"), None);
        assert_eq!(subject_for("", "a..b"), None, "not a valid subject");
    }

    #[test]
    fn distinct_subjects_never_share_a_topic() {
        let pairs = [
            ("a_b", "a.b"),
            ("a_2e", "a.e"),
            ("a__b", "a_b"),
            ("_5f", "__"),
        ];
        for (x, y) in pairs {
            assert_ne!(topic_for("", &s(x)), topic_for("", &s(y)), "{x} / {y}");
        }
    }

    #[test]
    fn long_subjects_are_hashed_within_the_limit() {
        let long = format!("t.{}", "z_".repeat(120));
        let other = format!("t.{}y", "z_".repeat(119));
        let a = topic_for("prefix.", &s(&long));
        let b = topic_for("prefix.", &s(&other));
        assert!(a.len() <= MAX_TOPIC_LEN && valid_topic(&a), "{a}");
        assert_ne!(a, b);
        assert!(a.contains("_h"));
        assert_eq!(subject_for("prefix.", &a), None);
        assert!(is_hashed("prefix.", &a));
        assert!(!is_hashed("", "orders.created"));
        assert_eq!(a, topic_for("prefix.", &s(&long)), "stable");
    }

    #[test]
    fn patterns_become_anchored_regexes() {
        let p = |x: &str| Pattern::new(x).unwrap();
        assert_eq!(topic_regex("", &p("a.*.c")), "^a\\.[^.]+\\.c$");
        assert_eq!(topic_regex("sq.", &p("a_b.>")), "^sq\\.a__b\\..+$");
        assert!(topic_matches("", &p("a.*"), "a.b"));
        assert!(!topic_matches("", &p("a.*"), "a.b.c"));
        assert!(topic_matches("", &p("a.>"), "a.b.c"));
        assert!(!topic_matches("", &p("a.>"), "a"));
    }
}
