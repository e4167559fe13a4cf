//! # squall-chaos
//!
//! The chaos lab: proves squall's delivery guarantees by breaking things on purpose and counting
//! what went wrong. It is a test tool and an opt-in production middleware, never part of a normal
//! message path.
//!
//! | module | what it holds |
//! |---|---|
//! | [`rng`] | the run's [`rng::Seed`] (logged once, replayable) and per-name deterministic streams |
//! | [`rules`] | message-level faults: [`rules::Point`], [`rules::Fault`], [`rules::Verdict`], [`rules::Rule`] |
//! | [`faults`] | [`faults::Faults`]: installed rules, [`faults::RuleGuard`], the injection log, metrics |
//! | [`chaos_backend`] | [`chaos_backend::ChaosBackend`]: any backend with the rules applied; restart (by call or by a `restart` rule) through a reopen function |
//! | [`proxy`] | a TCP fault proxy (latency, bandwidth, blackhole, reset, slicing, down/up) and its HTTP API |
//! | [`process`] | kill -9, SIGSTOP/SIGCONT, restart and stop of processes; external brokers' commands |
//! | [`control`] | HTTP control of chaos in a running service (`/admin/chaos/...`) |
//! | [`probe`] | TCP and HTTP readiness probes |
//! | [`scenario`] | game days as TOML: target, workload, fault proxies, phases (process actions, message rules, proxy faults), criteria |
//! | [`workload`] | open-loop producers, acking (and poison-rejecting) consumers, the dead-letter observer |
//! | [`checker`] | counts lost, duplicated, reordered, corrupted messages, lease anomalies, dead-letter misses, per-phase deliveries, recovery per fault window |
//! | [`runner`] | runs a scenario end to end against a [`runner::Target`]: a `squall serve` it starts, a squall server at a URL, or any broker through a caller's connector ([`runner::target::ExternalTarget`], with start/stop commands for process faults) |
//! | [`report`] | verdict, JSON and HTML timeline, starting with the seed that replays the run |
//!
//! This crate depends on no broker adapter: other brokers come in through a
//! [`runner::target::Connector`] (a URL → backend function) the caller supplies; the `squall`
//! CLI passes its own, so `squall chaos run SCENARIO --backend nats://…` runs any scenario
//! against NATS, RabbitMQ, Kafka or a squall server.
//!
//! One seed drives all randomness: every rule, proxy and shuffle draws from its own stream derived
//! from it, so the same seed and the same sequence of decisions give the same faults.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use squall_chaos::chaos_backend::ChaosBackend;
//! use squall_chaos::faults::Faults;
//! use squall_chaos::rng::Seed;
//! use squall_chaos::rules::{Fault, Point, Rule};
//! use squall_core::{Backend, Message, Publisher, Subscriber, Subscription};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let faults = Faults::new(Seed::new(42));
//! let broker: Arc<dyn Backend> = Arc::new(squall_broker::Broker::in_memory()?);
//! let chaos = ChaosBackend::new(broker, faults.clone());
//! let mut consumer = chaos
//!     .subscribe(Subscription::new("orders.>")?.group("billing")?.ack_wait(Duration::from_secs(5)))
//!     .await?;
//! // Lose the first ack: the message must come back after its lease expires.
//! let _lost_ack = faults.add(Rule::new("lose-ack", Point::Ack, Fault::Drop).limit(1))?;
//! chaos.publish(Message::builder("orders.1")?.payload("pay me").build()).await?;
//! let first = consumer.next().await.expect("open")?;
//! first.ack().await?; // swallowed by the fault
//! let again = consumer.next().await.expect("open")?;
//! assert_eq!(again.attempt(), 2);
//! again.ack().await?;
//! assert_eq!(faults.events()[0].fault, "drop");
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

pub mod chaos_backend;
pub mod checker;
pub mod control;
pub mod faults;
mod html;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod rules;
pub mod runner;
pub mod scenario;
pub mod workload;
