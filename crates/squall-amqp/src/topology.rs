//! The exchanges and queues the adapter declares, and their names.
//!
//! | what | name | kind / arguments |
//! |---|---|---|
//! | the exchange | `<exchange>` | `exchange_kind`, durable |
//! | delay exchange | `<exchange>.delay` | headers, durable; routes on `squall-route-delay` and `squall-route-to` |
//! | group queue | `<exchange>.group.<group>.<hash of pattern>` | durable, `x-queue-type`; non-durable groups add `x-expires = group_expiry`; `max_length` adds `x-max-length` + `x-overflow = reject-publish` |
//! | fan-out queue | `<exchange>.sub.<uuid>` | classic, exclusive, auto-delete |
//! | delayed publish | `<exchange>.delay.<ms>` | classic, durable, `x-message-ttl = ms`, dead-letters to `<exchange>` with the subject as routing key |
//! | delayed retry | `<exchange>.retry.<ms>` | classic, durable, `x-message-ttl = ms`, dead-letters to the default exchange, i.e. back to the queue it came from |
//! | parked messages | `<exchange>.parked` | classic, durable: dead letters nobody was subscribed to, and received messages squall cannot decode |
//!
//! A group's queue name holds a hash of its pattern: members of one group must subscribe to the
//! same pattern to compete (as with NATS queue groups); the same group name with another pattern
//! is another queue. RabbitMQ cannot list a queue's bindings over AMQP, so the adapter cannot
//! refuse a second pattern as the embedded broker does.
//!
//! Delays are rounded up to two significant digits of milliseconds (1234 ms waits 1300 ms), so
//! jittered delays share a bounded set of queues. Delay and retry queues expire after `2 × delay + 10 min` without being declared; a handle
//! declares one again before using it when its last declaration is over 5 minutes old, so a queue
//! holding messages is never deleted under them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind as LapinKind};
use squall_core::{Error, ErrorKind, Pattern, Result};

use crate::codec::{H_ROUTE_DELAY, H_ROUTE_SUBJECT, H_ROUTE_TO};
use crate::config::{AmqpConfig, ExchangeKind, QueueType};
use crate::error::amqp;
use crate::routing::Binding;

/// The longest delay or nack delay: twice it plus ten minutes must stay under RabbitMQ's largest
/// timer (2^32 − 1 ms, about 49.7 days).
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 86_400);

const REDECLARE_AFTER: Duration = Duration::from_secs(300);

/// What a handle declared, for operators and for cleaning up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// Exchanges.
    pub exchanges: BTreeSet<String>,
    /// Durable queues (group, delay, retry and parked queues; not the exclusive fan-out queues,
    /// which RabbitMQ deletes with their connection).
    pub queues: BTreeSet<String>,
}

/// Names, arguments and declarations; one per handle.
#[derive(Debug)]
pub(crate) struct Topology {
    declared: Mutex<Declared>,
    /// When each delay or retry queue was last declared by this handle.
    delay_queues: Mutex<HashMap<String, Instant>>,
}

fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn ms(d: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Topology {
    pub fn new() -> Self {
        Topology {
            declared: Mutex::new(Declared::default()),
            delay_queues: Mutex::new(HashMap::new()),
        }
    }

    pub fn declared(&self) -> Declared {
        self.declared.lock().expect("declared lock").clone()
    }

    fn note_queue(&self, name: &str) {
        self.declared
            .lock()
            .expect("declared lock")
            .queues
            .insert(name.to_string());
    }

    /// Declares the exchange (and, with `delay`, the delay exchange).
    pub async fn exchange(&self, ch: &Channel, cfg: &AmqpConfig, delay: bool) -> Result<()> {
        let kind = match cfg.exchange_kind {
            ExchangeKind::Topic => LapinKind::Topic,
            ExchangeKind::Direct => LapinKind::Direct,
            ExchangeKind::Fanout => LapinKind::Fanout,
            ExchangeKind::Headers => LapinKind::Headers,
        };
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            cfg.exchange.as_str().into(),
            kind,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            amqp(
                &format!(
                    "declaring exchange `{}` of kind {}",
                    cfg.exchange,
                    cfg.exchange_kind.as_str()
                ),
                e,
            )
        })?;
        self.declared
            .lock()
            .expect("declared lock")
            .exchanges
            .insert(cfg.exchange.clone());
        if delay {
            let name = delay_exchange(cfg);
            ch.exchange_declare(
                name.as_str().into(),
                LapinKind::Headers,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|e| amqp(&format!("declaring exchange `{name}`"), e))?;
            self.declared
                .lock()
                .expect("declared lock")
                .exchanges
                .insert(name);
        }
        Ok(())
    }

    /// Declares the queue of `group` for `pattern` and returns its name.
    pub async fn group_queue(
        &self,
        ch: &Channel,
        cfg: &AmqpConfig,
        group: &str,
        pattern: &Pattern,
        durable_group: bool,
    ) -> Result<String> {
        let name = group_queue_name(cfg, group, pattern);
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long(cfg.queue_type.as_str()));
        if !durable_group {
            args.insert("x-expires".into(), ms(cfg.group_expiry));
        }
        if let Some(n) = cfg.max_length {
            args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(n)));
            args.insert("x-overflow".into(), long("reject-publish"));
        }
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(short(&name)?, opts, args)
            .await
            .map_err(|e| {
                amqp(
                    &format!(
                        "declaring queue `{name}` of group `{group}` ({}, {})",
                        cfg.queue_type.as_str(),
                        if durable_group {
                            "durable"
                        } else {
                            "expires when idle"
                        }
                    ),
                    e,
                )
            })?;
        self.note_queue(&name);
        Ok(name)
    }

    /// Declares an exclusive fan-out queue and returns its name.
    pub async fn fanout_queue(&self, ch: &Channel, cfg: &AmqpConfig) -> Result<String> {
        let name = format!("{}.sub.{}", cfg.exchange, uuid::Uuid::now_v7().simple());
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long(QueueType::Classic.as_str()));
        ch.queue_declare(short(&name)?, opts, args)
            .await
            .map_err(|e| amqp(&format!("declaring fan-out queue `{name}`"), e))?;
        Ok(name)
    }

    /// Binds `queue` as `bindings` say.
    pub async fn bind(
        &self,
        ch: &Channel,
        cfg: &AmqpConfig,
        queue: &str,
        bindings: &[Binding],
    ) -> Result<()> {
        for b in bindings {
            let (key, args) = match b {
                Binding::Key(k) => (k.clone(), FieldTable::default()),
                Binding::Header(subject) => {
                    let mut t = FieldTable::default();
                    t.insert("x-match".into(), long("all"));
                    t.insert(H_ROUTE_SUBJECT.into(), long(subject));
                    (String::new(), t)
                }
            };
            ch.queue_bind(
                short(queue)?,
                cfg.exchange.as_str().into(),
                short(&key)?,
                QueueBindOptions::default(),
                args,
            )
            .await
            .map_err(|e| amqp(&format!("binding queue `{queue}` with `{key}`"), e))?;
        }
        Ok(())
    }

    /// Makes sure the delay (`to_queue = false`) or retry (`to_queue = true`) queue for `delay`
    /// exists; declares it when this handle has not, or not for 5 minutes.
    pub async fn delay_queue(
        &self,
        ch: &Channel,
        cfg: &AmqpConfig,
        delay: Duration,
        to_queue: bool,
    ) -> Result<()> {
        if delay > MAX_DELAY {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!("a delay of {delay:?} is over the AMQP adapter's limit of {MAX_DELAY:?}"),
            ));
        }
        let delay_ms = delay_ms(delay);
        let name = format!(
            "{}.{}.{delay_ms}",
            cfg.exchange,
            if to_queue { "retry" } else { "delay" }
        );
        let fresh = self
            .delay_queues
            .lock()
            .expect("delay queue lock")
            .get(&name)
            .is_some_and(|t| t.elapsed() < REDECLARE_AFTER);
        if fresh {
            return Ok(());
        }
        self.exchange(ch, cfg, true).await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long(QueueType::Classic.as_str()));
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
        );
        // From the rounded delay: every handle must declare the queue with equal arguments.
        let rounded = Duration::from_millis(delay_ms);
        args.insert(
            "x-expires".into(),
            ms(rounded * 2 + Duration::from_secs(600)),
        );
        let target = if to_queue { "" } else { cfg.exchange.as_str() };
        args.insert("x-dead-letter-exchange".into(), long(target));
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(short(&name)?, opts, args)
            .await
            .map_err(|e| amqp(&format!("declaring delay queue `{name}`"), e))?;
        let mut bind = FieldTable::default();
        bind.insert("x-match".into(), long("all"));
        bind.insert(H_ROUTE_DELAY.into(), long(&delay_ms.to_string()));
        bind.insert(
            H_ROUTE_TO.into(),
            long(if to_queue { "queue" } else { "exchange" }),
        );
        ch.queue_bind(
            short(&name)?,
            delay_exchange(cfg).as_str().into(),
            ShortString::from(""),
            QueueBindOptions::default(),
            bind,
        )
        .await
        .map_err(|e| amqp(&format!("binding delay queue `{name}`"), e))?;
        self.note_queue(&name);
        self.delay_queues
            .lock()
            .expect("delay queue lock")
            .insert(name, Instant::now());
        Ok(())
    }

    /// Declares the parked-messages queue and returns its name.
    pub async fn parked_queue(&self, ch: &Channel, cfg: &AmqpConfig) -> Result<String> {
        let name = parked_queue_name(cfg);
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long(QueueType::Classic.as_str()));
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(short(&name)?, opts, args)
            .await
            .map_err(|e| amqp(&format!("declaring queue `{name}`"), e))?;
        self.note_queue(&name);
        Ok(name)
    }
}

/// The delay exchange's name.
pub(crate) fn delay_exchange(cfg: &AmqpConfig) -> String {
    format!("{}.delay", cfg.exchange)
}

/// The parked-messages queue's name.
pub fn parked_queue_name(cfg: &AmqpConfig) -> String {
    format!("{}.parked", cfg.exchange)
}

/// The queue of `group` subscribed to `pattern`.
pub fn group_queue_name(cfg: &AmqpConfig, group: &str, pattern: &Pattern) -> String {
    format!(
        "{}.group.{group}.{:016x}",
        cfg.exchange,
        fnv64(pattern.as_str())
    )
}

/// A delay in whole milliseconds, rounded up (never early) to two significant digits, so that
/// jittered delays share a bounded set of delay queues (at most 90 per power of ten, each at
/// most 10% later than asked).
pub(crate) fn delay_ms(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let mut step = 1u64;
    while ms / step >= 100 {
        step = step.saturating_mul(10);
    }
    ms.div_ceil(step).saturating_mul(step)
}

fn short(s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| {
        Error::new(
            ErrorKind::Internal,
            format!("AMQP name `{s}` is over 255 bytes"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_group_queues_depend_on_the_pattern() {
        let cfg = AmqpConfig::from_url(&format!(
            "amqp://h?exchange={}",
            "e".repeat(crate::config::MAX_EXCHANGE_LEN)
        ))
        .unwrap();
        let g = "g".repeat(squall_core::subscription::MAX_GROUP_LEN);
        let a = group_queue_name(&cfg, &g, &Pattern::new("a.>").unwrap());
        let b = group_queue_name(&cfg, &g, &Pattern::new("a.*").unwrap());
        assert!(a.len() <= 255, "{}", a.len());
        assert_ne!(a, b);
        assert_eq!(a, group_queue_name(&cfg, &g, &Pattern::new("a.>").unwrap()));
        assert_eq!(delay_ms(Duration::from_micros(1500)), 2);
        assert_eq!(delay_ms(Duration::from_millis(57)), 57);
        assert_eq!(delay_ms(Duration::from_millis(1000)), 1000);
        assert_eq!(delay_ms(Duration::from_millis(1234)), 1300);
        assert_eq!(delay_ms(Duration::from_millis(99_001)), 100_000);
        let queues: std::collections::BTreeSet<u64> = (1..=60_000)
            .map(|ms| delay_ms(Duration::from_millis(ms)))
            .collect();
        assert!(queues.len() <= 5 * 90, "{} distinct delays", queues.len());
    }
}
