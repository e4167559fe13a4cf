//! Which JetStream stream holds a subject or serves a pattern, and creating or binding it.
//!
//! With [`StreamScope::Derived`] (the default) the first `stream_depth` tokens of a subject
//! name its stream: with depth 1, `orders.eu.created` lives in stream `squall_orders`, which
//! captures `orders` and `orders.>`. A subject with fewer tokens than the depth gets a stream of
//! its own capturing exactly it. Derived streams never overlap one another. A pattern must be
//! literal in its first `stream_depth` tokens (`orders.*.created` is fine at depth 1, `*.created`
//! is refused with `InvalidConfig`: it would span streams).
//!
//! Streams are created on first use (by a publish or a subscription) and bound if they exist:
//! a stream of the same name with another configuration is used as long as it captures the
//! subjects; when another stream already captures them (`subjects overlap`), that stream is
//! used. The outcome is cached per handle.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_nats::jetstream::{self, stream};
use squall_core::{Durability, Error, ErrorKind, Pattern, Result, Subject};

use crate::config::{NatsConfig, Storage, StreamScope};
use crate::error;

/// A stream in use, with what a publish ack to it may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bound {
    pub name: String,
    pub durability: Durability,
}

/// The streams of one backend handle.
pub(crate) struct Streams {
    js: jetstream::Context,
    config: NatsConfig,
    /// Stream key (the derived capture subject, or the fixed name) → stream.
    bound: Mutex<HashMap<String, Bound>>,
    used: Mutex<BTreeSet<String>>,
}

/// The stream name derived from a key `a.b`: `<prefix>_a_b`, with characters a stream name
/// cannot hold replaced and, when anything was replaced or the name is long, a hash appended
/// so distinct keys keep distinct names.
pub fn derived_name(prefix: &str, key: &str) -> String {
    let mut clean = true;
    let mut s: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else if c == '.' {
                '_'
            } else {
                clean = false;
                '_'
            }
        })
        .collect();
    // `_` stands for `.`: a key holding `_` itself could collide with another.
    if key.contains('_') {
        clean = false;
    }
    if !clean || s.len() > 120 {
        s.truncate(120);
        s.push_str(&format!("_{:08x}", fnv(key)));
    }
    format!("{prefix}_{s}")
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The key and capture subjects of the derived stream for `tokens`.
fn derived_key(tokens: &[&str], depth: usize) -> (String, Vec<String>) {
    let n = tokens.len().min(depth);
    let key = tokens[..n].join(".");
    let subjects = if n == depth {
        vec![key.clone(), format!("{key}.>")]
    } else {
        vec![key.clone()]
    };
    (key, subjects)
}

impl Streams {
    pub fn new(js: jetstream::Context, config: NatsConfig) -> Self {
        Streams {
            js,
            config,
            bound: Mutex::new(HashMap::new()),
            used: Mutex::new(BTreeSet::new()),
        }
    }

    /// Every stream this handle created or bound.
    pub fn used(&self) -> Vec<String> {
        self.used
            .lock()
            .expect("streams lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The stream a publish to `subject` goes to, created if missing.
    pub async fn for_subject(&self, subject: &Subject) -> Result<Bound> {
        match &self.config.streams {
            StreamScope::Fixed { name, subjects } => self.fixed(name, subjects).await,
            StreamScope::Derived { prefix, depth } => {
                let tokens: Vec<&str> = subject.tokens().collect();
                let (key, subjects) = derived_key(&tokens, *depth);
                self.ensure(&key, &derived_name(prefix, &key), &subjects)
                    .await
            }
        }
    }

    /// The stream a subscription to `pattern` reads, created if missing; `explicit` binds a
    /// named stream, which must exist.
    pub async fn for_pattern(&self, pattern: &Pattern, explicit: Option<&str>) -> Result<Bound> {
        if let Some(name) = explicit {
            return self.existing(name).await;
        }
        match &self.config.streams {
            StreamScope::Fixed { name, subjects } => self.fixed(name, subjects).await,
            StreamScope::Derived { prefix, depth } => {
                let tokens: Vec<&str> = pattern.as_str().split('.').collect();
                let head = &tokens[..tokens.len().min(*depth)];
                if head.iter().any(|t| *t == "*" || *t == ">") {
                    return Err(Error::config(
                        "stream_depth",
                        format!(
                            "pattern `{pattern}` has a wildcard within its first {depth} token(s), \
                             so it spans several derived streams; subscribe below that depth, \
                             lower `stream_depth`, or bind one stream with `stream=`"
                        ),
                    ));
                }
                let (key, subjects) = derived_key(head, *depth);
                self.ensure(&key, &derived_name(prefix, &key), &subjects)
                    .await
            }
        }
    }

    async fn fixed(&self, name: &str, subjects: &[String]) -> Result<Bound> {
        if subjects.is_empty() {
            return self.existing(name).await;
        }
        self.ensure(name, name, subjects).await
    }

    fn cached(&self, key: &str) -> Option<Bound> {
        self.bound.lock().expect("streams lock").get(key).cloned()
    }

    fn remember(&self, key: &str, b: Bound) -> Bound {
        self.used
            .lock()
            .expect("streams lock")
            .insert(b.name.clone());
        self.bound
            .lock()
            .expect("streams lock")
            .insert(key.to_string(), b.clone());
        b
    }

    fn durability(&self, storage: stream::StorageType, replicas: usize) -> Durability {
        match storage {
            stream::StorageType::Memory => Durability::Memory,
            stream::StorageType::File if self.config.sync_always && replicas > 1 => {
                Durability::Replicated
            }
            stream::StorageType::File if self.config.sync_always => Durability::Fsynced,
            stream::StorageType::File => Durability::Written,
        }
    }

    async fn existing(&self, name: &str) -> Result<Bound> {
        if let Some(b) = self.cached(name) {
            return Ok(b);
        }
        let mut s = self
            .js
            .get_stream(name)
            .await
            .map_err(|e| error::get_stream(&format!("looking up stream `{name}`"), e))?;
        let info = s.info().await.map_err(|e| {
            Error::new(ErrorKind::Unavailable, format!("reading stream `{name}`")).with_source(e)
        })?;
        let b = Bound {
            name: name.to_string(),
            durability: self.durability(info.config.storage, info.config.num_replicas),
        };
        Ok(self.remember(name, b))
    }

    fn stream_config(&self, name: &str, subjects: &[String]) -> stream::Config {
        let c = &self.config;
        stream::Config {
            name: name.to_string(),
            subjects: subjects.to_vec(),
            storage: match c.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: c.replicas,
            max_age: c.max_age.unwrap_or_default(),
            max_bytes: c.max_bytes.unwrap_or(-1),
            max_messages: c.max_msgs.unwrap_or(-1),
            duplicate_window: c.duplicate_window,
            description: Some("created by squall".into()),
            ..Default::default()
        }
    }

    /// Creates the stream `name` capturing `subjects`, or binds the one that already does.
    async fn ensure(&self, key: &str, name: &str, subjects: &[String]) -> Result<Bound> {
        if let Some(b) = self.cached(key) {
            return Ok(b);
        }
        let config = self.stream_config(name, subjects);
        let created = self.js.create_stream(config.clone()).await;
        let (info_name, storage, replicas) = match created {
            Ok(mut s) => {
                let i = s.info().await.map_err(|e| {
                    Error::new(ErrorKind::Unavailable, format!("reading stream `{name}`"))
                        .with_source(e)
                })?;
                (
                    i.config.name.clone(),
                    i.config.storage,
                    i.config.num_replicas,
                )
            }
            Err(e) => {
                let err = error::create_stream(&format!("creating stream `{name}`"), e);
                if err.kind() != ErrorKind::Conflict {
                    return Err(err);
                }
                // Another configuration under this name, or other streams capture the
                // subjects: bind whatever captures them all.
                let info = self.capturing(name, subjects).await?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "no single stream captures {subjects:?}: stream `{name}` cannot be \
                             created ({err}); bind an existing stream with `stream=` or change \
                             `stream_prefix`"
                        ),
                    )
                })?;
                (
                    info.config.name,
                    info.config.storage,
                    info.config.num_replicas,
                )
            }
        };
        let b = Bound {
            name: info_name,
            durability: self.durability(storage, replicas),
        };
        Ok(self.remember(key, b))
    }

    /// The stream named `name` if it captures `subjects`, else the stream that captures the
    /// first of them if it captures them all.
    async fn capturing(&self, name: &str, subjects: &[String]) -> Result<Option<stream::Info>> {
        let covers = |info: &stream::Info| {
            subjects.iter().all(|s| {
                let Ok(want) = Pattern::new(s) else {
                    return false;
                };
                info.config
                    .subjects
                    .iter()
                    .filter_map(|have| Pattern::new(have).ok())
                    .any(|have| want.is_subset_of(&have))
            })
        };
        if let Ok(mut s) = self.js.get_stream(name).await
            && let Ok(info) = s.info().await
            && covers(info)
        {
            return Ok(Some(info.clone()));
        }
        let Some(first) = subjects.first() else {
            return Ok(None);
        };
        let found = match self.js.stream_by_subject(first.clone()).await {
            Ok(found) => found,
            Err(_) => return Ok(None),
        };
        let mut s = self
            .js
            .get_stream(&found)
            .await
            .map_err(|e| error::get_stream(&format!("looking up stream `{found}`"), e))?;
        let info = s.info().await.map_err(|e| {
            Error::new(ErrorKind::Unavailable, format!("reading stream `{found}`")).with_source(e)
        })?;
        Ok(covers(info).then(|| info.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_follow_the_depth() {
        assert_eq!(
            derived_key(&["orders", "eu", "created"], 1),
            ("orders".into(), vec!["orders".into(), "orders.>".into()])
        );
        assert_eq!(
            derived_key(&["t", "x"], 3),
            ("t.x".into(), vec!["t.x".into()])
        );
        assert_eq!(
            derived_key(&["t", "x", "y", "z"], 3).1,
            vec!["t.x.y".to_string(), "t.x.y.>".to_string()]
        );
    }

    #[test]
    fn derived_names_are_valid_and_distinct() {
        assert_eq!(derived_name("squall", "orders"), "squall_orders");
        assert_eq!(derived_name("squall", "t.a.b"), "squall_t_a_b");
        let a = derived_name("squall", "a_b");
        let b = derived_name("squall", "a.b");
        assert_ne!(a, b);
        let odd = derived_name("squall", "a/b$c");
        assert!(
            odd.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'),
            "{odd}"
        );
        assert!(derived_name("p", &"x".repeat(250)).len() < 140);
    }
}
