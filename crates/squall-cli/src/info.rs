//! `squall info`: the squall version and the capabilities of the embedded broker.

use std::io::Write;

use anyhow::Context;
use squall::{Capabilities, Durability, Support};

/// Arguments of `squall info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The largest payload the embedded broker is declared to accept, in bytes.
const MAX_PAYLOAD: usize = 1 << 20;

/// What the embedded broker declares. The broker does not report its own capabilities yet, so
/// this is the static declaration from `squall-core`.
fn embedded_capabilities() -> Capabilities {
    Capabilities::all_native(MAX_PAYLOAD, Durability::Memory)
}

/// Writes the report to `out`.
pub fn run(args: &Args, out: &mut impl Write) -> anyhow::Result<()> {
    let caps = embedded_capabilities();
    if args.json {
        write_json(&caps, out)
    } else {
        write_table(&caps, out).context("writing to stdout")
    }
}

fn write_json(caps: &Capabilities, out: &mut impl Write) -> anyhow::Result<()> {
    let features: serde_json::Map<String, serde_json::Value> = caps
        .table()
        .into_iter()
        .map(|(name, support)| (name.to_owned(), support_label(support).into()))
        .collect();
    let report = serde_json::json!({
        "version": squall::VERSION,
        "backend": "embedded",
        "capabilities": features,
        "max_payload": caps.max_payload,
        "max_durability": caps.max_durability.to_string(),
    });
    serde_json::to_writer_pretty(&mut *out, &report).context("writing JSON to stdout")?;
    writeln!(out).context("writing to stdout")
}

fn write_table(caps: &Capabilities, out: &mut impl Write) -> std::io::Result<()> {
    let rows = caps.table();
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    writeln!(out, "squall {}", squall::VERSION)?;
    writeln!(out)?;
    writeln!(out, "backend: embedded")?;
    writeln!(out, "max payload: {} bytes", caps.max_payload)?;
    writeln!(out, "max durability: {}", caps.max_durability)?;
    writeln!(out)?;
    writeln!(out, "{:<width$}  support", "feature")?;
    for (name, support) in rows {
        writeln!(out, "{name:<width$}  {}", support_label(support))?;
    }
    Ok(())
}

fn support_label(support: Support) -> &'static str {
    match support {
        Support::Native => "native",
        Support::Emulated => "emulated",
        Support::Missing => "missing",
    }
}
