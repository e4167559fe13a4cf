//! What to run: [`Target`]s, [`Workload`]s, the durability each row asks for, and the [`Case`]s
//! (one per report row) a workload expands to.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::error::BenchError;

/// A system under test, driven through its own client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// squall's broker in the benchmark's own process (squall-broker).
    SquallEmbedded,
    /// `squall serve` as a child process over loopback, through squall-client.
    SquallServe,
    /// Core NATS (no persistence, no acks) through async-nats.
    NatsCore,
    /// NATS JetStream file storage through async-nats.
    NatsJs,
    /// RabbitMQ classic durable queue, persistent messages, publisher confirms, through lapin.
    RabbitmqClassic,
    /// RabbitMQ quorum queue, publisher confirms, through lapin.
    RabbitmqQuorum,
}

impl Target {
    /// Every target, in report order.
    pub const ALL: [Target; 6] = [
        Target::SquallEmbedded,
        Target::SquallServe,
        Target::NatsCore,
        Target::NatsJs,
        Target::RabbitmqClassic,
        Target::RabbitmqQuorum,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::SquallEmbedded => "squall-embedded",
            Target::SquallServe => "squall-serve",
            Target::NatsCore => "nats-core",
            Target::NatsJs => "nats-js",
            Target::RabbitmqClassic => "rabbitmq-classic",
            Target::RabbitmqQuorum => "rabbitmq-quorum",
        }
    }

    /// Whether this is squall (the numerator of the ratios).
    pub fn is_squall(self) -> bool {
        matches!(self, Target::SquallEmbedded | Target::SquallServe)
    }

    /// Parses a comma-separated list; `squall`, `nats`, `rabbitmq` and `all` name groups.
    pub fn parse_list(s: &str) -> Result<Vec<Target>, BenchError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let group: &[Target] = match part {
                "all" => &Target::ALL,
                "squall" => &[Target::SquallEmbedded, Target::SquallServe],
                "nats" => &[Target::NatsCore, Target::NatsJs],
                "rabbitmq" => &[Target::RabbitmqClassic, Target::RabbitmqQuorum],
                _ => match Target::ALL.iter().find(|t| t.name() == part) {
                    Some(t) => std::slice::from_ref(t),
                    None => {
                        return Err(BenchError::Options {
                            option: "--targets",
                            detail: format!(
                                "unknown target `{part}` (known: {}, or the groups squall, nats, \
                                 rabbitmq, all)",
                                Target::ALL.map(Target::name).join(", ")
                            ),
                        });
                    }
                },
            };
            for t in group {
                if !out.contains(t) {
                    out.push(*t);
                }
            }
        }
        if out.is_empty() {
            return Err(BenchError::Options {
                option: "--targets",
                detail: "no target named".into(),
            });
        }
        out.sort();
        Ok(out)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The durability a workload asks for; each target maps it to its own closest configuration
/// and the row carries the [`Label`] of what that configuration really does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Nothing written to disk.
    None,
    /// Written to the operating system before the ack; fsynced later.
    PageCache,
    /// On stable storage before the ack.
    Fsync,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::None => "none",
            Durability::PageCache => "page-cache",
            Durability::Fsync => "fsync",
        })
    }
}

/// What a row's configuration guarantees when the publisher sees its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Label {
    /// Memory only: lost when the broker process dies.
    None,
    /// In the page cache: survives the broker process dying, not a power loss.
    PageCache,
    /// fsynced before the ack, one fsync covering many messages (group commit).
    FsyncBatched,
    /// fsynced before the ack, one fsync per message.
    FsyncPerMessage,
}

impl Label {
    /// The text used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::None => "none",
            Label::PageCache => "page-cache",
            Label::FsyncBatched => "fsync-batched",
            Label::FsyncPerMessage => "fsync-per-message",
        }
    }
}

/// The ten workloads of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Workload {
    /// Durable queue, 1 producer / 1 consumer with acks, max rate.
    W1,
    /// W1 at fixed offered rates.
    W2,
    /// Synchronous publish: a window of one.
    W3,
    /// Competing consumers: 1 producer, 4 consumers in one group.
    W4,
    /// Non-durable fan-out to 1, 4 and 16 subscribers.
    W5,
    /// Durable stream with 4 groups tailing it.
    W6,
    /// A backlog, a broker restart, then the drain.
    W7,
    /// Small messages: 16 B and 128 B.
    W8,
    /// Redelivery after a visibility timeout (lease expiry).
    W9,
    /// In-process: the embedded broker only.
    W10,
}

impl Workload {
    /// All, in order.
    pub const ALL: [Workload; 10] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4,
        Workload::W5,
        Workload::W6,
        Workload::W7,
        Workload::W8,
        Workload::W9,
        Workload::W10,
    ];

    /// One line on what it measures.
    pub fn title(self) -> &'static str {
        match self {
            Workload::W1 => "durable queue, 1 producer / 1 consumer with acks, max rate",
            Workload::W2 => "durable queue at a fixed offered rate (open loop)",
            Workload::W3 => "synchronous publish (window 1)",
            Workload::W4 => "competing consumers: 1 producer, 4 consumers in one group",
            Workload::W5 => "non-durable fan-out",
            Workload::W6 => "durable stream, 4 groups tailing",
            Workload::W7 => "backlog, broker restart, drain",
            Workload::W8 => "small messages, durable queue",
            Workload::W9 => "redelivery after the visibility timeout (lease expiry)",
            Workload::W10 => "in-process (embedded broker only)",
        }
    }

    /// Parses `W1,W3` (case-insensitive; `all` for every workload).
    pub fn parse_list(s: &str) -> Result<Vec<Workload>, BenchError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.eq_ignore_ascii_case("all") {
                out = Workload::ALL.to_vec();
                continue;
            }
            let w = Workload::from_str(part)?;
            if !out.contains(&w) {
                out.push(w);
            }
        }
        if out.is_empty() {
            return Err(BenchError::Options {
                option: "--workloads",
                detail: "no workload named".into(),
            });
        }
        out.sort();
        Ok(out)
    }
}

impl FromStr for Workload {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self, BenchError> {
        Workload::ALL
            .into_iter()
            .find(|w| format!("{w:?}").eq_ignore_ascii_case(s))
            .ok_or_else(|| BenchError::Options {
                option: "--workloads",
                detail: format!("unknown workload `{s}` (known: W1 to W10, or all)"),
            })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// How producers and consumers are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Shape {
    /// One durable queue; `consumers` compete for its messages.
    Queue {
        /// Competing consumers.
        consumers: usize,
    },
    /// Every subscriber gets every message; nothing is kept.
    Fanout {
        /// Subscribers.
        subscribers: usize,
    },
    /// One durable stream; each of `groups` groups (one consumer each) reads every message.
    Groups {
        /// Groups.
        groups: usize,
    },
}

impl Shape {
    /// Receivers to start.
    pub fn receivers(self) -> usize {
        match self {
            Shape::Queue { consumers } => consumers,
            Shape::Fanout { subscribers } => subscribers,
            Shape::Groups { groups } => groups,
        }
    }

    /// Deliveries expected for `n` published messages, over all receivers.
    pub fn deliveries(self, n: u64) -> u64 {
        match self {
            Shape::Queue { .. } => n,
            Shape::Fanout { subscribers: k } | Shape::Groups { groups: k } => n * k as u64,
        }
    }
}

/// What the measured phase does beyond publish-and-consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Mode {
    /// Publish and consume at the same time.
    Stream,
    /// Publish `count` messages with no consumer, restart the broker, then drain.
    Backlog {
        /// Messages in the backlog.
        count: u64,
    },
    /// Publish `count` messages; the consumer leaves each first delivery unacked, so it comes
    /// back after `ack_wait`, and acks the second.
    Redeliver {
        /// Messages.
        count: u64,
        /// The lease (visibility timeout).
        #[serde(with = "secs")]
        ack_wait: Duration,
    },
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// One row of the report, before the target is chosen.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// The workload.
    pub workload: Workload,
    /// What distinguishes this row within the workload (`fsync`, `rate=5000`, `subs=4`...).
    pub variant: String,
    /// The durability asked for.
    pub durability: Durability,
    /// Payload bytes.
    pub size: usize,
    /// Wiring.
    pub shape: Shape,
    /// Most unconfirmed publishes per producer.
    pub window: usize,
    /// Offered rate (messages per second); `None`: as fast as the window allows.
    pub rate: Option<u64>,
    /// What the measured phase does.
    pub mode: Mode,
}

/// Smallest payload: the send time and sequence number it carries.
pub const MIN_SIZE: usize = 16;

/// The cases of `w` under `opts`.
pub fn cases(w: Workload, opts: &crate::Options) -> Vec<Case> {
    let base = |variant: &str, durability: Durability| Case {
        workload: w,
        variant: variant.to_string(),
        durability,
        size: 1024,
        shape: Shape::Queue { consumers: 1 },
        window: opts.window,
        rate: None,
        mode: Mode::Stream,
    };
    match w {
        Workload::W1 => vec![
            base("fsync", Durability::Fsync),
            base("page-cache", Durability::PageCache),
        ],
        Workload::W2 => opts
            .rates
            .iter()
            .map(|&r| Case {
                rate: Some(r),
                ..base(&format!("rate={r}"), Durability::Fsync)
            })
            .collect(),
        Workload::W3 => vec![Case {
            window: 1,
            ..base("window=1", Durability::Fsync)
        }],
        Workload::W4 => vec![Case {
            shape: Shape::Queue { consumers: 4 },
            ..base("consumers=4", Durability::Fsync)
        }],
        Workload::W5 => [1, 4, 16]
            .into_iter()
            .map(|k| Case {
                shape: Shape::Fanout { subscribers: k },
                ..base(&format!("subs={k}"), Durability::None)
            })
            .collect(),
        Workload::W6 => vec![Case {
            shape: Shape::Groups { groups: 4 },
            ..base("groups=4", Durability::Fsync)
        }],
        Workload::W7 => vec![Case {
            mode: Mode::Backlog {
                count: opts.backlog,
            },
            ..base(&format!("backlog={}", opts.backlog), Durability::PageCache)
        }],
        Workload::W8 => [16, 128]
            .into_iter()
            .map(|size| Case {
                size,
                ..base(&format!("size={size}"), Durability::Fsync)
            })
            .collect(),
        Workload::W9 => vec![Case {
            mode: Mode::Redeliver {
                count: opts.redeliver,
                ack_wait: Duration::from_secs(1),
            },
            ..base("ack_wait=1s", Durability::Fsync)
        }],
        Workload::W10 => vec![
            Case {
                size: 128,
                window: opts.window.max(1024),
                ..base("128B page-cache", Durability::PageCache)
            },
            Case {
                window: opts.window.max(1024),
                ..base("1KiB fsync", Durability::Fsync)
            },
        ],
    }
}

/// Why `target` cannot run `case` whatever the environment, if it cannot.
pub fn not_applicable(target: Target, case: &Case) -> Option<String> {
    use Durability as D;
    let w = case.workload;
    if w == Workload::W10 && target != Target::SquallEmbedded {
        return Some(match target {
            Target::SquallServe => "W10 is in-process; squall over loopback is W1".into(),
            _ => format!("{target} has no in-process mode"),
        });
    }
    match (target, case.durability) {
        (Target::NatsCore, D::Fsync | D::PageCache) => {
            return Some("core NATS keeps nothing and has no acks: no durable queue".into());
        }
        (Target::NatsJs, D::None) => {
            return Some("non-durable fan-out is core NATS's job: see the nats-core row".into());
        }
        (Target::RabbitmqClassic | Target::RabbitmqQuorum, D::PageCache) => {
            return Some(
                "RabbitMQ has no page-cache mode: with confirms, persistent messages are acked \
                 after fsync (see the fsync rows)"
                    .into(),
            );
        }
        (Target::RabbitmqQuorum, D::None) => {
            return Some("quorum queues are always durable; see rabbitmq-classic".into());
        }
        _ => {}
    }
    if let Mode::Redeliver { .. } = case.mode
        && matches!(target, Target::RabbitmqClassic | Target::RabbitmqQuorum)
    {
        return Some(
            "RabbitMQ has no visibility timeout: an unacked delivery stays with its consumer \
             until the channel closes"
                .into(),
        );
    }
    None
}
