//! The timeline's faults: the fault proxies of a run, and what each phase installs at its start
//! and removes at its end.

use squall_core::Timestamp;

use super::RunError;
use crate::checker::Event;
use crate::faults::{Faults, RuleGuard};
use crate::proxy::{Proxy, ProxyHandle, api::loopback};
use crate::rng::Seed;
use crate::rules::Rule;
use crate::scenario::{Phase, ProxyAction, ProxyConfig, Side};

/// The fault proxies of a run: one per side whose clients connect through a proxy, named after
/// the side.
#[derive(Default)]
pub(crate) struct Proxies {
    producers: Option<ProxyHandle>,
    consumers: Option<ProxyHandle>,
}

impl Proxies {
    /// Starts the proxies `config` asks for, in front of `upstream` (`host:port`), on free
    /// loopback ports.
    pub(crate) async fn start(
        config: Option<ProxyConfig>,
        upstream: Option<&str>,
        seed: Seed,
    ) -> Result<Proxies, RunError> {
        let Some(config) = config else {
            return Ok(Proxies::default());
        };
        let upstream = upstream.ok_or_else(|| {
            RunError::Unsupported(
                "the scenario puts clients behind a fault proxy, but the target has no TCP address to forward to".into(),
            )
        })?;
        let start = |name: &str| {
            Proxy::new(loopback(0), upstream)
                .name(name)
                .seed(seed)
                .spawn()
        };
        let mut p = Proxies::default();
        if config.producers {
            p.producers = Some(start("producers").await.map_err(proxy_err)?);
        }
        if config.consumers {
            p.consumers = Some(start("consumers").await.map_err(proxy_err)?);
        }
        Ok(p)
    }

    /// The address `side`'s clients dial instead of the target's, if they use a proxy.
    pub(crate) fn via(&self, side: Side) -> Option<String> {
        let p = match side {
            Side::Producers => &self.producers,
            Side::Consumers => &self.consumers,
            Side::Both => return None,
        };
        p.as_ref().map(|p| p.listen_addr().to_string())
    }

    /// The proxies a step on `side` acts on.
    fn on(&self, side: Side) -> Vec<ProxyHandle> {
        [
            (Side::Producers, &self.producers),
            (Side::Consumers, &self.consumers),
        ]
        .into_iter()
        .filter(|(s, _)| side.includes(*s))
        .filter_map(|(_, p)| p.clone())
        .collect()
    }

    /// Removes every fault and brings every proxy up.
    pub(crate) async fn heal(&self) -> Result<(), RunError> {
        for p in self.on(Side::Both) {
            p.clear_faults();
            p.up().await.map_err(proxy_err)?;
        }
        Ok(())
    }

    /// Stops the proxies (closing their connections).
    pub(crate) async fn stop(&self) {
        for p in self.on(Side::Both) {
            p.stop().await;
        }
    }
}

fn proxy_err(e: crate::proxy::ProxyError) -> RunError {
    RunError::Proxy(e.to_string())
}

/// What one phase installed; [`Active::end`] removes it.
pub(crate) struct Active {
    guards: Vec<RuleGuard>,
    proxy_faults: Vec<(ProxyHandle, String)>,
    downs: Vec<ProxyHandle>,
    /// The phase's fault window: its name and start.
    window: Option<(String, Timestamp)>,
}

/// A rule's label in fault windows: `drop@publish 20% [producers]`.
fn rule_label(r: &Rule) -> String {
    let mut s = format!("{}@{}", r.fault.name(), r.point);
    if r.probability < 1.0 {
        s.push_str(&format!(" {:.0}%", r.probability * 100.0));
    }
    if !r.groups.is_empty() {
        s.push_str(&format!(" [{}]", r.groups.join(",")));
    }
    s
}

/// Installs `phase`'s rules in `faults` and its proxy faults on `proxies`.
pub(crate) async fn begin(
    phase: &Phase,
    faults: &Faults,
    proxies: &Proxies,
) -> Result<Active, RunError> {
    let mut active = Active {
        guards: Vec::new(),
        proxy_faults: Vec::new(),
        downs: Vec::new(),
        window: None,
    };
    if !phase.has_faults() {
        return Ok(active);
    }
    let at = Timestamp::now();
    let mut labels = Vec::new();
    for r in &phase.rules {
        let guard = faults
            .add(r.clone())
            .map_err(|e| RunError::Scenario(format!("phase `{}`: {e}", phase.name)))?;
        active.guards.push(guard);
        labels.push(rule_label(r));
    }
    for (i, step) in phase.proxy.iter().enumerate() {
        let targets = proxies.on(step.side);
        if targets.is_empty() {
            return Err(RunError::Scenario(format!(
                "phase `{}`: no proxy on {}",
                phase.name,
                step.side.as_str()
            )));
        }
        for p in targets {
            match &step.fault {
                ProxyAction::Down => {
                    p.down().await;
                    active.downs.push(p);
                }
                ProxyAction::Fault(_) => {
                    let name = format!("{}-{i}", phase.name);
                    if let Some(f) = step.proxy_fault(&name) {
                        p.add_fault(f).map_err(proxy_err)?;
                        active.proxy_faults.push((p, name));
                    }
                }
            }
        }
        labels.push(format!("proxy {}", step.label()));
    }
    active.window = Some((format!("{}: {}", phase.name, labels.join(", ")), at));
    Ok(active)
}

impl Active {
    /// Removes what the phase installed and records its fault window.
    pub(crate) async fn end(self, timeline: &mut Vec<Event>) -> Result<(), RunError> {
        drop(self.guards);
        for (p, name) in &self.proxy_faults {
            p.remove_fault(name);
        }
        for p in &self.downs {
            p.up().await.map_err(proxy_err)?;
        }
        if let Some((name, start)) = self.window {
            timeline.push(Event::Fault {
                name,
                start,
                end: Some(Timestamp::now()),
            });
        }
        Ok(())
    }
}
