//! The HTML report: one self-contained page (inline SVG, no scripts, no external assets).

use std::fmt::Write as _;

use crate::report::{Report, Window};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 900.0;
const H: f64 = 170.0;
const PAD_L: f64 = 60.0;
const PAD_B: f64 = 22.0;

struct Series<'a> {
    label: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// One chart: series over seconds, fault windows shaded, phase boundaries dashed.
fn chart(
    title: &str,
    unit: &str,
    series: &[Series<'_>],
    faults: &[Window],
    phases: &[Window],
    t_max: f64,
) -> String {
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let x = |t: f64| PAD_L + (t / t_max.max(1.0)) * (W - PAD_L - 10.0);
    let y = |v: f64| (H - PAD_B) - (v / y_max) * (H - PAD_B - 10.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    for f in faults {
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="0" width="{:.1}" height="{:.1}" fill="#e4572e" opacity="0.15"><title>{}</title></rect><text x="{:.1}" y="12" class="fault">{}</text>"##,
            x(f.from_s),
            (x(f.to_s) - x(f.from_s)).max(2.0),
            H - PAD_B,
            esc(&f.name),
            x(f.from_s) + 3.0,
            esc(&f.name)
        );
    }
    for p in phases.iter().skip(1) {
        let _ = write!(
            s,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="0" y2="{1:.1}" stroke="#888" stroke-dasharray="4 3"/>"##,
            x(p.from_s),
            H - PAD_B
        );
    }
    for p in phases {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="phase">{}</text>"#,
            x(p.from_s) + 3.0,
            H - PAD_B - 4.0,
            esc(&p.name)
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{PAD_L}" x2="{PAD_L}" y1="0" y2="{:.1}" stroke="#444"/><line x1="{PAD_L}" x2="{W}" y1="{:.1}" y2="{:.1}" stroke="#444"/>"##,
        H - PAD_B,
        H - PAD_B,
        H - PAD_B
    );
    for i in 0..=4 {
        let v = y_max / 1.1 * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="end">{}</text>"#,
            PAD_L - 4.0,
            y(v) + 4.0,
            if v >= 1000.0 {
                format!("{:.0}k", v / 1000.0)
            } else {
                format!("{v:.0}")
            }
        );
    }
    let step = (t_max / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= t_max {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{t:.0}s</text>"#,
            x(t),
            H - 6.0
        );
        t += step;
    }
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
            se.color,
            pts.join(" ")
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{}" class="legend">{} ({unit})</text>"#,
            W - 200.0,
            14.0 + 13.0 * i as f64,
            se.color,
            esc(se.label)
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// Renders the page.
pub fn render(r: &Report) -> String {
    let f = &r.findings;
    let t_max = r.duration_s.max(f.timeline.len() as f64);
    let at = |b: &crate::checker::Bucket| b.t as f64 + 0.5;
    let pts = |get: &dyn Fn(&crate::checker::Bucket) -> f64| {
        f.timeline
            .iter()
            .map(|b| (at(b), get(b)))
            .collect::<Vec<_>>()
    };
    let mut html = String::new();
    let verdict = if r.pass { "PASS" } else { "FAIL" };
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>squall chaos: {name} — {verdict}</title>
<style>
body{{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:960px;color:#222}}
h1{{font-size:20px;margin:0 0 4px}} .pass{{color:#1a7f37}} .fail{{color:#c62828}}
code{{background:#f3f3f3;padding:2px 5px;border-radius:3px}}
table{{border-collapse:collapse;margin:10px 0}} td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}}
figure{{margin:14px 0}} figcaption{{font-weight:600}} .axis{{font-size:10px;fill:#555}} .legend{{font-size:11px}}
.fault{{font-size:10px;fill:#b23b17}} .phase{{font-size:10px;fill:#666}}
</style></head><body>
<h1>{name}: <span class="{cls}">{verdict}</span></h1>
<p>{desc}</p>
<p>seed <code>{seed}</code> · replay: <code>{replay}</code><br>target: {target} · {dur:.1} s</p>
"#,
        name = esc(&r.scenario),
        cls = if r.pass { "pass" } else { "fail" },
        desc = esc(&r.description),
        seed = r.seed,
        replay = esc(&r.replay),
        target = esc(&r.target),
        dur = r.duration_s,
    );
    for n in &r.notes {
        let _ = write!(html, "<p>note: {}</p>", esc(n));
    }
    html.push_str("<table><tr><th>criterion</th><th>limit</th><th>observed</th><th></th></tr>");
    for v in &r.verdicts {
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="{}">{}</td></tr>"#,
            esc(&v.name),
            esc(&v.limit),
            esc(&v.observed),
            if v.pass { "pass" } else { "fail" },
            if v.pass { "PASS" } else { "FAIL" }
        );
    }
    html.push_str("</table>");
    html.push_str(&chart(
        "Throughput per second",
        "msg/s",
        &[
            Series {
                label: "sent",
                color: "#999",
                points: pts(&|b| b.sent as f64),
            },
            Series {
                label: "confirmed",
                color: "#1f77b4",
                points: pts(&|b| b.confirmed as f64),
            },
            Series {
                label: "delivered",
                color: "#2ca02c",
                points: pts(&|b| b.delivered as f64),
            },
        ],
        &r.faults,
        &r.phases,
        t_max,
    ));
    html.push_str(&chart(
        "End-to-end latency, p99 per second",
        "ms",
        &[Series {
            label: "p99",
            color: "#9467bd",
            points: pts(&|b| b.p99_ms),
        }],
        &r.faults,
        &r.phases,
        t_max,
    ));
    html.push_str(&chart(
        "Lag (confirmed, not yet delivered)",
        "msgs",
        &[Series {
            label: "lag",
            color: "#ff7f0e",
            points: pts(&|b| b.lag as f64),
        }],
        &r.faults,
        &r.phases,
        t_max,
    ));
    html.push_str(&chart(
        "Producer errors per second",
        "errors/s",
        &[Series {
            label: "errors",
            color: "#d62728",
            points: pts(&|b| b.errors as f64),
        }],
        &r.faults,
        &r.phases,
        t_max,
    ));
    html.push_str("<h2>Phases</h2><p>Counts by the phase a message was sent in; “received during” counts first deliveries that happened in the phase.</p><table><tr><th>phase</th><th>sent</th><th>confirmed</th><th>delivered</th><th>failed</th><th>lost</th><th>received during</th><th>p99 latency</th></tr>");
    for p in &f.phases {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ({:.1}%)</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} ms</td></tr>",
            esc(&p.name),
            p.sent,
            p.confirmed,
            p.delivered,
            p.delivered_fraction * 100.0,
            p.failed,
            p.lost,
            p.received,
            p.p99_ms
        );
    }
    html.push_str("</table>");
    if !f.recoveries.is_empty() {
        html.push_str("<h2>Fault windows</h2><table><tr><th>fault</th><th>from</th><th>healed</th><th>recovery</th></tr>");
        for rc in &f.recoveries {
            let rec = match (&rc.note, rc.recovery) {
                (Some(n), _) => esc(n),
                (None, Some(d)) => format!("{:.1} s", d.as_secs_f64()),
                (None, None) => "never".into(),
            };
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{:.1} s</td><td>{}</td><td>{rec}</td></tr>",
                esc(&rc.fault),
                rc.started_at_s,
                rc.healed_at_s
                    .map_or("-".to_string(), |h| format!("{h:.1} s"))
            );
        }
        html.push_str("</table>");
    }
    if !r.injections.is_empty() {
        html.push_str("<h2>Injected</h2><table><tr><th>rule: fault@point</th><th>count</th></tr>");
        for (k, v) in &r.injections {
            let _ = write!(html, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
        }
        html.push_str("</table>");
    }
    html.push_str("<h2>Counts</h2><table>");
    for (k, v) in [
        ("sent", f.sent),
        ("confirmed", f.confirmed),
        ("failed at producer", f.failed),
        ("lost", f.lost),
        ("unconfirmed but delivered", f.unconfirmed_delivered),
        ("deliveries", f.deliveries),
        ("redeliveries before ack", f.redeliveries),
        ("duplicates (after ack)", f.duplicates),
        ("redelivered after ack", f.redelivered_after_ack),
        ("stored twice", f.stored_twice),
        ("delivered twice (one attempt)", f.delivered_twice),
        ("reorders", f.reorders),
        ("corrupt", f.corrupt),
        ("two holders", f.two_holders),
        ("acks refused", f.acks_refused),
        ("unaccounted (neither confirmed nor failed)", f.unaccounted),
        ("rejected (poison)", f.rejected),
        ("in the dead-letter queue", f.dead_lettered),
        ("dead-letter misses", f.dlq_missing),
        ("dead-letter extra copies", f.dlq_duplicates),
    ] {
        let _ = write!(html, "<tr><td>{k}</td><td>{v}</td></tr>");
    }
    let _ = write!(
        html,
        "</table><p>End-to-end latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms ({} samples). Publish confirm: p50 {:.1} ms, p99 {:.1} ms.</p>",
        f.end_to_end.p50_ms,
        f.end_to_end.p90_ms,
        f.end_to_end.p99_ms,
        f.end_to_end.p999_ms,
        f.end_to_end.max_ms,
        f.end_to_end.count,
        f.publish.p50_ms,
        f.publish.p99_ms
    );
    html.push_str("</body></html>\n");
    html
}
