//! Publish throughput of the NATS adapter: `N` messages of `SIZE` bytes sent pipelined (every
//! `send` first, then every ack), over core NATS and JetStream, printed as JSON lines.
//!
//! ```text
//! cargo run -p squall-nats --example publish_rate -- [nats://127.0.0.1:4222] [N=20000] [SIZE=1024]
//! ```
//!
//! Uses the stream `squall_bench_<random>` (deleted afterwards) and subjects under `bench.`.

use std::time::Instant;

use squall_core::{Message, Publisher};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .or_else(|| std::env::var("SQUALL_NATS_URL").ok())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let size: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let tag = uuid::Uuid::now_v7().simple().to_string()[24..].to_string();
    let payload = vec![b'x'; size];
    for (mode, options) in [
        ("core", String::new()),
        (
            "jetstream",
            format!("?jetstream=1&stream=squall_bench_{tag}&subjects=bench.{tag}.>"),
        ),
    ] {
        let b = squall_nats::connect_url(&format!("{base}{options}")).await?;
        let subject = format!("bench.{tag}.{mode}");
        // Warm up: creates the stream.
        b.publish(Message::builder(&subject)?.payload("warm").build())
            .await?;
        let t0 = Instant::now();
        let mut pending = Vec::with_capacity(n);
        for _ in 0..n {
            let m = Message::builder(&subject)?.payload(payload.clone()).build();
            pending.push(b.send(m).await?);
        }
        let mut durability = None;
        for p in pending {
            durability = Some(p.await?.durability);
        }
        b.flush().await?;
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{{\"mode\":\"{mode}\",\"messages\":{n},\"payload_bytes\":{size},\"seconds\":{secs:.3},\"msgs_per_sec\":{:.0},\"durability\":\"{}\",\"max_pending_acks\":{}}}",
            n as f64 / secs,
            durability.map(|d| d.to_string()).unwrap_or_default(),
            b.config().max_pending_acks
        );
        if mode == "jetstream" {
            let js = async_nats::jetstream::new(b.client().clone());
            js.delete_stream(format!("squall_bench_{tag}")).await?;
        }
        b.close().await?;
    }
    Ok(())
}
