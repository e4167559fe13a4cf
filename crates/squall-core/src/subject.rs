//! Subjects (`orders.eu.created`) and patterns (`orders.*.created`, `orders.>`).
//!
//! A subject is one to [`MAX_SUBJECT_LEN`] bytes of dot-separated, non-empty tokens of printable
//! ASCII without `*` or `>`. A pattern has the same shape, where a token may also be `*` (exactly one
//! token) or, as the last token only, `>` (one or more tokens). Both are validated on construction and
//! cheap to clone.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind};

/// The longest subject or pattern, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;

/// A concrete, validated subject messages are published to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Arc<str>);

/// A validated subscription pattern.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(Arc<str>);

fn check_shape(s: &str, what: &str, kind: ErrorKind) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::new(kind, format!("{what} is empty")));
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Err(Error::new(
            kind,
            format!(
                "{what} `{}...` is {} bytes, over the limit of {MAX_SUBJECT_LEN}",
                s.chars().take(32).collect::<String>(),
                s.len()
            ),
        ));
    }
    for token in s.split('.') {
        if token.is_empty() {
            return Err(Error::new(kind, format!("{what} `{s}` has an empty token")));
        }
        if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(Error::new(
                kind,
                format!(
                    "{what} `{}` contains {c:?}: only printable ASCII without spaces",
                    s.escape_debug()
                ),
            ));
        }
    }
    Ok(())
}

impl Subject {
    /// Validates `s` as a publish subject.
    pub fn new(s: impl AsRef<str>) -> Result<Self, Error> {
        let s = s.as_ref();
        check_shape(s, "subject", ErrorKind::InvalidSubject)?;
        if let Some(token) = s.split('.').find(|t| t.contains(['*', '>'])) {
            return Err(Error::new(
                ErrorKind::InvalidSubject,
                format!("subject `{s}` has wildcard token `{token}`: wildcards belong in patterns"),
            ));
        }
        Ok(Subject(s.into()))
    }

    /// The subject as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its dot-separated tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// This subject with `prefix.` in front, validated.
    pub fn prefixed(&self, prefix: &str) -> Result<Subject, Error> {
        Subject::new(format!("{prefix}.{}", self.0))
    }
}

impl Pattern {
    /// Validates `s` as a pattern.
    pub fn new(s: impl AsRef<str>) -> Result<Self, Error> {
        let s = s.as_ref();
        check_shape(s, "pattern", ErrorKind::InvalidPattern)?;
        let n = s.split('.').count();
        for (i, token) in s.split('.').enumerate() {
            let wild = token.contains(['*', '>']);
            if wild && token != "*" && token != ">" {
                return Err(Error::new(
                    ErrorKind::InvalidPattern,
                    format!(
                        "pattern `{s}`: token `{token}` mixes a wildcard with other characters"
                    ),
                ));
            }
            if token == ">" && i + 1 != n {
                return Err(Error::new(
                    ErrorKind::InvalidPattern,
                    format!("pattern `{s}`: `>` may only be the last token"),
                ));
            }
        }
        Ok(Pattern(s.into()))
    }

    /// The pattern as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern has no wildcard (matches exactly one subject).
    pub fn is_literal(&self) -> bool {
        !self.0.split('.').any(|t| t == "*" || t == ">")
    }

    /// Whether `subject` matches.
    pub fn matches(&self, subject: &Subject) -> bool {
        let mut p = self.0.split('.');
        let mut s = subject.0.split('.');
        loop {
            match (p.next(), s.next()) {
                (None, None) => return true,
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    /// Whether every subject this pattern matches is also matched by `other`.
    pub fn is_subset_of(&self, other: &Pattern) -> bool {
        let mut p = self.0.split('.');
        let mut q = other.0.split('.');
        loop {
            match (p.next(), q.next()) {
                (None, None) => return true,
                (Some(_), Some(">")) => return true,
                (Some(">"), Some(_)) => return false,
                (Some(_), Some("*")) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    /// Whether some subject matches both patterns.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let mut p = self.0.split('.');
        let mut q = other.0.split('.');
        loop {
            match (p.next(), q.next()) {
                (None, None) => return true,
                (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }
}

impl From<Subject> for Pattern {
    fn from(s: Subject) -> Self {
        Pattern(s.0)
    }
}

macro_rules! string_like {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $t {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                <$t>::new(s)
            }
        }
        impl TryFrom<&str> for $t {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self, Error> {
                <$t>::new(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                <$t>::new(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$t>::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_like!(Subject);
string_like!(Pattern);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }
    fn s(x: &str) -> Subject {
        Subject::new(x).unwrap()
    }

    #[test]
    fn invalid_subjects_are_rejected_with_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("a..b", "empty token"),
            (".a", "empty token"),
            ("a.", "empty token"),
            ("a b", "printable"),
            ("a.*", "wildcard"),
            ("a.>", "wildcard"),
            ("a.b*", "wildcard"),
            ("caf\u{e9}", "printable"),
        ] {
            let err = Subject::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidSubject, "{bad:?}");
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        assert!(
            Subject::new(&long)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
        assert!(Subject::new("a".repeat(MAX_SUBJECT_LEN)).is_ok());
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in ["", "a.>.b", "a*", "a.b>", ">.a", "a..*"] {
            assert_eq!(
                Pattern::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidPattern,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn matching_follows_token_rules() {
        assert!(p("orders.*").matches(&s("orders.created")));
        assert!(!p("orders.*").matches(&s("orders.eu.created")));
        assert!(!p("orders.*").matches(&s("orders")));
        assert!(p("orders.>").matches(&s("orders.eu.created")));
        assert!(!p("orders.>").matches(&s("orders")));
        assert!(p(">").matches(&s("x")));
        assert!(p("a.b").matches(&s("a.b")));
        assert!(!p("a.b").matches(&s("a.bc")));
    }

    #[test]
    fn subset_and_overlap() {
        assert!(p("orders.eu").is_subset_of(&p("orders.*")));
        assert!(p("orders.*").is_subset_of(&p("orders.>")));
        assert!(!p("orders.>").is_subset_of(&p("orders.*")));
        assert!(p("orders.>").is_subset_of(&p(">")));
        assert!(!p("orders").is_subset_of(&p("orders.>")));
        assert!(p("orders.*").overlaps(&p("*.eu")));
        assert!(!p("orders.*").overlaps(&p("billing.>")));
        assert!(!p("a.*").overlaps(&p("a.*.c")));
        assert!(p("a.>").overlaps(&p("a.*.c")));
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof!["a", "b", "c"].prop_map(|s| s.to_string())
    }
    fn subject() -> impl Strategy<Value = Subject> {
        prop::collection::vec(token(), 1..5).prop_map(|t| Subject::new(t.join(".")).unwrap())
    }
    fn pattern() -> impl Strategy<Value = Pattern> {
        (
            prop::collection::vec(prop_oneof![token(), Just("*".to_string())], 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut t, tail)| {
                if tail {
                    *t.last_mut().unwrap() = ">".into();
                }
                Pattern::new(t.join(".")).unwrap()
            })
    }

    proptest! {
        /// `is_subset_of` and `overlaps` agree with `matches` on every subject drawn.
        #[test]
        fn set_relations_agree_with_matching(a in pattern(), b in pattern(), subs in prop::collection::vec(subject(), 1..40)) {
            for x in &subs {
                if a.is_subset_of(&b) && a.matches(x) {
                    prop_assert!(b.matches(x), "{a} ⊆ {b} but {x} matches only {a}");
                }
                if a.matches(x) && b.matches(x) {
                    prop_assert!(a.overlaps(&b), "{x} matches {a} and {b} yet they do not overlap");
                }
            }
        }
    }
}
