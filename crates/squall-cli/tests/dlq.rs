//! `squall dlq ls | show | redrive` end to end, against a real `squall serve` child process
//! (fsync log storage): poison messages dead-lettered by the consumer runtime after 3 attempts are
//! listed and shown with their envelope; a dry run changes nothing; redrive brings them back to
//! their origin subject (or `--to`), where a consumer receives them, and the dead-letter queue is
//! empty afterwards.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use squall_client::{Client, ClientConfig};
use squall_core::{Consumer, Message, Publisher, Subscriber, Subscription, headers};
use squall_middleware::retry::{Backoff, RetryPolicy};
use squall_middleware::{HandlerError, Incoming, Route, Router, handler_fn};
use support::Server;
use tokio_util::sync::CancellationToken;

/// Runs `squall ARGS --server URL` off the async workers.
async fn squall(server: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_squall"));
    cmd.args(args)
        .args(["--server", server])
        .env_remove("SQUALL_LOG")
        .env_remove("SQUALL_SERVER")
        .env_remove("SQUALL_TOKEN");
    tokio::task::spawn_blocking(move || cmd.output().expect("the squall binary runs"))
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn json_lines(out: &Output) -> Vec<Value> {
    text(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn exit(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

/// `(stream name, messages, last sequence)` of every stream, from the server's statistics.
async fn streams(client: &Client) -> BTreeMap<String, (u64, u64)> {
    let json = client.stats_json(Duration::from_secs(10)).await.unwrap();
    let v: Value = serde_json::from_str(&json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                (
                    s["messages"].as_u64().unwrap(),
                    s["last_sequence"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

async fn next(c: &mut Box<dyn Consumer>) -> squall_core::Delivery {
    tokio::time::timeout(Duration::from_secs(20), c.next())
        .await
        .expect("a delivery within 20 s")
        .expect("consumer open")
        .expect("delivery")
}

/// Dead-letters three poison messages through the consumer runtime (a handler that always fails,
/// 3 attempts), then returns once the runtime reported all three.
async fn dead_letter_three(client: &Client) {
    let failing = handler_fn(|_m: Incoming| async {
        Err::<(), _>(HandlerError::msg("disk full").context("saving thumbnail"))
    });
    let sub = Subscription::new("jobs.>")
        .unwrap()
        .group("workers")
        .unwrap();
    let route = Route::new("thumbnails", sub, failing)
        .handler_name("thumbnailer")
        .retry(RetryPolicy::new(Backoff::constant(Duration::from_millis(50))).max_attempts(3));
    let router = Router::new(Arc::new(client.clone())).route(route);
    let stats = router.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(router.run(shutdown.clone()));
    for (id, subject, payload) in [
        ("poison-1", "jobs.resize", "img-1"),
        ("poison-2", "jobs.crop", "img-2"),
        ("poison-3", "jobs.bad", "img-3"),
    ] {
        let m = Message::builder(subject)
            .unwrap()
            .id(id)
            .unwrap()
            .key(format!("key-{id}"))
            .unwrap()
            .header("tenant", "acme")
            .unwrap()
            .payload(payload)
            .build();
        client.publish(m).await.unwrap();
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        stats.wait_until(|r| r[0].dead_lettered == 3),
    )
    .await
    .expect("three dead letters within 30 s");
    shutdown.cancel();
    let report = running.await.unwrap().unwrap();
    let r = report.route("thumbnails").unwrap();
    assert_eq!(
        (r.dead_lettered, r.succeeded),
        (3, 0),
        "each poison message dead-lettered once: {r:?}"
    );
}

/// Guards the whole `squall dlq` workflow; see the file header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_listed_shown_and_redriven_back_to_their_origin() {
    let server = Server::start();
    let url = server.url.as_str();
    let client = Client::connect(ClientConfig::from_url(url).unwrap())
        .await
        .unwrap();
    dead_letter_three(&client).await;

    // ls: all three, with origin, group and attempts; a narrower pattern filters.
    let out = squall(url, &["dlq", "ls", "dlq.jobs.*", "--json"]).await;
    assert_eq!(exit(&out), 0, "{out:?}");
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 3, "{listed:?}");
    let by_origin: BTreeMap<&str, &Value> = listed
        .iter()
        .map(|e| (e["origin_id"].as_str().unwrap(), e))
        .collect();
    let first = by_origin["poison-1"];
    assert_eq!(first["origin_subject"], "jobs.resize");
    assert_eq!(first["subject"], "dlq.jobs.resize");
    assert_eq!(first["group"], "workers");
    assert_eq!(first["attempts"], 3);
    assert_eq!(first["last_error"], "saving thumbnail: disk full");
    assert!(first["age_secs"].as_u64().unwrap() < 600, "{first}");
    let dead_id = first["id"].as_str().unwrap().to_string();
    assert_ne!(dead_id, "poison-1", "a dead letter has its own id");

    let out = squall(url, &["dlq", "ls", "dlq.jobs.bad", "--json"]).await;
    assert_eq!(json_lines(&out).len(), 1, "{}", text(&out));
    let out = squall(url, &["dlq", "ls", "dlq.>"]).await;
    assert_eq!(exit(&out), 0, "{out:?}");
    let table = text(&out);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&dead_id), "{table}");
    assert!(table.contains("saving thumbnail: disk full"), "{table}");
    assert!(table.ends_with("3 dead letters on dlq.>\n"), "{table}");

    // show: the full envelope, by the origin's id or the dead letter's own.
    let out = squall(url, &["dlq", "show", "poison-1", "--json"]).await;
    assert_eq!(exit(&out), 0, "{out:?}");
    let shown = &json_lines(&out)[0];
    assert_eq!(shown["id"], dead_id.as_str());
    assert_eq!(shown["handler"], "thumbnailer");
    assert_eq!(shown["reason"], "rejected");
    assert_eq!(
        shown["error_chain"],
        serde_json::json!(["saving thumbnail", "disk full"])
    );
    assert!(
        shown["error"]
            .as_str()
            .unwrap()
            .starts_with("handler `thumbnailer` gave up after 3 attempts"),
        "{shown}"
    );
    let times: Vec<&str> = shown["attempt_times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(times.len(), 3, "{shown}");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "attempt times in order: {times:?}"
    );
    assert_eq!(shown["headers"]["tenant"], "acme");
    assert!(
        shown["headers"].get(headers::DEAD_LETTER).is_none(),
        "the envelope is shown structured, not as a header"
    );
    assert_eq!(shown["key"], "key-poison-1");
    assert_eq!(shown["payload_preview"], "img-1");
    assert_eq!(shown["payload_bytes"], 5);

    let out = squall(url, &["dlq", "show", &dead_id]).await;
    assert_eq!(exit(&out), 0, "{out:?}");
    let detail = text(&out);
    for needle in [
        "origin         jobs.resize  id poison-1",
        "group          workers",
        "handler        thumbnailer",
        "  caused by:  disk full",
        "attempts       3",
        "  tenant: acme",
        "payload        5 bytes",
        "  img-1",
    ] {
        assert!(detail.contains(needle), "no {needle:?} in:\n{detail}");
    }
    let out = squall(url, &["dlq", "show", "no-such-id"]).await;
    assert_eq!(exit(&out), 3, "not found is exit 3: {out:?}");

    // A dry run reports and changes nothing: no stream grows, the dead letters stay.
    let before = streams(&client).await;
    let out = squall(
        url,
        &["dlq", "redrive", "dlq.jobs.*", "--dry-run", "--json"],
    )
    .await;
    assert_eq!(exit(&out), 0, "{out:?}");
    let report = &json_lines(&out)[0];
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["redriven"].as_array().unwrap().len(), 3, "{report}");
    assert!(report["redriven"][0]["new_id"].is_null(), "{report}");
    assert_eq!(
        streams(&client).await,
        before,
        "a dry run publishes nothing"
    );
    let out = squall(url, &["dlq", "ls", "dlq.>", "--json"]).await;
    assert_eq!(json_lines(&out).len(), 3, "a dry run removes nothing");

    // The group that gave up receives what is redriven.
    let mut workers = client
        .subscribe(
            Subscription::new("jobs.>")
                .unwrap()
                .group("workers")
                .unwrap(),
        )
        .await
        .unwrap();

    // A narrow redrive with --to moves one; the wide view no longer lists it.
    let out = squall(
        url,
        &["dlq", "redrive", "dlq.jobs.bad", "--to", "jobs.quarantine"],
    )
    .await;
    assert_eq!(exit(&out), 0, "{out:?}");
    let said = text(&out);
    assert!(
        said.contains("(origin poison-3) to jobs.quarantine"),
        "{said}"
    );
    assert!(
        said.ends_with("redriven 1 dead letter on dlq.jobs.bad; skipped 0, failed 0\n"),
        "{said}"
    );
    let out = squall(url, &["dlq", "ls", "dlq.>", "--json"]).await;
    let left: Vec<Value> = json_lines(&out);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().all(|e| e["origin_id"] != "poison-3"),
        "{left:?}"
    );

    // The rest, rate-limited to 4/s: the second publish waits a quarter second.
    let started = Instant::now();
    let out = squall(url, &["dlq", "redrive", "dlq.>", "--rate", "4", "--json"]).await;
    let took = started.elapsed();
    assert_eq!(exit(&out), 0, "{out:?}");
    let report = &json_lines(&out)[0];
    assert_eq!(report["redriven"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["failed"], serde_json::json!([]));
    assert!(
        took >= Duration::from_millis(250),
        "--rate 4 spaces two publishes by 250 ms; took {took:?}"
    );

    // Back at the origin: fresh ids, first attempt, no envelope, payload, key and headers kept.
    let mut got = BTreeMap::new();
    for _ in 0..3 {
        let d = next(&mut workers).await;
        let m = d.message();
        assert_eq!(d.attempt(), 1, "a redriven message starts at attempt 1");
        assert!(m.headers().get(headers::DEAD_LETTER).is_none());
        assert_eq!(m.headers().get("tenant"), Some("acme"));
        let from = m.headers().get("squall-redriven-from").unwrap().to_string();
        assert_ne!(m.id().as_str(), from, "redriven with a fresh id");
        assert_eq!(m.key(), Some(format!("key-{from}").as_str()));
        got.insert(
            from,
            (
                m.subject().to_string(),
                String::from_utf8_lossy(m.payload()).into_owned(),
            ),
        );
        d.ack().await.unwrap();
    }
    let want: BTreeMap<String, (String, String)> = [
        ("poison-1", "jobs.resize", "img-1"),
        ("poison-2", "jobs.crop", "img-2"),
        ("poison-3", "jobs.quarantine", "img-3"),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.into(), (b.into(), c.into())))
    .collect();
    assert_eq!(got, want);

    // The dead-letter queue is empty now, in every view.
    let out = squall(url, &["dlq", "ls", "dlq.>", "--json"]).await;
    assert_eq!(exit(&out), 0, "{out:?}");
    assert!(json_lines(&out).is_empty(), "{}", text(&out));
    let out = squall(url, &["dlq", "ls", "dlq.jobs.*"]).await;
    assert_eq!(text(&out), "no dead letters on dlq.jobs.*\n");
    let out = squall(url, &["dlq", "redrive", "dlq.>"]).await;
    assert_eq!(exit(&out), 0, "{out:?}");
    assert!(
        text(&out).ends_with("redriven 0 dead letters on dlq.>; skipped 0, failed 0\n"),
        "{}",
        text(&out)
    );
    assert_eq!(
        streams(&client).await["dlq"].0,
        3,
        "each was dead-lettered (stored) once"
    );

    workers.close().await.unwrap();
    client.close().await.unwrap();
}

/// Guards the documented exit codes: bad input is a usage error (2) and an unreachable server a
/// failure (1), and `--help` documents them.
#[test]
fn usage_errors_exit_2_and_an_unreachable_server_exits_1() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_squall"))
            .args(args)
            .env_remove("SQUALL_SERVER")
            .output()
            .unwrap()
    };
    let out = run(&["dlq", "redrive", "dlq.>", "--rate", "0"]);
    assert_eq!(exit(&out), 2, "{out:?}");
    let out = run(&["dlq", "ls", "dlq..x"]);
    assert_eq!(exit(&out), 2, "{out:?}");
    let out = run(&["dlq", "redrive", "dlq.>", "--to", "a.*"]);
    assert_eq!(exit(&out), 2, "a pattern is not a subject: {out:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound then dropped: nothing listens there
    let out = run(&[
        "dlq",
        "ls",
        "dlq.>",
        "--server",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(exit(&out), 1, "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: connecting to"));
    let help = text(&run(&["dlq", "redrive", "--help"]));
    assert!(
        help.contains("4  `redrive`: some dead letters were left in place"),
        "{help}"
    );
}
