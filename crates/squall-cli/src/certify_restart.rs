//! `squall certify --stop ADDR=CMD --start ADDR=CMD`: the broker restart of a certificate.
//!
//! certify cannot restart a broker it does not own, so the commands come from the user, one
//! pair per broker, tied to the backends by address: ADDR is the `host:port` of the `--backend`
//! URLs the commands restart, as written there (two URLs naming one server, core NATS and
//! JetStream, both get the restart). After the start command certify waits until the broker
//! answers on ADDR again (on the `--front` UPSTREAM for a fronted URL: the proxy at ADDR answers
//! whether the broker is up or not), then measures the same workload as the link cut
//! ([`crate::certify_faults`]) across the restart.
//!
//! Checked before anything runs: every `--stop` has its `--start` and the reverse, no ADDR is
//! given twice, and every ADDR names a backend, so a typo fails at once instead of leaving a
//! certificate without its restart row.

use std::time::Duration;

use squall_chaos::process::{ExternalBroker, Ready};
use squall_chaos::runner::target::{host_port, is_host_port};

use crate::certify_faults::Front;

/// One `ADDR=CMD` of `--stop` or `--start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrCommand {
    addr: String,
    command: String,
}

impl AddrCommand {
    /// Parses `ADDR=CMD`: ADDR a `host:port`, CMD a non-empty shell command (it may contain
    /// `=`; the first one ends ADDR).
    pub fn parse(s: &str) -> Result<AddrCommand, String> {
        let (addr, command) = s.split_once('=').ok_or_else(|| {
            format!("`{s}` is not ADDR=CMD (e.g. '127.0.0.1:4222=systemctl stop nats-server')")
        })?;
        if !is_host_port(addr) {
            return Err(format!(
                "ADDR `{addr}` is not host:port (the address of a --backend URL)"
            ));
        }
        if command.trim().is_empty() {
            return Err(format!("`{s}` has no command after `=`"));
        }
        Ok(AddrCommand {
            addr: addr.to_string(),
            command: command.to_string(),
        })
    }
}

/// The brokers certify may restart, by the address their URLs name.
#[derive(Debug, Clone, Default)]
pub struct Restarts {
    brokers: Vec<(String, ExternalBroker)>,
}

impl Restarts {
    /// Pairs each `--stop` with the `--start` of the same ADDR, each ADDR with the backends
    /// whose URLs name it; a broker behind a `--front` is ready when its UPSTREAM answers.
    /// `timeout` bounds each command and the ready check.
    pub fn plan(
        stops: &[AddrCommand],
        starts: &[AddrCommand],
        backends: &[String],
        fronts: &[Front],
        timeout: Duration,
    ) -> Result<Restarts, String> {
        for (flag, list) in [("--stop", stops), ("--start", starts)] {
            for (i, c) in list.iter().enumerate() {
                if list[..i].iter().any(|o| o.addr == c.addr) {
                    return Err(format!("{flag} names {} twice", c.addr));
                }
            }
        }
        let mut brokers = Vec::new();
        for stop in stops {
            let start = starts.iter().find(|s| s.addr == stop.addr).ok_or_else(|| {
                format!(
                    "--stop {0}=… has no --start {0}=… (a restart needs both)",
                    stop.addr
                )
            })?;
            let named = backends
                .iter()
                .find(|u| host_port(u).as_deref() == Some(stop.addr.as_str()))
                .ok_or_else(|| {
                    format!(
                        "--stop/--start {}: no --backend URL has this host:port",
                        stop.addr
                    )
                })?;
            let ready = match Front::find(fronts, named) {
                Some(f) => f.upstream().to_string(),
                None => stop.addr.clone(),
            };
            let broker = ExternalBroker::new(&start.command, &stop.command)
                .ready(Ready::Tcp(ready))
                .timeout(timeout);
            brokers.push((stop.addr.clone(), broker));
        }
        if let Some(orphan) = starts
            .iter()
            .find(|s| !stops.iter().any(|t| t.addr == s.addr))
        {
            return Err(format!(
                "--start {0}=… has no --stop {0}=… (a restart needs both)",
                orphan.addr
            ));
        }
        Ok(Restarts { brokers })
    }

    /// The broker to restart for `url`, if its commands were given.
    pub fn for_url(&self, url: &str) -> Option<&ExternalBroker> {
        let addr = host_port(url)?;
        self.brokers
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> AddrCommand {
        AddrCommand::parse(s).unwrap()
    }

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn a_command_may_hold_equals_signs_and_needs_an_address() {
        let c = cmd("127.0.0.1:4222=FOO=1 sh -c 'kill $(cat p)'");
        assert_eq!(c.addr, "127.0.0.1:4222");
        assert_eq!(c.command, "FOO=1 sh -c 'kill $(cat p)'");
        let e = AddrCommand::parse("systemctl stop nats-server").unwrap_err();
        assert!(e.contains("ADDR=CMD"), "{e}");
        let e = AddrCommand::parse("nats=systemctl stop nats-server").unwrap_err();
        assert!(e.contains("ADDR `nats` is not host:port"), "{e}");
        let e = AddrCommand::parse("127.0.0.1:4222= ").unwrap_err();
        assert!(e.contains("no command"), "{e}");
    }

    #[test]
    fn each_backend_gets_the_restart_of_its_address_and_waits_for_it() {
        let backends = [
            "nats://127.0.0.1:4222".to_string(),
            "nats://127.0.0.1:4222?jetstream=1".into(),
            "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            "kafka://127.0.0.1:19092?storage=memory".into(),
        ];
        let fronts = [Front::parse("127.0.0.1:19092=127.0.0.1:19093").unwrap()];
        let r = Restarts::plan(
            &[
                cmd("127.0.0.1:4222=stop nats"),
                cmd("127.0.0.1:19092=stop k"),
            ],
            &[
                cmd("127.0.0.1:19092=start k"),
                cmd("127.0.0.1:4222=start nats"),
            ],
            &backends,
            &fronts,
            T,
        )
        .unwrap();
        for url in &backends[..2] {
            let b = r
                .for_url(url)
                .expect("core NATS and JetStream share the server");
            assert_eq!(
                (b.stop.as_str(), b.start.as_str()),
                ("stop nats", "start nats")
            );
            assert_eq!(b.ready, Ready::Tcp("127.0.0.1:4222".into()));
        }
        assert!(
            r.for_url(&backends[2]).is_none(),
            "no commands for RabbitMQ"
        );
        let k = r.for_url(&backends[3]).unwrap();
        assert_eq!(
            k.ready,
            Ready::Tcp("127.0.0.1:19093".into()),
            "a fronted broker is ready when its upstream answers, not the proxy"
        );
    }

    #[test]
    fn an_unpaired_duplicate_or_unknown_address_is_refused_naming_the_flag() {
        let backends = ["nats://127.0.0.1:4222".to_string()];
        let plan = |stops: &[&str], starts: &[&str]| {
            let s: Vec<_> = stops.iter().map(|s| cmd(s)).collect();
            let t: Vec<_> = starts.iter().map(|s| cmd(s)).collect();
            Restarts::plan(&s, &t, &backends, &[], T).unwrap_err()
        };
        let e = plan(&["127.0.0.1:4222=a"], &[]);
        assert!(e.contains("--stop 127.0.0.1:4222=… has no --start"), "{e}");
        let e = plan(&[], &["127.0.0.1:4222=a"]);
        assert!(e.contains("--start 127.0.0.1:4222=… has no --stop"), "{e}");
        let e = plan(&["localhost:4222=a"], &["localhost:4222=b"]);
        assert!(e.contains("no --backend URL has this host:port"), "{e}");
        let e = plan(
            &["127.0.0.1:4222=a", "127.0.0.1:4222=b"],
            &["127.0.0.1:4222=c"],
        );
        assert!(e.contains("--stop names 127.0.0.1:4222 twice"), "{e}");
    }
}
