//! The fault part of `squall certify`: a short keyed workload through the chaos lab's TCP fault
//! proxy, with the link cut mid-run.
//!
//! A producer publishes `n` messages over 8 keys through the proxy, spread over 8 s at least
//! (each key's messages one after the other; a failed send or confirm is retried with the same
//! message id, so backends with deduplication can drop the copy); one consumer in a durable
//! group receives and acks them, also through the proxy. Once a third is confirmed the
//! [`Fault`] strikes: the proxy goes down (every connection closed, new ones refused) for 2 s,
//! then up again; or, with `--stop` and `--start` ([`crate::certify_restart`]), the broker
//! itself is stopped and started. At the end every confirmed message must have been received:
//! the figures are what a user of this backend would have seen.
//!
//! The proxy takes the place of the URL's `host:port` ([`run`]), or, with `--front`
//! ([`Front`]), stands at the address a broker advertises for the whole certification (Kafka
//! clients bootstrap through the URL and then dial the advertised listener, which a proxy in
//! the URL's place would not carry).
//!
//! Kept apart from the chaos lab's scenario runner on purpose: it is a fixed, short probe that
//! any URL can take, and its figures go into one table row each.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use squall_chaos::process::ExternalBroker;
use squall_chaos::proxy::{Proxy, ProxyHandle};
use squall_core::{Message, Subject, Subscription};
use tokio::sync::Mutex;

use crate::backends;

const KEYS: u64 = 8;
const OUTAGE: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(60);
/// The producers spread their messages over this time at least (a backend that takes them
/// more slowly sets its own pace): unpaced, a fast backend (core NATS, RabbitMQ) confirms all
/// of them while a stop command is still running, and the fault strikes an idle workload.
const PACE: Duration = Duration::from_secs(8);
/// The longest drain after the producers finished. It ends sooner when every confirmed message
/// arrived or nothing new arrived for 10 s; the cap only stops a backend that is still
/// delivering, slowly (moto's receives slow down with the queue's depth), so it is generous:
/// a message merely late must not count as lost.
const DRAIN: Duration = Duration::from_secs(300);

/// What the fault scenario observed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultFigures {
    /// Messages the producer offered.
    pub offered: u64,
    /// Confirmed by the backend.
    pub confirmed: u64,
    /// Confirmed but never received: lost.
    pub lost: u64,
    /// Deliveries beyond the first of a message.
    pub duplicates: u64,
    /// First deliveries that came after a later message of the same key.
    pub reorders: u64,
    /// How long the fault lasted: the link cut's 2 s, or from the stop command to the broker
    /// answering again after the start command.
    pub outage_ms: u64,
    /// From the healing (the link coming up, or the start command beginning: a restart's
    /// recovery includes the broker's start-up) to the first confirmed publish and the first
    /// delivery after it, whichever is later; `None` when nothing was sent or received after
    /// it (everything had been sent, or the backend never recovered).
    pub recovery_ms: Option<u64>,
}

/// What strikes the workload once a third of its messages are confirmed.
#[derive(Debug, Clone, Copy)]
pub enum Fault<'a> {
    /// The proxy every connection passes goes down for 2 s, then up.
    LinkCut(&'a ProxyHandle),
    /// The broker is stopped, then started and waited for (its ready check).
    Restart(&'a ExternalBroker),
}

impl Fault<'_> {
    /// Strikes and heals; how long it lasted. `healed` is set just before the healing action
    /// (the proxy coming up, the start command): no traffic can flow before it, so whatever
    /// is confirmed or delivered after that instant counts as recovered.
    async fn strike(self, healed: &Mutex<Option<Instant>>) -> anyhow::Result<Duration> {
        let started = Instant::now();
        match self {
            Fault::LinkCut(proxy) => {
                proxy.down().await;
                tokio::time::sleep(OUTAGE).await;
                *healed.lock().await = Some(Instant::now());
                proxy.up().await.context("bringing the proxy back up")?;
            }
            Fault::Restart(broker) => {
                broker.stop().await.context("--stop")?;
                *healed.lock().await = Some(Instant::now());
                broker.start().await.context("--start")?;
            }
        }
        Ok(started.elapsed())
    }
}

/// Adds the fault rows to the certificate table: the link cut's, then the broker restart's.
pub fn rows(row: &mut impl FnMut(&str, &dyn Fn(&crate::certify::Certificate) -> String)) {
    figure_rows(row, "link cut 2 s", |c| c.faults.as_ref(), "—");
    row("broker restart: stop → ready", &|c| {
        c.restart
            .as_ref()
            .map(|f| format!("{} ms", f.outage_ms))
            .unwrap_or_else(|| "not run".into())
    });
    figure_rows(row, "broker restart", |c| c.restart.as_ref(), "not run");
}

fn figure_rows(
    row: &mut impl FnMut(&str, &dyn Fn(&crate::certify::Certificate) -> String),
    fault: &str,
    pick: fn(&crate::certify::Certificate) -> Option<&FaultFigures>,
    absent: &str,
) {
    let fig = |c: &crate::certify::Certificate, f: &dyn Fn(&FaultFigures) -> String| {
        pick(c).map(f).unwrap_or_else(|| absent.into())
    };
    row(&format!("{fault}: confirmed / lost"), &|c| {
        fig(c, &|f| format!("{} / {}", f.confirmed, f.lost))
    });
    row(&format!("{fault}: duplicate rate"), &|c| {
        fig(c, &|f| {
            let rate = f.duplicates as f64 / f.confirmed.max(1) as f64 * 100.0;
            format!("{rate:.2} %")
        })
    });
    row(&format!("{fault}: per-key order violations"), &|c| {
        fig(c, &|f| f.reorders.to_string())
    });
    row(&format!("{fault}: recovery"), &|c| {
        fig(c, &|f| {
            f.recovery_ms
                .map(|m| format!("{m} ms"))
                .unwrap_or_else(|| "not observed: nothing sent or received after the fault".into())
        })
    });
}

/// `url` with its `host:port` replaced by `to`, and that `host:port` (the chaos lab's URL
/// helpers, shared with `squall chaos run --backend`).
pub fn via(url: &str, to: SocketAddr) -> anyhow::Result<(String, String)> {
    let host = squall_chaos::runner::target::host_port(url).with_context(|| {
        format!(
            "the fault scenario needs one host:port in {}",
            backends::redact(url)
        )
    })?;
    Ok((
        squall_chaos::runner::target::via(url, &to.to_string())?,
        host,
    ))
}

/// `--front LISTEN=UPSTREAM`: a fault proxy at a fixed address, in front of the backend for a
/// whole certification (see `squall certify --help`).
#[derive(Debug, Clone)]
pub struct Front {
    listen: SocketAddr,
    upstream: String,
}

impl Front {
    /// Parses `LISTEN=UPSTREAM`: LISTEN a socket address, UPSTREAM a `host:port`.
    pub fn parse(s: &str) -> Result<Front, String> {
        let (listen, upstream) = s.split_once('=').ok_or_else(|| {
            format!("`{s}` is not LISTEN=UPSTREAM (e.g. 127.0.0.1:19092=127.0.0.1:19093)")
        })?;
        let listen = listen
            .parse()
            .map_err(|e| format!("LISTEN `{listen}` is not an IP address and port: {e}"))?;
        if !squall_chaos::runner::target::is_host_port(upstream) {
            return Err(format!("UPSTREAM `{upstream}` is not host:port"));
        }
        Ok(Front {
            listen,
            upstream: upstream.to_string(),
        })
    }

    /// UPSTREAM: where the broker behind the proxy listens.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The front whose LISTEN is the `host:port` of `url`, if any.
    pub fn find<'a>(fronts: &'a [Front], url: &str) -> Option<&'a Front> {
        let addr: SocketAddr = squall_chaos::runner::target::host_port(url)?.parse().ok()?;
        fronts.iter().find(|f| f.listen == addr)
    }

    /// Starts the proxy.
    pub async fn spawn(&self) -> anyhow::Result<ProxyHandle> {
        Proxy::new(self.listen, self.upstream.clone())
            .name("certify-front")
            .spawn()
            .await
            .with_context(|| format!("--front: listening on {}", self.listen))
    }
}

#[derive(Default)]
struct Seen {
    received: HashMap<String, u64>,
    last_seq: HashMap<u64, u64>,
    reorders: u64,
    first_after_up: Option<Instant>,
}

/// Runs the probe against `url`.
pub async fn run(url: &str, n: u64) -> anyhow::Result<FaultFigures> {
    let (_, upstream) = via(url, "127.0.0.1:1".parse()?)?;
    let proxy = Proxy::new("127.0.0.1:0".parse()?, upstream)
        .name("certify")
        .spawn()
        .await
        .context("starting the fault proxy")?;
    let (proxied, _) = via(url, proxy.listen_addr())?;
    let result = workload(&proxied, n, Fault::LinkCut(&proxy)).await;
    // The workload's clients are closed and dropped; their connections end on their own.
    // Stopping the proxy first would look like an outage to a client library still tearing
    // its connection down: async-nats 0.51 then reconnects to the stopped proxy for ever.
    proxy.until_idle(Duration::from_secs(5)).await;
    proxy.stop().await;
    result
}

/// Runs the probe against `url` with `fault` striking mid-run (a link cut: every connection to
/// `url` must pass its proxy).
pub async fn workload(url: &str, n: u64, fault: Fault<'_>) -> anyhow::Result<FaultFigures> {
    let backend = backends::connect(url).await?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let caps = backend.capabilities();
    // One subject per key under a wildcard, or (a backend without wildcards, e.g. SQS) one
    // subject for all keys: the key travels in the message either way.
    let wildcards = caps.wildcards.available();
    let subject = |k: u64| {
        if wildcards {
            Subject::new(format!("certify.{tag}.keys.k{k}"))
        } else {
            Subject::new(format!("certify.{tag}.keys"))
        }
    };
    let pattern = if wildcards {
        format!("certify.{tag}.keys.*")
    } else {
        format!("certify.{tag}.keys")
    };
    let mut sub = Subscription::new(pattern)?
        .group(format!("certify{tag}"))?
        .durable(caps.durable_groups.available())
        .ordered_by_key(caps.key_ordering.available());
    if caps.redelivery.available() {
        sub = sub.ack_wait(Duration::from_secs(3)).max_deliveries(100);
    }
    let mut consumer = backend.subscribe(sub).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let healed = Arc::new(Mutex::new(None::<Instant>));
    let done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (seen, healed, done, received) =
            (seen.clone(), healed.clone(), done.clone(), received.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let d =
                    match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                        Err(_) | Ok(Some(Err(_))) => continue,
                        Ok(None) => break,
                        Ok(Some(Ok(d))) => d,
                    };
                let id = d.message().id().to_string();
                let key_seq = parse(d.message().payload());
                {
                    let mut s = seen.lock().await;
                    let count = s.received.entry(id).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        received.fetch_add(1, Ordering::Relaxed);
                        if let Some((k, seq)) = key_seq {
                            let last = s.last_seq.get(&k).copied().unwrap_or(0);
                            if seq < last {
                                s.reorders += 1;
                            }
                            s.last_seq.insert(k, last.max(seq));
                        }
                    }
                    if s.first_after_up.is_none() && healed.lock().await.is_some() {
                        s.first_after_up = Some(Instant::now());
                    }
                }
                let _ = d.ack().await;
            }
            let _ = consumer.close().await;
        })
    };
    let started = Instant::now();
    let confirmed_count = Arc::new(AtomicU64::new(0));
    let after_up = Arc::new(Mutex::new(None::<Instant>));
    let mut producers = tokio::task::JoinSet::new();
    for key in 0..KEYS {
        let (b, healed, after_up, count) = (
            backend.clone(),
            healed.clone(),
            after_up.clone(),
            confirmed_count.clone(),
        );
        let msgs = (0..n)
            .filter(|i| i % KEYS == key)
            .map(|i| {
                let due = tokio::time::Instant::from_std(started)
                    + PACE.mul_f64(i as f64 / n.max(1) as f64);
                let msg = Message::builder(subject(key)?.as_str())?
                    .id(format!("{tag}-{i}"))?
                    .key(format!("k{key}"))?
                    .payload(format!("{key}:{}", i / KEYS))
                    .build();
                Ok((due, msg))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // One key's messages one after the other: a retry never overtakes, so the order the
        // consumer sees is the broker's.
        producers.spawn(async move {
            let mut ok = Vec::new();
            'next: for (due, msg) in msgs {
                tokio::time::sleep_until(due).await;
                while started.elapsed() < TIMEOUT {
                    if b.publish(msg.clone()).await.is_ok() {
                        ok.push(msg.id().to_string());
                        count.fetch_add(1, Ordering::Relaxed);
                        if healed.lock().await.is_some() {
                            after_up.lock().await.get_or_insert_with(Instant::now);
                        }
                        continue 'next;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                break;
            }
            ok
        });
    }
    while confirmed_count.load(Ordering::Relaxed) < n / 3 && started.elapsed() < TIMEOUT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let outage = match fault.strike(&healed).await {
        Ok(d) => d,
        Err(e) => {
            // Nothing to measure: stop the workload and say why.
            producers.abort_all();
            done.store(true, Ordering::Relaxed);
            let _ = reader.await;
            let _ = backend.close().await;
            return Err(e);
        }
    };
    let mut confirmed: HashSet<String> = HashSet::new();
    while let Some(r) = producers.join_next().await {
        confirmed.extend(r?);
    }
    let first_confirm_after_up = *after_up.lock().await;
    // Drain: until every confirmed message arrived, or nothing new for 10 s, or DRAIN after the
    // producers finished (its own window: slow producers must not shorten it, or messages
    // merely late would count as lost).
    let drain_started = Instant::now();
    let mut last = (received.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = received.load(Ordering::Relaxed);
        let have_all = {
            let s = seen.lock().await;
            confirmed.iter().all(|id| s.received.contains_key(id))
        };
        if have_all || last.1.elapsed() > Duration::from_secs(10) || drain_started.elapsed() > DRAIN
        {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::Relaxed);
    let _ = reader.await;
    let _ = backend.close().await;
    let s = seen.lock().await;
    let healed = *healed.lock().await;
    let recovery = healed.and_then(|h| {
        let c = first_confirm_after_up?;
        let d = s.first_after_up?;
        Some(c.max(d).saturating_duration_since(h).as_millis() as u64)
    });
    Ok(FaultFigures {
        offered: n,
        confirmed: confirmed.len() as u64,
        lost: confirmed
            .iter()
            .filter(|id| !s.received.contains_key(*id))
            .count() as u64,
        duplicates: s.received.values().map(|c| c - 1).sum(),
        reorders: s.reorders,
        outage_ms: outage.as_millis() as u64,
        recovery_ms: recovery,
    })
}

fn parse(payload: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(payload).ok()?;
    let (k, seq) = s.split_once(':')?;
    Some((k.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_takes_the_place_of_host_and_port() {
        let to: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let (u, host) = via("amqp://guest:guest@127.0.0.1:5672/%2f", to).unwrap();
        assert_eq!(u, "amqp://guest:guest@127.0.0.1:9999/%2f");
        assert_eq!(host, "127.0.0.1:5672");
        let (u, _) = via("sqs://127.0.0.1:4566?region=us-east-1", to).unwrap();
        assert_eq!(u, "sqs://127.0.0.1:9999?region=us-east-1");
        let (u, _) = via("nats://127.0.0.1:4222", to).unwrap();
        assert_eq!(u, "nats://127.0.0.1:9999");
        assert!(via("kafka://a:1,b:2", to).is_err());
        assert!(via("no-scheme", to).is_err());
    }

    #[test]
    fn a_front_is_found_by_the_address_its_url_names() {
        let fronts = [
            Front::parse("127.0.0.1:19092=127.0.0.1:19093").unwrap(),
            Front::parse("127.0.0.1:4300=localhost:4222").unwrap(),
        ];
        let f = Front::find(&fronts, "kafka://127.0.0.1:19092?storage=memory").unwrap();
        assert_eq!(f.upstream, "127.0.0.1:19093");
        assert_eq!(
            Front::find(&fronts, "nats://127.0.0.1:4300")
                .unwrap()
                .upstream,
            "localhost:4222"
        );
        assert!(Front::find(&fronts, "kafka://127.0.0.1:9092").is_none());
        assert!(Front::find(&fronts, "kafka://127.0.0.1:19092,127.0.0.1:9092").is_none());
    }

    #[test]
    fn a_malformed_front_is_refused_saying_what_is_wrong() {
        let e = Front::parse("127.0.0.1:19092").unwrap_err();
        assert!(e.contains("LISTEN=UPSTREAM"), "{e}");
        let e = Front::parse("localhost:1=127.0.0.1:2").unwrap_err();
        assert!(e.contains("LISTEN `localhost:1`"), "{e}");
        let e = Front::parse("127.0.0.1:1=nohost").unwrap_err();
        assert!(e.contains("UPSTREAM `nohost`"), "{e}");
        let e = Front::parse("127.0.0.1:1=:2").unwrap_err();
        assert!(e.contains("not host:port"), "{e}");
    }
}
