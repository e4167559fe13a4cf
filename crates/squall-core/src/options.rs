//! Parsers for the `key=value` options of backend URLs, shared by the adapters so that they
//! spell values and word errors alike. Each takes the option's `key` and its `value`, and every
//! error is an [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) naming the key
//! (`... (set `key`)`).
//!
//! Two conventions are in use; each adapter keeps its own, so a URL that worked still does and
//! one that was refused still is:
//!
//! | | RabbitMQ, SQS | NATS, Kafka |
//! |---|---|---|
//! | booleans | [`flag`]: `true` `1` `yes` / `false` `0` `no` | [`flag_on_off`]: the same and `on` / `off` |
//! | integers | [`number`]: any value of the type | [`positive`]: above zero |
//! | durations | [`duration`]: `250ms`, `5s`, `2m`, `1h`; zero allowed | [`positive_duration`]: the same or a bare number of seconds; zero refused |
//! | strings | taken as they are | [`nonempty`] |
//!
//! ```
//! use std::time::Duration;
//! use squall_core::options::{duration, flag, positive_duration};
//!
//! assert_eq!(duration("wait_time", "250ms")?, Duration::from_millis(250));
//! assert_eq!(positive_duration("api_timeout", "5")?, Duration::from_secs(5));
//! assert!(flag("mandatory", "yes")?);
//! let e = duration("wait_time", "5").unwrap_err();
//! assert!(e.to_string().contains("`wait_time`"), "{e}");
//! # Ok::<(), squall_core::Error>(())
//! ```

use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// What [`duration`] and [`positive_duration`] say they expected.
const DURATION: &str = "a duration such as 250ms, 5s, 2m or 1h";

/// The error for option `key` whose `value` is not one of what is `expected` (e.g. `"classic or
/// quorum"`): "`value` is not valid here: expected ... (set `key`)".
pub fn invalid(key: &str, value: &str, expected: &str) -> Error {
    Error::config(
        key,
        format!(
            "`{}` is not valid here: expected {expected}",
            value.escape_debug()
        ),
    )
}

/// `url` without its secrets, for errors, logs and reports: the password of `user:password@`
/// becomes `***` (`amqp://guest:***@host/`), a userinfo without a password (a token, as in
/// `nats://token@host`) becomes `***` whole; everything else is kept as written. Only the
/// authority (up to the first `/` or `?` after `scheme://`) is looked at, so an `@` in the path
/// or the query is not taken for a user. Works on any text, URL or not.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => format!("{scheme}://***@{host}{tail}"),
    }
}

/// A boolean written `true`, `1` or `yes`, or `false`, `0` or `no`.
pub fn flag(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(key, value, "true or false")),
    }
}

/// A boolean as [`flag`] reads it, or written `on` or `off`.
pub fn flag_on_off(key: &str, value: &str) -> Result<bool> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => flag(key, value),
    }
}

/// Any value of `T` (the adapters use unsigned integers: a non-negative integer in range).
pub fn number<T: FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .parse()
        .map_err(|_| invalid(key, value, "a non-negative integer"))
}

/// A value of `T` above `T::default()` (zero): a positive integer in range.
pub fn positive<T: FromStr + PartialOrd + Default>(key: &str, value: &str) -> Result<T> {
    match value.parse::<T>() {
        Ok(v) if v > T::default() => Ok(v),
        _ => Err(invalid(key, value, "a positive integer")),
    }
}

/// `value` itself, unless it is empty.
pub fn nonempty<'a>(key: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() {
        Err(Error::config(key, "must not be empty"))
    } else {
        Ok(value)
    }
}

/// A duration with its unit: `250ms`, `5s`, `2m`, `1h`. Zero (`0s`) is allowed; a bare number
/// is refused.
pub fn duration(key: &str, value: &str) -> Result<Duration> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (n, unit) = value.split_at(split);
    with_unit(n, unit).ok_or_else(|| invalid(key, value, DURATION))
}

/// A positive duration: `500ms`, `2s`, `5m`, `1h`, or a bare number of seconds (`30`). Zero
/// in any unit is refused.
pub fn positive_duration(key: &str, value: &str) -> Result<Duration> {
    let (n, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => value.split_at(i),
        None => (value, "s"),
    };
    let d = with_unit(n, unit).ok_or_else(|| invalid(key, value, DURATION))?;
    if d.is_zero() {
        return Err(Error::config(key, "must be positive"));
    }
    Ok(d)
}

/// `n` (decimal digits) of `unit` (`ms`, `s`, `m` or `h`); saturates rather than overflows.
fn with_unit(n: &str, unit: &str) -> Option<Duration> {
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.saturating_mul(60))),
        "h" => Some(Duration::from_secs(n.saturating_mul(3600))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_and_tokens_and_keeps_the_rest() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f?heartbeat=5"),
            "amqp://guest:***@127.0.0.1:5672/%2f?heartbeat=5"
        );
        assert_eq!(redact("nats://tok@h:1"), "nats://***@h:1");
        assert_eq!(
            redact("sqs://AKID:s3cr@t@127.0.0.1:4566?region=x"),
            "sqs://AKID:***@127.0.0.1:4566?region=x",
            "an @ inside the password"
        );
        assert_eq!(
            redact("nats://h:1?name=a@b"),
            "nats://h:1?name=a@b",
            "an @ in the query is not a user"
        );
        assert_eq!(redact("kafka://a:1,b:2"), "kafka://a:1,b:2");
        assert_eq!(redact("not a url: x@y"), "not a url: x@y");
    }
    use crate::ErrorKind;

    fn names_key<T: std::fmt::Debug>(r: Result<T>, key: &str) {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
        assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
    }

    #[test]
    fn flags() {
        for v in ["true", "1", "yes"] {
            assert!(flag("k", v).unwrap(), "{v}");
            assert!(flag_on_off("k", v).unwrap(), "{v}");
        }
        for v in ["false", "0", "no"] {
            assert!(!flag("k", v).unwrap(), "{v}");
            assert!(!flag_on_off("k", v).unwrap(), "{v}");
        }
        assert!(flag_on_off("k", "on").unwrap());
        assert!(!flag_on_off("k", "off").unwrap());
        for v in ["on", "off", "TRUE", "", "maybe"] {
            names_key(flag("fifo", v), "fifo");
        }
        for v in ["TRUE", "", "maybe"] {
            names_key(flag_on_off("jetstream", v), "jetstream");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(number::<u32>("k", "0").unwrap(), 0);
        assert_eq!(number::<usize>("k", "1024").unwrap(), 1024);
        names_key(number::<u32>("max_length", "-1"), "max_length");
        names_key(number::<u8>("batch_size", "256"), "batch_size");
        assert_eq!(positive::<usize>("k", "3").unwrap(), 3);
        assert_eq!(positive::<i64>("k", "7").unwrap(), 7);
        names_key(positive::<usize>("replicas", "0"), "replicas");
        names_key(positive::<i64>("max_bytes", "-5"), "max_bytes");
        names_key(positive::<i32>("partitions", "x"), "partitions");
        assert_eq!(nonempty("k", "v").unwrap(), "v");
        names_key(nonempty("name", ""), "name");
    }

    #[test]
    fn durations_with_a_unit() {
        assert_eq!(duration("k", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("k", "5s").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("k", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("k", "1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("k", "0s").unwrap(), Duration::ZERO);
        assert_eq!(
            duration("k", &format!("{}h", u64::MAX)).unwrap(),
            Duration::from_secs(u64::MAX)
        );
        for v in ["10", "", "s", "5x", "1.5s", "-1s", "5 s"] {
            names_key(duration("group_expiry", v), "group_expiry");
        }
    }

    #[test]
    fn positive_durations() {
        assert_eq!(
            positive_duration("k", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            positive_duration("k", "30").unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            positive_duration("k", "5m").unwrap(),
            Duration::from_secs(300)
        );
        for v in ["0", "0ms", "0h", "", "5x", "ms"] {
            names_key(positive_duration("pull_expires", v), "pull_expires");
        }
    }
}
