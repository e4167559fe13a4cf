//! A self-contained HTML page: one inline-SVG bar chart of msgs/s per case (median bar, min–max
//! whisker, durability label), then the Markdown table as preformatted text. No scripts.

use std::fmt::Write as _;

use crate::report::{Report, Status, human};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn colour(target: &str) -> &'static str {
    match target {
        "squall-embedded" => "#1f6feb",
        "squall-serve" => "#0b3d91",
        "nats-core" => "#2da44e",
        "nats-js" => "#1a7f37",
        "rabbitmq-classic" => "#d4a72c",
        "rabbitmq-quorum" => "#bc4c00",
        _ => "#888",
    }
}

/// The page.
pub fn page(r: &Report) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>squall bench</title>\
         <style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}\
         .warn{{background:#fff3cd;padding:.5em;border:1px solid #e0c36c}}\
         pre{{font-size:12px;overflow-x:auto}}</style></head><body>\n<h1>squall bench</h1>\n"
    );
    let _ = writeln!(
        s,
        "<p>{} cores, {}, kernel {}; build {}; squall {}.</p>",
        r.machine.cores,
        esc(&r.machine.cpu_model),
        esc(&r.machine.kernel),
        r.machine.build,
        r.squall_version
    );
    if let Some(c) = &r.command {
        let _ = writeln!(s, "<p>Command: <code>{}</code></p>", esc(c));
    }
    if r.quick {
        let _ = writeln!(
            s,
            "<p class=\"warn\">Quick mode: a harness check, not figures.</p>"
        );
    }
    if let Some(n) = &r.busy.note {
        let _ = writeln!(s, "<p class=\"warn\">{}</p>", esc(n));
    }
    // One chart per (workload, variant), in report order.
    let mut cases: Vec<(String, String)> = Vec::new();
    for row in &r.rows {
        let key = (row.workload.to_string(), row.variant.clone());
        if !cases.contains(&key) {
            cases.push(key);
        }
    }
    for (w, v) in cases {
        let rows: Vec<_> = r
            .rows
            .iter()
            .filter(|x| x.workload.to_string() == w && x.variant == v)
            .collect();
        let max = rows
            .iter()
            .filter_map(|x| x.msgs_per_sec.map(|m| m.max))
            .fold(0.0f64, f64::max);
        let title = rows.first().map_or("", |x| x.title);
        let bar_h = 22;
        let height = rows.len() * (bar_h + 6) + 10;
        let _ = writeln!(s, "<h3>{w} {} — {}</h3>", esc(&v), esc(title));
        let _ = writeln!(
            s,
            "<svg width=\"1000\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\" \
             font-size=\"12\">"
        );
        for (i, x) in rows.iter().enumerate() {
            let y = 5 + i * (bar_h + 6);
            let name = x.target.name();
            let _ = writeln!(s, "<text x=\"0\" y=\"{}\">{name}</text>", y + bar_h / 2 + 4);
            match (x.status, x.msgs_per_sec) {
                (Status::Ok, Some(m)) if max > 0.0 => {
                    let scale = 560.0 / max;
                    let w = (m.median * scale).max(1.0);
                    let _ = writeln!(
                        s,
                        "<rect x=\"140\" y=\"{y}\" width=\"{w:.1}\" height=\"{bar_h}\" fill=\"{}\"/>",
                        colour(name)
                    );
                    let (a, b) = (140.0 + m.min * scale, 140.0 + m.max * scale);
                    let my = y + bar_h / 2;
                    let _ = writeln!(
                        s,
                        "<line x1=\"{a:.1}\" y1=\"{my}\" x2=\"{b:.1}\" y2=\"{my}\" stroke=\"#000\"/>"
                    );
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{}\">{} msg/s · {}</text>",
                        140.0 + m.max * scale + 6.0,
                        y + bar_h / 2 + 4,
                        human(m.median),
                        x.durability.unwrap_or("?")
                    );
                }
                _ => {
                    let why = x.reason.as_deref().unwrap_or("no figure");
                    let short: String = why.chars().take(120).collect();
                    let _ = writeln!(
                        s,
                        "<text x=\"140\" y=\"{}\" fill=\"#666\">{}: {}</text>",
                        y + bar_h / 2 + 4,
                        if x.status == Status::Failed {
                            "failed"
                        } else {
                            "not run"
                        },
                        esc(&short)
                    );
                }
            }
        }
        let _ = writeln!(s, "</svg>");
    }
    let _ = writeln!(
        s,
        "<h2>Table</h2>\n<pre>{}</pre>\n</body></html>",
        esc(&crate::report::markdown(r))
    );
    s
}
