//! Rough figures for the Kafka adapter against the broker at `SQUALL_KAFKA_URL`, printed as one
//! JSON object: pipelined publish throughput (acks awaited in windows), one-at-a-time publish
//! latency, and consume throughput (a fan-out consumer acking every delivery).
//!
//! ```text
//! eval "$(scripts/peers.sh env)"
//! cargo run -p squall-kafka --example kafka_throughput -- [messages] [payload bytes]
//! ```
//!
//! It creates one topic (`bench.<random>`) and deletes it at the end.

use std::time::{Duration, Instant};

use squall_core::{Consumer, Message, Publisher, StartPosition, Subject, Subscription};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SQUALL_KAFKA_URL")
        .map_err(|_| "SQUALL_KAFKA_URL is unset (eval \"$(scripts/peers.sh env)\")")?;
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let size: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1024);
    let sep = if url.contains('?') { '&' } else { '?' };
    let kafka = squall_kafka::connect_url(&format!("{url}{sep}storage=memory")).await?;
    let subject = Subject::new(format!("bench.{}", uuid::Uuid::now_v7().simple()))?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);

    // Pipelined: up to 1000 sends in flight, then their acks.
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < n {
        let window = (n - sent).min(1000);
        let mut pending = Vec::with_capacity(window);
        for _ in 0..window {
            pending.push(
                kafka
                    .send(Message::new(subject.clone(), payload.clone()))
                    .await?,
            );
        }
        for p in pending {
            p.await?;
        }
        sent += window;
    }
    let publish_secs = t0.elapsed().as_secs_f64();

    // One at a time.
    let mut lat = Vec::with_capacity(500);
    for _ in 0..500 {
        let t = Instant::now();
        kafka
            .publish(Message::new(subject.clone(), payload.clone()))
            .await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;

    let mut c = kafka
        .consumer(
            Subscription::new(subject.as_str())?
                .start(StartPosition::First)
                .max_in_flight(1024),
        )
        .await?;
    let total = n + 500;
    let t0 = Instant::now();
    let mut got = 0;
    while got < total {
        let batch = tokio::time::timeout(
            Duration::from_secs(30),
            c.next_batch(512, Duration::from_millis(5)),
        )
        .await??;
        got += batch.len();
        for d in batch {
            d.ack().await?;
        }
    }
    let consume_secs = t0.elapsed().as_secs_f64();
    c.close().await?;
    let topic = squall_kafka::topics::topic_for(&kafka.config().topic_prefix, &subject);
    kafka.close().await?;
    kafka.wait_consumers_closed(Duration::from_secs(30));
    kafka.delete_topics(&[topic]).await?;

    println!(
        "{}",
        serde_json::json!({
            "backend": "kafka",
            "messages": n,
            "payload_bytes": size,
            "publish_pipelined_msgs_per_s": (n as f64 / publish_secs).round(),
            "publish_one_at_a_time_ms": { "p50": pct(0.5), "p99": pct(0.99) },
            "consume_ack_msgs_per_s": (total as f64 / consume_secs).round(),
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        })
    );
    Ok(())
}
