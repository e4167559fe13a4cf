//! `squall dlq ls | show | redrive`: inspect and redrive the dead letters of a `squall serve`.
//!
//! The work is done by [`squall_middleware::dlq`]: it reads dead-letter subjects as a durable
//! group, so looking (`ls`, `show`) leaves the dead letters in place while `redrive` acks each
//! one only after its republish was confirmed — a failed publish leaves it where it was.
//!
//! ## One view per dead-letter stream
//! A group is the "view" that remembers what was redriven. Every pattern under `dlq.` (the
//! server's dead-letter stream) is read through the one view of `dlq.>` and filtered here, so
//! `redrive dlq.orders.created` is reflected in `ls 'dlq.>'` and in `ls 'dlq.orders.*'` alike.
//! A pattern outside `dlq.` (a subscription's own dead-letter subject) is its own view. The cost:
//! a narrow `ls` scans the whole stream's pending dead letters (at most
//! [`dlq::MAX_SCAN`] at a time), and a scan ends once nothing arrived for [`dlq::SCAN_IDLE`].

use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::{Value, json};
use squall_client::{Client, ClientConfig};
use squall_core::{Pattern, Subject, Timestamp, headers};
use squall_middleware::dlq::{self, DlqEntry, RedriveReport};

/// Exit code of `show` when no dead letter has the id.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code of `redrive` when dead letters were left in place (failed, skipped, or a dry run
/// that stopped at its scan limit).
pub const EXIT_INCOMPLETE: u8 = 4;

const EXIT_CODES: &str = "\
Exit codes:
  0  done (`ls` also when there are no dead letters)
  1  failure: server unreachable or refusing, the error is printed
  2  usage error
  3  `show`: no dead letter with that id
  4  `redrive`: some dead letters were left in place (publish or ack failed, no envelope,
     dead-lettered again during the run), or a dry run stopped at its scan limit";

/// Most payload bytes `show` prints.
const PREVIEW_BYTES: usize = 1024;
/// Widest error column of the `ls` table.
const ERROR_WIDTH: usize = 72;

/// `squall dlq`: the dead-letter subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Dlq {
    /// List dead letters on subjects matching a pattern: id, origin, group, attempts, error, age.
    #[command(after_help = EXIT_CODES)]
    Ls(LsArgs),
    /// Show one dead letter: error chain, handler, origin, group, attempts, headers, payload.
    #[command(after_help = EXIT_CODES)]
    Show(ShowArgs),
    /// Publish dead letters again, to their origin subject or `--to`, and remove them from the
    /// dead-letter queue once each publish is confirmed.
    #[command(after_help = EXIT_CODES)]
    Redrive(RedriveArgs),
}

/// Where the server is (the same flags and variables as `squall pub`).
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Server URL (`squall://host:port` or `host:port`).
    #[arg(long, default_value = "squall://127.0.0.1:4470", env = "SQUALL_SERVER")]
    server: String,
    /// Token, if the server requires one.
    #[arg(long, env = "SQUALL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Machine-readable output (`ls`: one JSON object per dead letter and line; `show`,
    /// `redrive`: one JSON object).
    #[arg(long)]
    json: bool,
}

impl Conn {
    async fn connect(&self) -> anyhow::Result<Client> {
        let url = crate::client_cmds::server_url(&self.server);
        let mut config = ClientConfig::from_url(&url).context("--server")?;
        config.name = "squall-cli".into();
        if let Some(t) = &self.token {
            config.token = Some(t.clone());
        }
        Client::connect(config)
            .await
            .with_context(|| format!("connecting to {}", self.server))
    }
}

/// Arguments of `squall dlq ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Dead-letter subject pattern, e.g. `dlq.>` or `dlq.orders.*` (dead letters of `orders.x`
    /// go to `dlq.orders.x` unless the subscription names its own dead-letter subject).
    #[arg(value_parser = parse_pattern)]
    subject: Pattern,
    /// Most dead letters listed, oldest first.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=dlq::MAX_SCAN as i64))]
    limit: u32,
    #[command(flatten)]
    conn: Conn,
}

/// Arguments of `squall dlq show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The dead letter's id, or the id of the message it was made from.
    id: String,
    /// Dead-letter subject pattern to look in.
    #[arg(long, default_value = "dlq.>", value_parser = parse_pattern)]
    subject: Pattern,
    #[command(flatten)]
    conn: Conn,
}

/// Arguments of `squall dlq redrive`.
#[derive(Debug, clap::Args)]
pub struct RedriveArgs {
    /// Dead-letter subject pattern: every dead letter on a matching subject is redriven.
    #[arg(value_parser = parse_pattern)]
    subject: Pattern,
    /// Publish to this subject instead of each dead letter's origin subject.
    #[arg(long, value_parser = parse_subject)]
    to: Option<Subject>,
    /// Most messages published per second.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rate: Option<u32>,
    /// Print what would be redriven; publish and remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    conn: Conn,
}

fn parse_pattern(s: &str) -> Result<Pattern, String> {
    Pattern::new(s).map_err(|e| e.to_string())
}

fn parse_subject(s: &str) -> Result<Subject, String> {
    Subject::new(s).map_err(|e| e.to_string())
}

/// Runs a `squall dlq` subcommand; `Ok` carries the exit code (0, [`EXIT_NOT_FOUND`],
/// [`EXIT_INCOMPLETE`]).
pub fn run_cmd(cmd: Dlq, out: &mut impl Write) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let conn = match &cmd {
            Dlq::Ls(a) => &a.conn,
            Dlq::Show(a) => &a.conn,
            Dlq::Redrive(a) => &a.conn,
        };
        let client = conn.connect().await?;
        let result = match &cmd {
            Dlq::Ls(a) => ls(&client, a, out).await.map(|()| 0),
            Dlq::Show(a) => show(&client, a, out).await,
            Dlq::Redrive(a) => redrive(&client, a, out).await,
        };
        // Closing also releases what a scan looked at, for the next reader.
        let closed = client.close().await.context("closing the connection");
        let code = result?;
        closed?;
        Ok(code)
    })
}

/// The view `pattern` is read through, and the filter within it (`None`: the whole view).
fn view_of(pattern: &Pattern) -> (Pattern, Option<&Pattern>) {
    let stream = Pattern::new("dlq.>").expect("a valid pattern");
    if pattern.is_subset_of(&stream) && *pattern != stream {
        (stream, Some(pattern))
    } else {
        (pattern.clone(), None)
    }
}

async fn ls(client: &Client, args: &LsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let limit = args.limit as usize;
    let (view, only) = view_of(&args.subject);
    // One more than shown, to tell whether there are more.
    let scan = if only.is_some() {
        dlq::MAX_SCAN
    } else {
        limit + 1
    };
    let mut entries = dlq::list(client, view.as_str(), scan)
        .await
        .with_context(|| format!("listing dead letters on {}", args.subject))?;
    let scanned_all = entries.len() < dlq::MAX_SCAN;
    if let Some(p) = only {
        entries.retain(|e| p.matches(e.message.subject()));
    }
    let more = entries.len() > limit || !scanned_all;
    entries.truncate(limit);
    let now = Timestamp::now();
    if args.conn.json {
        for e in &entries {
            writeln!(out, "{}", summary_json(e, now))?;
        }
        return Ok(());
    }
    if entries.is_empty() {
        writeln!(out, "no dead letters on {}", args.subject)?;
        return Ok(());
    }
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let env = e.envelope.as_ref();
            [
                e.message.id().to_string(),
                env.map_or("?".into(), |v| v.origin_subject.to_string()),
                env.and_then(|v| v.group.clone())
                    .unwrap_or_else(|| "-".into()),
                attempts(e).to_string(),
                age(e, now),
                clip(&last_error(e), ERROR_WIDTH),
            ]
        })
        .collect();
    let head = ["ID", "ORIGIN", "GROUP", "ATTEMPTS", "AGE", "LAST ERROR"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s
    };
    writeln!(out, "{}", line(head))?;
    for r in &rows {
        writeln!(out, "{}", line(r.each_ref().map(String::as_str)))?;
    }
    writeln!(
        out,
        "{} dead letter{} on {}{}",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        args.subject,
        if more {
            " (more not shown: raise --limit)"
        } else {
            ""
        }
    )?;
    Ok(())
}

async fn show(client: &Client, args: &ShowArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let (view, only) = view_of(&args.subject);
    let found = dlq::show(client, view.as_str(), &args.id)
        .await
        .with_context(|| format!("looking for {} on {}", args.id, args.subject))?
        .filter(|e| only.is_none_or(|p| p.matches(e.message.subject())));
    let Some(e) = found else {
        if args.conn.json {
            writeln!(out, "{}", json!({"error": "not found", "id": args.id}))?;
        } else {
            writeln!(out, "no dead letter {} on {}", args.id, args.subject)?;
        }
        return Ok(EXIT_NOT_FOUND);
    };
    let now = Timestamp::now();
    if args.conn.json {
        writeln!(out, "{}", detail_json(&e, now))?;
    } else {
        write_detail(&e, now, out)?;
    }
    Ok(0)
}

async fn redrive(client: &Client, args: &RedriveArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let (view, only) = view_of(&args.subject);
    let report = dlq::redrive_matching(
        client,
        view.as_str(),
        only,
        args.to.clone(),
        args.rate,
        args.dry_run,
    )
    .await
    .with_context(|| format!("redriving {}", args.subject))?;
    if args.conn.json {
        writeln!(out, "{}", report_json(&report))?;
    } else {
        write_report(&report, &args.subject, out)?;
    }
    let incomplete = !report.skipped.is_empty() || !report.failed.is_empty() || report.truncated;
    Ok(if incomplete { EXIT_INCOMPLETE } else { 0 })
}

fn write_report(r: &RedriveReport, pattern: &Pattern, out: &mut impl Write) -> anyhow::Result<()> {
    for x in &r.redriven {
        if r.dry_run {
            writeln!(
                out,
                "would redrive {} (origin {}) to {}",
                x.dead_letter_id, x.origin_id, x.subject
            )?;
        } else {
            writeln!(
                out,
                "redriven {} (origin {}) to {} as {}",
                x.dead_letter_id, x.origin_id, x.subject, x.new_id
            )?;
        }
    }
    for id in &r.skipped {
        writeln!(
            out,
            "left {id}: no envelope, or dead-lettered again during this run"
        )?;
    }
    for (id, e) in &r.failed {
        writeln!(out, "left {id}: {e}")?;
    }
    let n = r.redriven.len();
    if r.dry_run {
        writeln!(
            out,
            "dry run: would redrive {n} dead letter{} on {pattern}, leave {}; nothing published or removed{}",
            plural(n),
            r.skipped.len(),
            if r.truncated {
                format!(" (stopped after {} dead letters)", dlq::MAX_SCAN)
            } else {
                String::new()
            }
        )?;
    } else {
        writeln!(
            out,
            "redriven {n} dead letter{} on {pattern}; skipped {}, failed {}",
            plural(n),
            r.skipped.len(),
            r.failed.len()
        )?;
    }
    Ok(())
}

fn report_json(r: &RedriveReport) -> Value {
    json!({
        "dry_run": r.dry_run,
        "redriven": r.redriven.iter().map(|x| json!({
            "dead_letter_id": x.dead_letter_id,
            "origin_id": x.origin_id,
            "new_id": if r.dry_run { Value::Null } else { x.new_id.clone().into() },
            "subject": x.subject.as_str(),
        })).collect::<Vec<_>>(),
        "skipped": r.skipped,
        "failed": r.failed.iter().map(|(id, e)| json!({"id": id, "error": e})).collect::<Vec<_>>(),
        "truncated": r.truncated,
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Delivery attempts: the envelope's recorded starts, or the attempt header where a runtime
/// without native dead letters recorded only the last start.
fn attempts(e: &DlqEntry) -> u32 {
    let recorded = e.envelope.as_ref().map_or(0, |v| v.attempts.len());
    let header = e
        .message
        .headers()
        .get(headers::ATTEMPT)
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(0);
    u32::try_from(recorded).unwrap_or(u32::MAX).max(header)
}

fn dead_lettered_at(e: &DlqEntry) -> Timestamp {
    e.envelope
        .as_ref()
        .map_or(e.published_at, |v| v.dead_lettered_at)
}

fn age(e: &DlqEntry, now: Timestamp) -> String {
    let secs = now.saturating_since(dead_lettered_at(e)).as_secs();
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The error chain on one line, outermost first (`anyhow`'s `{:#}` style).
fn last_error(e: &DlqEntry) -> String {
    match &e.envelope {
        None => "(no envelope)".into(),
        Some(_) => e.error_chain().join(": "),
    }
}

fn rfc3339(t: Timestamp) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(t.as_nanos());
    humantime::format_rfc3339_millis(at).to_string()
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut c: String = s.chars().take(max.saturating_sub(1)).collect();
    c.push('…');
    c
}

fn summary_json(e: &DlqEntry, now: Timestamp) -> Value {
    let env = e.envelope.as_ref();
    json!({
        "id": e.message.id().as_str(),
        "subject": e.message.subject().as_str(),
        "sequence": e.sequence,
        "origin_id": env.map(|v| v.origin_id.as_str()),
        "origin_subject": env.map(|v| v.origin_subject.as_str()),
        "group": env.and_then(|v| v.group.as_deref()),
        "handler": e.handler(),
        "attempts": attempts(e),
        "last_error": env.map(|_| last_error(e)),
        "dead_lettered_at": rfc3339(dead_lettered_at(e)),
        "age_secs": now.saturating_since(dead_lettered_at(e)).as_secs(),
    })
}

/// The payload's first [`PREVIEW_BYTES`]: text when it is UTF-8 (a character cut at the end
/// is allowed), else `None`.
fn preview_text(payload: &[u8]) -> Option<String> {
    let head = &payload[..payload.len().min(PREVIEW_BYTES)];
    match std::str::from_utf8(head) {
        Ok(s) => Some(s.to_string()),
        Err(e) if e.error_len().is_none() && head.len() < payload.len() => {
            Some(String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn detail_json(e: &DlqEntry, now: Timestamp) -> Value {
    let mut v = summary_json(e, now);
    let env = e.envelope.as_ref();
    let payload = e.message.payload();
    let head = &payload[..payload.len().min(PREVIEW_BYTES)];
    let text = preview_text(payload);
    let hdrs: serde_json::Map<String, Value> = e
        .message
        .headers()
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(headers::DEAD_LETTER))
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let extra = json!({
        "key": e.message.key(),
        "reason": env.map(|v| v.reason),
        "error": env.map(|v| v.error.as_str()),
        "error_chain": e.error_chain(),
        "origin_stream": env.and_then(|v| v.origin_stream.as_deref()),
        "origin_sequence": env.map(|v| v.origin_sequence),
        "attempt_times": env.map(|v| v.attempts.iter().map(|t| rfc3339(*t)).collect::<Vec<_>>()),
        "headers": hdrs,
        "payload_bytes": payload.len(),
        "payload_truncated": payload.len() > PREVIEW_BYTES,
        "payload_preview": text,
        "payload_preview_hex": if text.is_none() { Some(hex(head)) } else { None },
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
        a.extend(b);
    }
    v
}

fn write_detail(e: &DlqEntry, now: Timestamp, out: &mut impl Write) -> anyhow::Result<()> {
    let m = &e.message;
    writeln!(
        out,
        "dead letter    {}  ({} #{})",
        m.id(),
        m.subject(),
        e.sequence
    )?;
    let Some(env) = &e.envelope else {
        writeln!(
            out,
            "envelope       none: not dead-lettered by squall (it cannot be redriven)"
        )?;
        return write_message_part(e, out);
    };
    let stream = env
        .origin_stream
        .as_deref()
        .map(|s| format!("  stream {s} #{}", env.origin_sequence))
        .unwrap_or_default();
    writeln!(
        out,
        "origin         {}  id {}{stream}",
        env.origin_subject, env.origin_id
    )?;
    writeln!(
        out,
        "group          {}",
        env.group.as_deref().unwrap_or("- (fan-out)")
    )?;
    writeln!(
        out,
        "handler        {}",
        e.handler().as_deref().unwrap_or("-")
    )?;
    let reason = match env.reason {
        squall_core::DeadLetterReason::MaxDeliveries => "max deliveries reached",
        squall_core::DeadLetterReason::Rejected => "rejected",
    };
    writeln!(out, "reason         {reason}")?;
    writeln!(
        out,
        "dead-lettered  {} ({} ago)",
        rfc3339(env.dead_lettered_at),
        age(e, now)
    )?;
    writeln!(
        out,
        "error          {}",
        env.error.lines().next().unwrap_or("")
    )?;
    for (i, c) in e.error_chain().iter().enumerate() {
        let label = if i == 0 { "error:" } else { "caused by:" };
        writeln!(out, "  {label:<11} {c}")?;
    }
    writeln!(out, "attempts       {}", attempts(e))?;
    let mut prev: Option<Timestamp> = None;
    for (i, t) in env.attempts.iter().enumerate() {
        let after = prev
            .map(|p| {
                let d = t.saturating_since(p);
                format!(
                    "  (+{})",
                    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
                )
            })
            .unwrap_or_default();
        writeln!(out, "  {:<3} {}{after}", i + 1, rfc3339(*t))?;
        prev = Some(*t);
    }
    write_message_part(e, out)
}

fn write_message_part(e: &DlqEntry, out: &mut impl Write) -> anyhow::Result<()> {
    let m = &e.message;
    if let Some(k) = m.key() {
        writeln!(out, "key            {k}")?;
    }
    let hdrs: Vec<(&str, &str)> = m
        .headers()
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(headers::DEAD_LETTER))
        .collect();
    writeln!(out, "headers        {}", hdrs.len())?;
    for (k, v) in hdrs {
        writeln!(out, "  {k}: {v}")?;
    }
    let payload = m.payload();
    let cut = payload.len() > PREVIEW_BYTES;
    writeln!(
        out,
        "payload        {} bytes{}",
        payload.len(),
        if cut {
            format!(", first {PREVIEW_BYTES} shown")
        } else {
            String::new()
        }
    )?;
    match preview_text(payload) {
        Some(text) => {
            for l in text.lines() {
                writeln!(out, "  {}", l.escape_debug())?;
            }
        }
        None => {
            let head = &payload[..payload.len().min(PREVIEW_BYTES)];
            for chunk in head.chunks(32) {
                writeln!(out, "  {}", hex(chunk))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_under_dlq_share_the_stream_view() {
        let p = Pattern::new("dlq.orders.*").unwrap();
        let (view, only) = view_of(&p);
        assert_eq!(view.as_str(), "dlq.>");
        assert_eq!(only, Some(&p));
        let all = Pattern::new("dlq.>").unwrap();
        assert_eq!(view_of(&all), (all.clone(), None));
        let own = Pattern::new("failed.orders").unwrap();
        assert_eq!(view_of(&own), (own.clone(), None));
    }

    #[test]
    fn previews_text_cut_mid_character_and_hex_for_binary() {
        assert_eq!(preview_text(b"img-1").as_deref(), Some("img-1"));
        let mut long = vec![b'a'; PREVIEW_BYTES - 1];
        long.extend("é".as_bytes()); // cut in the middle of `é`
        assert_eq!(preview_text(&long).unwrap().len(), PREVIEW_BYTES - 1);
        assert_eq!(preview_text(&[0xff, 0xfe, 0x00]), None);
        assert_eq!(hex(&[0xff, 0x01]), "ff01");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
