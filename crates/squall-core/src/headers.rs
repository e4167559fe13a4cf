//! Message headers: an ordered list of name/value pairs, and the names squall itself uses.
//!
//! Names are 1 to 128 bytes of ASCII letters, digits, `-`, `_` and `.`; lookups ignore ASCII case.
//! Values are UTF-8 without control characters other than tab. The encoded size of all headers is
//! limited to [`MAX_HEADERS_LEN`].

use crate::error::{Error, ErrorKind};

/// Correlates a reply, a retry or a log line with the message that caused it.
pub const CORRELATION_ID: &str = "correlation-id";
/// The subject a reply should be published to.
pub const REPLY_TO: &str = "reply-to";
/// Payload media type, e.g. `application/json`.
pub const CONTENT_TYPE: &str = "content-type";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Schema version of a typed payload.
pub const SCHEMA_VERSION: &str = "schema-version";
/// Delivery attempt, set by middleware that retries through republishing.
pub const ATTEMPT: &str = "squall-attempt";
/// On a dead-lettered message: the JSON [`crate::DeadLetter`] envelope.
pub const DEAD_LETTER: &str = "squall-dead-letter";

/// The largest encoded size of all headers of one message, in bytes.
pub const MAX_HEADERS_LEN: usize = 64 * 1024;
const MAX_NAME_LEN: usize = 128;

/// Ordered message headers. Inserting replaces an existing value of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    /// Sets `name` to `value`, replacing an existing value. Validates both and the total size.
    pub fn insert(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Result<(), Error> {
        let (name, value) = (name.as_ref(), value.as_ref());
        validate(name, value)?;
        let old = self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name));
        let grow = name.len() + value.len() + 8;
        let shrink = old
            .map(|i| self.entries[i].0.len() + self.entries[i].1.len() + 8)
            .unwrap_or(0);
        if self.encoded_len() + grow - shrink > MAX_HEADERS_LEN {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!("headers would exceed {MAX_HEADERS_LEN} bytes adding `{name}`"),
            ));
        }
        match old {
            Some(i) => self.entries[i].1 = value.to_string(),
            None => self.entries.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    /// The value of `name`, ignoring ASCII case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let i = self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))?;
        Some(self.entries.remove(i).1)
    }

    /// All headers in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size counted against [`MAX_HEADERS_LEN`]: names, values and 8 bytes of framing each.
    pub fn encoded_len(&self) -> usize {
        self.entries
            .iter()
            .map(|(n, v)| n.len() + v.len() + 8)
            .sum()
    }
}

fn validate(name: &str, value: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Error::new(
            ErrorKind::InvalidMessage,
            format!(
                "header name `{}` must be 1 to {MAX_NAME_LEN} ASCII letters, digits, `-`, `_` or `.`",
                name.escape_debug()
            ),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Error::new(
            ErrorKind::InvalidMessage,
            format!("header `{name}` has a control character in its value"),
        ));
    }
    Ok(())
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_case_insensitively() {
        let mut h = Headers::new();
        h.insert("Content-Type", "a").unwrap();
        h.insert("content-type", "b").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("CONTENT-TYPE"), Some("b"));
        assert_eq!(h.remove("content-type").as_deref(), Some("b"));
        assert!(h.is_empty());
    }

    #[test]
    fn bad_names_values_and_sizes_are_refused() {
        let mut h = Headers::new();
        assert!(h.insert("", "x").is_err());
        assert!(h.insert("a b", "x").is_err());
        assert!(h.insert("a", "line\nbreak").is_err());
        assert!(h.insert("big", "x".repeat(MAX_HEADERS_LEN)).is_err());
        assert!(h.is_empty(), "a refused insert leaves headers unchanged");
    }
}
