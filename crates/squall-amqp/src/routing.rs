//! Subjects and patterns in AMQP terms: the routing key a subject is published with and the
//! bindings a pattern needs.
//!
//! ## The mapping (topic exchange)
//! | squall | AMQP | note |
//! |---|---|---|
//! | subject `a.b.c` | routing key `a.b.c` | |
//! | token `*` | word `*` | exactly one token, both sides |
//! | trailing `>` | `*.#` | one or more tokens; a bare `#` would also match zero |
//! | pattern `>` | `*.#` | every subject |
//! | literal token `#` | word `*` + filter | `#` is a wildcard in a binding; bound as `*`, the extra subjects are dropped on receipt |
//! | subject of 256 bytes | routing key [`LONG_SUBJECT_KEY`] + header | AMQP routing keys hold at most 255 bytes |
//!
//! Every delivery is checked against the subscription's pattern before it is handed out
//! ([`Pattern::matches`] on the subject carried by the message), so a binding may be broader
//! than the pattern but never narrower: a broader binding costs traffic, never correctness.
//!
//! Subjects of exactly 256 bytes (squall allows 256, AMQP 255) are published with the routing key
//! [`LONG_SUBJECT_KEY`] — one word with a space, which no squall subject can equal — and the real
//! subject in the `x-squall-subject` header. Every wildcard subscription, and a literal one of 256
//! bytes, is also bound to that key, so it receives every 256-byte subject and keeps those its
//! pattern matches. A wildcard binding longer than 255 bytes (a `>` adds two) is widened by
//! turning its longest literal words into `*` until it fits.
//!
//! ## Other exchange kinds
//! - `direct`: the binding is the literal subject; wildcard patterns are refused.
//! - `headers`: the binding matches the `squall-route-subject` header exactly; wildcards refused.
//! - `fanout`: one binding with an empty key; every queue receives everything and the pattern
//!   filter does all the work (wildcards emulated, at the cost of all traffic to all queues).

use squall_core::{Error, Pattern, Result, Subject};

use crate::config::ExchangeKind;

/// The longest AMQP routing key (a short string).
pub const MAX_ROUTING_KEY: usize = 255;

/// The routing key of subjects longer than [`MAX_ROUTING_KEY`].
pub const LONG_SUBJECT_KEY: &str = "squall long-subject";

/// The routing key `subject` is published with, and whether the subject must travel in a header
/// because it does not fit.
pub(crate) fn routing_key(subject: &Subject) -> (&str, bool) {
    let s = subject.as_str();
    if s.len() <= MAX_ROUTING_KEY {
        (s, false)
    } else {
        (LONG_SUBJECT_KEY, true)
    }
}

/// One binding of a queue to the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    /// By routing key (topic, direct, fanout).
    Key(String),
    /// By the `squall-route-subject` header (headers exchange).
    Header(String),
}

/// The bindings `pattern` needs on an exchange of `kind`. Fails with `Unsupported` for wildcards
/// on direct and headers exchanges.
pub(crate) fn bindings(kind: ExchangeKind, pattern: &Pattern) -> Result<Vec<Binding>> {
    let literal = pattern.is_literal();
    let p = pattern.as_str();
    match kind {
        ExchangeKind::Fanout => Ok(vec![Binding::Key(String::new())]),
        ExchangeKind::Direct | ExchangeKind::Headers if !literal => Err(Error::unsupported(
            "amqp",
            &format!(
                "wildcard pattern `{p}` on a {} exchange (use exchange_kind=topic or fanout)",
                kind.as_str()
            ),
        )),
        ExchangeKind::Headers => Ok(vec![Binding::Header(p.to_string())]),
        ExchangeKind::Direct => {
            if p.len() <= MAX_ROUTING_KEY {
                Ok(vec![Binding::Key(p.to_string())])
            } else {
                Ok(vec![Binding::Key(LONG_SUBJECT_KEY.to_string())])
            }
        }
        ExchangeKind::Topic => {
            if literal {
                if p.len() <= MAX_ROUTING_KEY {
                    Ok(vec![Binding::Key(topic_words(p))])
                } else {
                    Ok(vec![Binding::Key(LONG_SUBJECT_KEY.to_string())])
                }
            } else {
                Ok(vec![
                    Binding::Key(fit(topic_words(p))),
                    Binding::Key(LONG_SUBJECT_KEY.to_string()),
                ])
            }
        }
    }
}

/// The AMQP topic binding key of a squall pattern, before length fitting.
fn topic_words(p: &str) -> String {
    p.split('.')
        .map(|t| match t {
            ">" => "*.#",
            "#" => "*",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Widens a binding key longer than an AMQP short string by replacing its longest literal words
/// with `*` until it fits. The receipt-side filter restores the exact pattern.
fn fit(mut key: String) -> String {
    while key.len() > MAX_ROUTING_KEY {
        let words: Vec<&str> = key.split('.').collect();
        let Some((i, _)) = words
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != "*" && **w != "#")
            .max_by_key(|(_, w)| w.len())
        else {
            break;
        };
        let mut w: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        w[i] = "*".into();
        key = w.join(".");
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::subject::MAX_SUBJECT_LEN;

    fn topic(p: &str) -> Vec<Binding> {
        bindings(ExchangeKind::Topic, &Pattern::new(p).unwrap()).unwrap()
    }
    fn key(s: &str) -> Binding {
        Binding::Key(s.into())
    }

    /// An implementation of AMQP topic matching, to check bindings against squall's matching.
    fn amqp_matches(binding: &str, routing_key: &str) -> bool {
        fn m(b: &[&str], r: &[&str]) -> bool {
            match (b.first(), r.first()) {
                (None, None) => true,
                (Some(&"#"), _) => m(&b[1..], r) || (!r.is_empty() && m(b, &r[1..])),
                (Some(&"*"), Some(_)) => m(&b[1..], &r[1..]),
                (Some(w), Some(x)) if w == x => m(&b[1..], &r[1..]),
                _ => false,
            }
        }
        let b: Vec<&str> = binding.split('.').collect();
        let r: Vec<&str> = routing_key.split('.').collect();
        m(&b, &r)
    }

    #[test]
    fn wildcards_map_one_to_one_and_tail_to_one_or_more() {
        assert_eq!(topic("a.b"), vec![key("a.b")]);
        assert_eq!(topic("a.*"), vec![key("a.*"), key(LONG_SUBJECT_KEY)]);
        assert_eq!(topic("a.>"), vec![key("a.*.#"), key(LONG_SUBJECT_KEY)]);
        assert_eq!(topic(">"), vec![key("*.#"), key(LONG_SUBJECT_KEY)]);
        assert_eq!(topic("a.#"), vec![key("a.*")], "a literal `#` is widened");
    }

    #[test]
    fn bindings_are_never_narrower_than_patterns() {
        let subjects = ["a", "a.b", "a.b.c", "b.c", "a.#", "#", "a.#.c", "x.y.z.w"];
        let patterns = [
            "a", "a.*", "a.>", ">", "*", "*.c", "a.*.c", "a.#", "#", "*.>", "a.#.>",
        ];
        for p in patterns {
            let pat = Pattern::new(p).unwrap();
            for s in subjects {
                let sub = Subject::new(s).unwrap();
                let (rk, _) = routing_key(&sub);
                let bound = topic(p).iter().any(|b| match b {
                    Binding::Key(k) => amqp_matches(k, rk),
                    Binding::Header(_) => false,
                });
                if pat.matches(&sub) {
                    assert!(
                        bound,
                        "pattern {p} matches {s} but its bindings do not route it"
                    );
                }
                if p == "a.>" && s == "a" {
                    assert!(!bound, "`*.#` must not match zero tokens");
                }
            }
        }
    }

    #[test]
    fn long_subjects_use_the_long_key_and_reach_wildcards() {
        let long = format!("t.{}", "z".repeat(MAX_SUBJECT_LEN - 2));
        let s = Subject::new(&long).unwrap();
        assert_eq!(routing_key(&s), (LONG_SUBJECT_KEY, true));
        assert_eq!(topic(&long), vec![key(LONG_SUBJECT_KEY)]);
        assert!(topic("t.*").contains(&key(LONG_SUBJECT_KEY)));
        let short = Subject::new("a.b").unwrap();
        assert_eq!(routing_key(&short), ("a.b", false));
        assert!(
            Subject::new(LONG_SUBJECT_KEY).is_err(),
            "no subject equals the long key"
        );
    }

    #[test]
    fn overlong_wildcard_bindings_are_widened_to_fit() {
        let p = format!("{}.>", "a".repeat(MAX_SUBJECT_LEN - 2));
        let b = topic(&p);
        let Binding::Key(k) = &b[0] else {
            panic!("{b:?}")
        };
        assert!(k.len() <= MAX_ROUTING_KEY, "{k}");
        assert_eq!(k, "*.*.#");
    }

    #[test]
    fn direct_and_headers_refuse_wildcards_fanout_binds_everything() {
        let w = Pattern::new("a.*").unwrap();
        for kind in [ExchangeKind::Direct, ExchangeKind::Headers] {
            let e = bindings(kind, &w).unwrap_err();
            assert_eq!(e.kind(), squall_core::ErrorKind::Unsupported);
        }
        let lit = Pattern::new("a.b").unwrap();
        assert_eq!(
            bindings(ExchangeKind::Headers, &lit).unwrap(),
            vec![Binding::Header("a.b".into())]
        );
        assert_eq!(bindings(ExchangeKind::Fanout, &w).unwrap(), vec![key("")]);
    }
}
