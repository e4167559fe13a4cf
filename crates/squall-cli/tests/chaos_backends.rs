//! The chaos lab against real brokers, through `squall chaos run --backend URL`:
//! - broker kill: a private JetStream `nats-server` this test starts on a free port with its own
//!   store is killed with SIGKILL and started again on the same store; nothing confirmed may be
//!   lost. The same kill with core NATS (at-most-once): whatever is lost must be reported and
//!   fail the run's `lost` criterion.
//! - broker restart: the machine's RabbitMQ (`SQUALL_AMQP_URL`) has its application stopped and
//!   started (`rabbitmqctl stop_app` / `start_app`; a guard runs `start_app` whatever happens);
//!   nothing confirmed may be lost from its durable queues.
//! - the fault proxy: the producers' link to the machine's NATS (JetStream) and RabbitMQ is cut
//!   by the proxy standing in for the URL's host:port (`partition-producers`).
//!
//! Short (`--quick`) versions of the shipped scenarios, with a shorter drain. Tests skip with a
//! notice when their broker (or its tooling) is missing, and fail then under
//! `SQUALL_REQUIRE_PEERS=1`. They take turns (one static lock): a RabbitMQ restart would disturb
//! a run through the proxy, and all of them measure recovery times.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use squall_testkit::with_options;

/// One test at a time.
static BROKERS: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    BROKERS.lock().unwrap_or_else(|p| p.into_inner())
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

/// `false` with a printed notice (a failure under `SQUALL_REQUIRE_PEERS=1`).
fn skip(why: &str) -> bool {
    assert!(
        !squall_testkit::peers_required(),
        "{why}, and SQUALL_REQUIRE_PEERS=1"
    );
    println!("SKIP: {why}");
    false
}

/// The URL of a broker from `var`, or `None` with a printed notice (a failure under
/// `SQUALL_REQUIRE_PEERS=1`).
fn env_url(var: &str) -> Option<String> {
    squall_testkit::peer_url(var, "the chaos lab against this broker")
}

fn tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A shipped scenario with its drain set to `drain` (what runs after the timeline: a run that
/// loses messages waits for them that long).
fn shipped(name: &str, drain: &str) -> String {
    let text = std::fs::read_to_string(workspace().join("scenarios").join(format!("{name}.toml")))
        .unwrap();
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("drain = "))
        .map(str::to_string)
        .collect();
    let at = out.iter().position(|l| l.starts_with("name = ")).unwrap();
    out.insert(at + 1, format!("drain = \"{drain}\""));
    out.join("\n")
}

/// Polls `addr` until it accepts TCP connections; false after `limit`.
fn wait_port(addr: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs `sh -c command`, killing it after `limit`; true on exit 0.
fn shell(command: &str, limit: Duration) -> bool {
    let Ok(mut child) = Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// What one `squall chaos run` gave.
struct Run {
    code: i32,
    stdout: String,
    report: serde_json::Value,
}

impl Run {
    fn findings(&self) -> &serde_json::Value {
        &self.report["findings"]
    }
    fn count(&self, key: &str) -> u64 {
        self.findings()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{key}` in {}", self.findings()))
    }
    fn verdict(&self, prefix: &str) -> &serde_json::Value {
        self.report["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no verdict `{prefix}` in {}", self.report["verdicts"]))
    }
    /// The recovery times the report gives, as printed.
    fn recoveries(&self) -> Vec<String> {
        self.findings()["recoveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let rec = match (&r["note"], &r["recovery"]) {
                    (serde_json::Value::String(n), _) => n.clone(),
                    (_, serde_json::Value::Null) => "never recovered".into(),
                    (_, d) => format!(
                        "recovered in {:.1} s",
                        d["secs"].as_f64().unwrap_or(0.0)
                            + d["nanos"].as_f64().unwrap_or(0.0) / 1e9
                    ),
                };
                format!("{}: {rec}", r["fault"].as_str().unwrap_or("?"))
            })
            .collect()
    }
    /// One line of figures for the test's output.
    fn figures(&self) -> String {
        format!(
            "sent {} confirmed {} failed {} unaccounted {} lost {} duplicates {} reorders {}; recovery: {}",
            self.count("sent"),
            self.count("confirmed"),
            self.count("failed"),
            self.count("unaccounted"),
            self.count("lost"),
            self.count("duplicates"),
            self.count("reorders"),
            self.recoveries().join("; ")
        )
    }
}

/// `squall chaos run --quick --quiet <scenario text> <args>`, bounded by `limit`.
fn run(scenario: &str, args: &[&str], limit: Duration) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenario.toml");
    std::fs::write(&path, scenario).unwrap();
    let (json, html) = (dir.path().join("r.json"), dir.path().join("r.html"));
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["chaos", "run", "--quick", "--quiet", "--seed", "5"])
        .arg(&path)
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .env("SQUALL_LOG", "error")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("running squall chaos run");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "squall chaos run took over {limit:?}: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    println!("{stdout}({:.1} s)", started.elapsed().as_secs_f64());
    let report = match std::fs::read_to_string(&json) {
        Ok(text) => serde_json::from_str(&text).unwrap(),
        Err(_) => panic!("no report ({status}):\n{stdout}\n{stderr}"),
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        report,
    }
}

/// A `nats-server` with JetStream that this test starts on a free port with its own store
/// (through the shell commands it gives `--start` and `--stop`), killed when dropped.
fn private_nats() -> Option<support::ShellDaemon> {
    let bin = std::env::var("SQUALL_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    if !shell(&format!("command -v {bin}"), Duration::from_secs(5)) {
        skip(&format!("no `{bin}` on PATH (set SQUALL_NATS_SERVER)"));
        return None;
    }
    let nats = support::ShellDaemon::new(|dir, port| {
        format!(
            "{bin} -a 127.0.0.1 -p {port} -js -sd {}/store",
            dir.display()
        )
    });
    nats.start();
    Some(nats)
}

#[test]
fn a_jetstream_server_killed_and_restarted_loses_nothing_confirmed_and_core_nats_reports_its_loss()
{
    let _turn = turn();
    let Some(nats) = private_nats() else {
        return;
    };
    let (start, stop) = (nats.start_command(), nats.stop_command());
    let before = nats.pid().expect("a PID file");
    let url = format!("nats://127.0.0.1:{}?jetstream=1", nats.port);
    let scenario = shipped("broker-kill", "15s");
    let js = run(
        &scenario,
        &["--backend", &url, "--start", &start, "--stop", &stop],
        Duration::from_secs(60),
    );
    println!("JetStream broker kill: {}", js.figures());
    assert_ne!(
        nats.pid().expect("running again"),
        before,
        "the server was killed and started again"
    );
    assert!(
        js.stdout
            .contains(&format!("against {url} (external broker")),
        "the report names the backend: {}",
        js.stdout
    );
    assert_eq!(js.count("lost"), 0, "JetStream lost confirmed messages");
    assert_eq!(js.verdict("lost")["pass"], true);
    assert!(js.count("confirmed") > 0);
    // JetStream has no per-key ordering within a group: the run says so, and its per-key order
    // criterion is judged on what arrived.
    assert!(
        js.stdout
            .contains("note: nats-jetstream has no per-key ordering")
    );
    assert!(
        !js.findings()["recoveries"].as_array().unwrap().is_empty(),
        "a recovery entry for the kill"
    );

    // Core NATS is at-most-once: what is in flight, or published while the consumers are
    // reconnecting, is gone. Whatever it lost must be reported and fail `lost`.
    let core_url = format!("nats://127.0.0.1:{}", nats.port);
    let core = run(
        &shipped("broker-kill", "5s"),
        &["--backend", &core_url, "--start", &start, "--stop", &stop],
        Duration::from_secs(60),
    );
    let lost = core.count("lost");
    println!("core NATS broker kill: {}", core.figures());
    assert_eq!(
        core.verdict("lost")["pass"],
        lost == 0,
        "the lost criterion follows the loss"
    );
    assert_eq!(core.verdict("lost")["observed"], lost.to_string());
    if lost > 0 {
        assert_eq!(core.code, 1, "a run that lost messages exits 1");
    }
    assert!(
        core.stdout.contains("note: nats has no durable groups"),
        "{}",
        core.stdout
    );
}

#[test]
fn process_faults_without_start_and_stop_commands_are_refused_by_flag_name() {
    let _turn = turn();
    let out = Command::new(env!("CARGO_BIN_EXE_squall"))
        .args(["chaos", "run", "--quick", "--quiet", "--backend"])
        .arg("nats://127.0.0.1:1?jetstream=1")
        .arg(workspace().join("scenarios/broker-kill.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--start") && err.contains("--stop") && err.contains("kill9"),
        "the error names the missing flags and the faults needing them: {err}"
    );
}

/// The `rabbitmqctl` that answers for the machine's RabbitMQ, or a skip.
fn rabbitmqctl() -> Option<String> {
    let found = find_rabbitmqctl();
    if found.is_none() {
        skip("no rabbitmqctl reaches the machine's RabbitMQ (set SQUALL_RABBITMQCTL)");
    }
    found
}

/// The `rabbitmqctl` that answers for the machine's RabbitMQ: `SQUALL_RABBITMQCTL`, or the
/// first of the usual places (the /usr/sbin wrapper switches to the broker's user and cookie).
fn find_rabbitmqctl() -> Option<String> {
    let candidates = match std::env::var("SQUALL_RABBITMQCTL") {
        Ok(c) if !c.is_empty() => vec![c],
        _ => [
            "/usr/sbin/rabbitmqctl",
            "rabbitmqctl",
            "/usr/lib/rabbitmq/bin/rabbitmqctl",
        ]
        .iter()
        .flat_map(|c| [c.to_string(), format!("{c} -n squall@localhost")])
        .collect(),
    };
    candidates
        .into_iter()
        .find(|c| shell(&format!("{c} -q status"), Duration::from_secs(60)))
}

/// Runs `start_app` when dropped, whatever happened: the shared broker must come back.
struct StartAppAfterwards(String);

impl Drop for StartAppAfterwards {
    fn drop(&mut self) {
        let ok = shell(
            &format!("{} -q start_app", self.0),
            Duration::from_secs(120),
        );
        println!(
            "rabbitmqctl start_app after the test: {}",
            if ok { "ok" } else { "FAILED" }
        );
    }
}

/// Deletes the queues of `exchange` and the exchange itself (best effort: failures are printed).
fn delete_exchange(ctl: &str, exchange: &str) {
    let list = Command::new("sh")
        .args(["-c", &format!("{ctl} -q list_queues name")])
        .output();
    let names = list
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    for q in names
        .lines()
        .filter(|q| q.starts_with(&format!("{exchange}.")))
    {
        if !shell(
            &format!("{ctl} -q delete_queue '{q}'"),
            Duration::from_secs(30),
        ) {
            println!("could not delete queue {q}");
        }
    }
    let eval = format!(
        "{ctl} -q eval 'rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"{exchange}\">>), false, <<\"squall-test\">>).'"
    );
    if !shell(&eval, Duration::from_secs(30)) {
        println!("could not delete exchange {exchange}");
    }
}

#[test]
fn rabbitmq_restarted_under_load_loses_nothing_confirmed_from_durable_queues() {
    let _turn = turn();
    let Some(base) = env_url("SQUALL_AMQP_URL") else {
        return;
    };
    let Some(ctl) = rabbitmqctl() else {
        return;
    };
    let host = squall_chaos::runner::target::host_port(&base).expect("host:port in the URL");
    let exchange = format!("squall.t.chaos.{}", tag());
    let url = with_options(&base, &format!("exchange={exchange}"));
    let started = Instant::now();
    let result = {
        let _guard = StartAppAfterwards(ctl.clone());
        run(
            &shipped("broker-kill", "10s"),
            &[
                "--backend",
                &url,
                "--stop",
                &format!("{ctl} -q stop_app"),
                "--start",
                &format!("{ctl} -q start_app"),
            ],
            Duration::from_secs(90),
        )
    };
    assert!(
        wait_port(&host, Duration::from_secs(60)),
        "RabbitMQ is back on {host}"
    );
    delete_exchange(&ctl, &exchange);
    println!(
        "RabbitMQ stop_app/start_app: {} ({:.1} s)",
        result.figures(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        result.stdout.contains("against amqp://guest:***@"),
        "the report names the backend without its password: {}",
        result.stdout
    );
    assert!(result.count("confirmed") > 0);
    assert_eq!(result.count("lost"), 0, "RabbitMQ lost confirmed messages");
    assert_eq!(result.verdict("lost")["pass"], true);
    // Every publish got an answer (a confirm, or an error across the restart): none hung.
    assert_eq!(result.count("unaccounted"), 0, "{}", result.findings());
}

#[test]
fn the_fault_proxy_cuts_the_producers_off_nats_and_nothing_confirmed_is_lost() {
    let _turn = turn();
    let Some(base) = env_url("SQUALL_NATS_URL") else {
        return;
    };
    // Streams of their own, deleted afterwards; messages expire anyway.
    let prefix = format!("sqchaos{}", tag());
    let url = with_options(
        &base,
        &format!("jetstream=1&stream_prefix={prefix}&max_age=10m"),
    );
    let result = run(
        &shipped("partition-producers", "10s"),
        &["--backend", &url],
        Duration::from_secs(60),
    );
    delete_streams(&base, &prefix);
    println!(
        "NATS JetStream, producers cut by the proxy: {}",
        result.figures()
    );
    assert_eq!(result.count("lost"), 0, "{}", result.stdout);
    assert_eq!(
        result.count("failed"),
        0,
        "the producers' retries carried them"
    );
    assert_eq!(
        result.verdict("phase cut")["pass"],
        true,
        "consumers kept draining"
    );
    assert!(
        result.report["faults"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"].as_str().unwrap().contains("proxy producers down")),
        "the cut is on the timeline"
    );
}

/// Deletes the JetStream streams whose names start with `prefix`.
fn delete_streams(url: &str, prefix: &str) {
    let server = squall_chaos::runner::target::host_port(url).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures::StreamExt;
        let Ok(client) = async_nats::connect(server).await else {
            println!("could not connect to delete the test's streams");
            return;
        };
        let js = async_nats::jetstream::new(client);
        let names: Vec<String> = js
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await;
        for n in names.iter().filter(|n| n.starts_with(prefix)) {
            if let Err(e) = js.delete_stream(n).await {
                println!("could not delete stream {n}: {e}");
            }
        }
    });
}

#[test]
fn the_fault_proxy_cuts_the_producers_off_rabbitmq_and_nothing_confirmed_is_lost() {
    let _turn = turn();
    let Some(base) = env_url("SQUALL_AMQP_URL") else {
        return;
    };
    let exchange = format!("squall.t.chaos.{}", tag());
    let url = with_options(&base, &format!("exchange={exchange}"));
    let result = run(
        &shipped("partition-producers", "10s"),
        &["--backend", &url],
        Duration::from_secs(60),
    );
    match find_rabbitmqctl() {
        Some(ctl) => delete_exchange(&ctl, &exchange),
        None => println!("no rabbitmqctl: exchange {exchange} and its queues stay"),
    }
    println!("RabbitMQ, producers cut by the proxy: {}", result.figures());
    assert_eq!(result.count("lost"), 0, "{}", result.stdout);
    assert_eq!(
        result.verdict("phase cut")["pass"],
        true,
        "consumers kept draining"
    );
    // Every publish got an answer, a confirm or an error: none hung across the cut (a confirm
    // owed by the cut connection fails with `Unavailable`).
    assert_eq!(result.count("unaccounted"), 0, "{}", result.findings());
    assert_eq!(
        result.count("sent"),
        result.count("confirmed") + result.count("failed"),
        "{}",
        result.findings()
    );
}
