//! HTML for auditors: one self-contained page (inline CSS and SVG, no script to run, no
//! external URL) with a verdict banner, a timeline chart, per-app, replication and check
//! tables, the audit slice and how to verify the file.
//!
//! Every string from the model goes through [`esc`]. The report itself is also embedded
//! as JSON in `<script type="application/json" id="metrodr-report">` (with `<`, `>` and
//! `&` written as `\u003c` etc., so no operator string can close or confuse the element);
//! [`crate::sign::verify`] reads the id and status back from there.

use std::fmt::Write as _;

use super::Seal;
use super::text::step_result;
use crate::Report;
use crate::report::{AppResult, fmt_ms_as_s, fmt_s, iso_utc};

/// The opening tag of the embedded report JSON.
pub(crate) const REPORT_SCRIPT_OPEN: &str =
    r#"<script type="application/json" id="metrodr-report">"#;
/// The meta tag that carries the signature token in `content`.
pub(crate) const SIGNATURE_META_OPEN: &str = r#"<meta name="metrodr-signature" content=""#;

const STYLE: &str = r#"
:root { --ink:#1f2933; --muted:#52606d; --line:#d9e2ec; --soft:#f5f7fa;
  --ok:#2e7d32; --bad:#c62828; --run:#f9a825; --none:#9aa5b1; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 40px; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
.banner { display: flex; gap: 24px; align-items: center; padding: 18px 22px; border-radius: 8px;
  border: 1px solid var(--line); background: var(--soft); }
.verdict { font-size: 40px; font-weight: 800; letter-spacing: 2px; color: #fff; padding: 6px 22px;
  border-radius: 6px; }
.pass .verdict { background: var(--ok); } .fail .verdict { background: var(--bad); }
.banner p { margin: 0; color: var(--muted); }
dl.facts { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 6px 18px; margin: 18px 0 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.summary { margin-top: 4px !important; }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th { text-align: left; font-weight: 600; color: var(--muted); background: var(--soft); }
th, td { padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; overflow-wrap: break-word; }
th { white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; white-space: nowrap; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 700; color: #fff; }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); }
.badge.run { background: var(--run); color: var(--ink); } .badge.none { background: var(--none); }
.over { color: var(--bad); font-weight: 600; }
.small { font-size: 12px; color: var(--muted); }
.chart { border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
svg#timeline { width: 100%; height: auto; display: block; font-family: inherit; }
svg .axis { stroke: var(--line); } svg .tick { fill: var(--muted); font-size: 11px; }
svg .rowbg { fill: var(--soft); } svg .applabel { fill: var(--ink); font-size: 12px; font-weight: 600; }
svg .tierlabel { fill: var(--muted); font-size: 10px; }
svg .bar.ok { fill: var(--ok); } svg .bar.failed { fill: var(--bad); }
svg .bar.running { fill: var(--run); } svg .bar.none { fill: var(--none); }
svg .barlabel { fill: #fff; font-size: 11px; pointer-events: none; }
svg .barlabel.dark { fill: var(--ink); }
svg .endmark { stroke: var(--muted); stroke-dasharray: 4 3; }
.legend { margin-top: 6px; font-size: 12px; color: var(--muted); }
.legend span { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin: 0 4px -1px 12px; }
footer { margin-top: 36px; padding-top: 12px; border-top: 2px solid var(--line); color: var(--muted); font-size: 13px; }
footer code { overflow-wrap: anywhere; }
@page { margin: 14mm; }
@media print {
  body { font-size: 10.5pt; } main { max-width: none; padding: 0; }
  .banner, .verdict, .badge, svg, .legend span { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  tr, .chart, .banner { break-inside: avoid; } h2 { break-after: avoid; }
}
"#;

pub(crate) fn render(r: &Report, seal: Option<Seal<'_>>) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let verdict = r.verdict();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(seal) = seal {
        let _ = writeln!(o, "{SIGNATURE_META_OPEN}{}\">", seal.token);
    }
    let _ = writeln!(
        o,
        "<title>{verdict}: metrodr {} {} on {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>",
        esc(&r.kind),
        esc(&r.id),
        esc(&r.cluster)
    );
    header(&mut o, r);
    timeline(&mut o, r);
    apps_table(&mut o, r);
    replication_table(&mut o, r);
    checks_table(&mut o, r);
    audit(&mut o, r);
    footer(&mut o, r, seal);
    o.push_str("</main>\n");
    let _ = writeln!(o, "{REPORT_SCRIPT_OPEN}{}</script>", embedded_json(r));
    o.push_str("</body>\n</html>\n");
    o
}

fn header(o: &mut String, r: &Report) {
    let class = if r.passed() { "pass" } else { "fail" };
    let ended = r.ended_ms.map_or_else(|| "not ended".to_owned(), iso_utc);
    let duration = r.ended_ms.map_or_else(
        || "-".to_owned(),
        |e| fmt_ms_as_s(e.saturating_sub(r.started_ms)),
    );
    let _ = writeln!(
        o,
        "<header class=\"banner {class}\">\n<div class=\"verdict\">{}</div>\n<div>\
         <h1>{} {}</h1><p>cluster <strong>{}</strong> · status <strong>{}</strong> · \
         target site <strong>{}</strong></p><p class=\"summary\">{}</p></div>\n</header>",
        r.verdict(),
        esc(&kind_title(&r.kind)),
        esc(&r.id),
        esc(&r.cluster),
        esc(&r.status),
        esc(&r.target_site),
        summary(r)
    );
    let facts = [
        ("Cluster", esc(&r.cluster)),
        ("Operation", format!("{} ({})", esc(&r.id), esc(&r.kind))),
        ("Status", esc(&r.status)),
        ("Started by", esc(&r.started_by)),
        ("Started (UTC)", iso_utc(r.started_ms)),
        ("Ended (UTC)", ended),
        ("Duration", duration),
        ("metrodr version", esc(&r.metrodr_version)),
        ("Target site", esc(&r.target_site)),
        ("Note", esc(&r.note)),
    ];
    o.push_str("<dl class=\"facts\">\n");
    for (k, v) in facts {
        let _ = writeln!(o, "<dt>{k}</dt><dd>{v}</dd>");
    }
    o.push_str("</dl>\n");
}

/// Why the verdict is what it is, in one line: `3 apps: 2 passed, 1 failed · 2 checks: all passed`.
fn summary(r: &Report) -> String {
    let count = |total: usize, failed: usize, what: &str| match (total, failed) {
        (0, _) => format!("no {what}s"),
        (t, 0) => format!("{t} {what}{}: all passed", if t == 1 { "" } else { "s" }),
        (t, f) => format!(
            "{t} {what}{}: {} passed, {f} failed",
            if t == 1 { "" } else { "s" },
            t - f
        ),
    };
    let apps_failed = r.apps.iter().filter(|a| !a.passed).count();
    let checks_failed = r.checks.iter().filter(|c| !c.passed).count();
    format!(
        "{} · {}",
        count(r.apps.len(), apps_failed, "app"),
        count(r.checks.len(), checks_failed, "check")
    )
}

fn kind_title(kind: &str) -> String {
    match kind {
        "test-drill" => "Test drill".into(),
        "switchover-drill" => "Switchover drill".into(),
        "site-loss-drill" => "Site-loss drill".into(),
        "failover" => "Failover".into(),
        "switchover" => "Switchover".into(),
        "failback" => "Failback".into(),
        other => other.into(),
    }
}

// Timeline geometry, in SVG user units (the chart scales to the page width).
const W: f64 = 1000.0;
const PLOT_X0: f64 = 180.0;
const PLOT_X1: f64 = 985.0;
const BAR_H: f64 = 18.0;
const LANE_GAP: f64 = 4.0;
const ROW_PAD: f64 = 8.0;
const TOP: f64 = 8.0;
const AXIS_H: f64 = 28.0;
/// Rough width of one character of an 11px bar label, to decide whether it fits.
const LABEL_CHAR_W: f64 = 6.6;

fn timeline(o: &mut String, r: &Report) {
    o.push_str("<h2>Timeline</h2>\n<div class=\"chart\">\n");
    // The chart ends at the report's end or the last recorded instant; a step still
    // running is drawn up to there.
    let horizon = r
        .apps
        .iter()
        .flat_map(|a| &a.steps)
        .flat_map(|s| [Some(s.started_ms), s.ended_ms])
        .flatten()
        .chain(r.ended_ms)
        .max()
        .unwrap_or(r.started_ms);
    let span_ms = horizon.saturating_sub(r.started_ms).max(1000);
    let tick_s = tick_step_s(span_ms);
    let x = |ms: u64| {
        PLOT_X0 + (ms.saturating_sub(r.started_ms) as f64) * (PLOT_X1 - PLOT_X0) / span_ms as f64
    };

    let lanes: Vec<Vec<usize>> = r.apps.iter().map(|a| assign_lanes(a, horizon)).collect();
    let row_h =
        |n_lanes: usize| n_lanes.max(1) as f64 * (BAR_H + LANE_GAP) - LANE_GAP + 2.0 * ROW_PAD;
    let rows_h: f64 = lanes
        .iter()
        .map(|l| row_h(l.iter().max().map_or(1, |m| m + 1)))
        .sum();
    let height = TOP + rows_h.max(30.0) + AXIS_H;

    let _ = writeln!(
        o,
        "<svg id=\"timeline\" viewBox=\"0 0 {W} {height:.1}\" role=\"img\" \
         aria-label=\"Timeline of the steps of each application, in seconds since the operation started\">"
    );
    // Grid and axis first, so bars draw over them.
    let plot_bottom = TOP + rows_h.max(30.0);
    let mut t = 0u64;
    while t * 1000 <= span_ms {
        let tx = x(r.started_ms + t * 1000);
        let _ = writeln!(
            o,
            "<line class=\"axis\" x1=\"{tx:.1}\" y1=\"{TOP:.1}\" x2=\"{tx:.1}\" y2=\"{plot_bottom:.1}\"/>\
             <text class=\"tick\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t} s</text>",
            plot_bottom + 16.0
        );
        t += tick_s;
    }
    if let Some(end) = r.ended_ms {
        let ex = x(end);
        let _ = writeln!(
            o,
            "<line class=\"endmark\" x1=\"{ex:.1}\" y1=\"{TOP:.1}\" x2=\"{ex:.1}\" y2=\"{plot_bottom:.1}\">\
             <title>operation ended at +{}</title></line>",
            fmt_ms_as_s(end.saturating_sub(r.started_ms))
        );
    }

    let mut y = TOP;
    for (i, (a, lanes)) in r.apps.iter().zip(&lanes).enumerate() {
        let h = row_h(lanes.iter().max().map_or(1, |m| m + 1));
        if i % 2 == 0 {
            let _ = writeln!(
                o,
                "<rect class=\"rowbg\" x=\"0\" y=\"{y:.1}\" width=\"{W}\" height=\"{h:.1}\"/>"
            );
        }
        let _ = writeln!(
            o,
            "<g class=\"app\"><title>{}</title><text class=\"applabel\" x=\"8\" y=\"{:.1}\">{}</text>\
             <text class=\"tierlabel\" x=\"8\" y=\"{:.1}\">tier {} · {}</text></g>",
            esc(&a.app),
            y + h / 2.0 - 2.0,
            esc(&truncate(&a.app, 22)),
            y + h / 2.0 + 11.0,
            a.tier,
            if a.passed { "passed" } else { "FAILED" }
        );
        if a.steps.is_empty() {
            let _ = writeln!(
                o,
                "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\">no steps recorded</text>",
                PLOT_X0 + 4.0,
                y + h / 2.0 + 4.0
            );
        }
        for (s, lane) in a.steps.iter().zip(lanes) {
            let end = s.ended_ms.unwrap_or(horizon).max(s.started_ms);
            let bx = x(s.started_ms);
            // At least 2 units wide so an instant step still shows.
            let bw = (x(end) - bx).max(2.0);
            let by = y + ROW_PAD + *lane as f64 * (BAR_H + LANE_GAP);
            let result = step_result(s);
            let class = match result {
                "ok" => "ok",
                "FAILED" => "failed",
                "running" => "running",
                _ => "none",
            };
            let took = s.ended_ms.map_or_else(
                || "still running".to_owned(),
                |e| format!("took {}", fmt_ms_as_s(e.saturating_sub(s.started_ms))),
            );
            let detail = if s.detail.is_empty() {
                String::new()
            } else {
                format!(" — {}", esc(&s.detail))
            };
            let _ = write!(
                o,
                "<g class=\"step\"><title>{}: {result}, started +{}, {took}{detail}</title>\
                 <rect class=\"bar {class}\" x=\"{bx:.1}\" y=\"{by:.1}\" width=\"{bw:.1}\" height=\"{BAR_H:.1}\" rx=\"2\"/>",
                esc(&s.name),
                fmt_ms_as_s(s.started_ms.saturating_sub(r.started_ms)),
            );
            if s.name.chars().count() as f64 * LABEL_CHAR_W + 8.0 <= bw {
                let dark = if class == "running" { " dark" } else { "" };
                let _ = write!(
                    o,
                    "<text class=\"barlabel{dark}\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                    bx + 4.0,
                    by + BAR_H - 5.0,
                    esc(&s.name)
                );
            }
            o.push_str("</g>\n");
        }
        y += h;
    }
    let _ = writeln!(
        o,
        "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">seconds since start</text>",
        PLOT_X0 - 24.0,
        plot_bottom + 16.0
    );
    o.push_str(
        "</svg>\n<div class=\"legend\">Step result:\
        <span style=\"background:var(--ok)\"></span>ok\
        <span style=\"background:var(--bad)\"></span>failed\
        <span style=\"background:var(--run)\"></span>running\
        <span style=\"background:var(--none)\"></span>no result \
        · hover a bar for its step, timing and detail</div>\n</div>\n",
    );
}

/// A tick every 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, … so that at most ~10
/// labels fit on the axis.
fn tick_step_s(span_ms: u64) -> u64 {
    const NICE: [u64; 12] = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800];
    let span_s = span_ms.div_ceil(1000);
    NICE.iter()
        .copied()
        .find(|step| span_s / step <= 10)
        .unwrap_or_else(|| span_s.div_ceil(10).div_ceil(3600) * 3600)
}

/// Puts each step in the first lane where it does not overlap an earlier step, so that
/// steps running in parallel are all visible.
fn assign_lanes(a: &AppResult, horizon: u64) -> Vec<usize> {
    let mut lane_ends: Vec<u64> = Vec::new();
    a.steps
        .iter()
        .map(|s| {
            let end = s.ended_ms.unwrap_or(horizon).max(s.started_ms);
            match lane_ends.iter().position(|&e| e <= s.started_ms) {
                Some(i) => {
                    lane_ends[i] = end;
                    i
                }
                None => {
                    lane_ends.push(end);
                    lane_ends.len() - 1
                }
            }
        })
        .collect()
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max_chars - 1).collect();
        t.push('…');
        t
    }
}

fn badge(passed: bool) -> &'static str {
    if passed {
        "<span class=\"badge ok\">PASS</span>"
    } else {
        "<span class=\"badge bad\">FAIL</span>"
    }
}

fn apps_table(o: &mut String, r: &Report) {
    o.push_str(
        "<h2>Applications</h2>\n<table id=\"apps\">\n<thead><tr><th>App</th><th>Tier</th>\
         <th>Site before → after</th><th>RTO achieved / target</th><th>RPO evidence</th>\
         <th>Result</th><th>Reason</th></tr></thead>\n<tbody>\n",
    );
    for a in &r.apps {
        let rto = match a.rto_achieved_s {
            Some(v) if v > a.rto_target_s => {
                format!(
                    "<span class=\"over\">{}</span> / {}",
                    fmt_s(v),
                    fmt_s(a.rto_target_s)
                )
            }
            Some(v) => format!("{} / {}", fmt_s(v), fmt_s(a.rto_target_s)),
            None => format!("– / {}", fmt_s(a.rto_target_s)),
        };
        let _ = writeln!(
            o,
            "<tr><td><strong>{}</strong></td><td class=\"num\">{}</td><td>{} → {}</td>\
             <td class=\"num\">{rto}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a.app),
            a.tier,
            esc(&a.site_before),
            esc(&a.site_after),
            esc(&a.rpo),
            badge(a.passed),
            esc(&a.reason)
        );
    }
    if r.apps.is_empty() {
        o.push_str(
            "<tr><td colspan=\"7\" class=\"small\">no applications in this operation</td></tr>\n",
        );
    }
    o.push_str("</tbody>\n</table>\n");
}

fn replication_table(o: &mut String, r: &Report) {
    // Columns: before, during, after, then any other phase in order of first appearance;
    // rows: apps in order of first appearance (never a hash map's order).
    let mut phases: Vec<&str> = vec!["before", "during", "after"];
    let mut apps: Vec<&str> = Vec::new();
    for s in &r.replication {
        if !phases.contains(&s.phase.as_str()) {
            phases.push(&s.phase);
        }
        if !apps.contains(&s.app.as_str()) {
            apps.push(&s.app);
        }
    }
    o.push_str("<h2>Replication health</h2>\n<table id=\"replication\">\n<thead><tr><th>App</th>");
    for p in &phases {
        let _ = write!(o, "<th>{}</th>", esc(&capitalize(p)));
    }
    o.push_str("</tr></thead>\n<tbody>\n");
    for app in &apps {
        let _ = write!(o, "<tr><td><strong>{}</strong></td>", esc(app));
        for p in &phases {
            o.push_str("<td>");
            let mut any = false;
            for s in r
                .replication
                .iter()
                .filter(|s| s.app == *app && s.phase == *p)
            {
                any = true;
                let class = match s.link.as_str() {
                    "in-sync" => "ok",
                    "resyncing" => "run",
                    "down" => "bad",
                    _ => "none",
                };
                let bound = if s.within_bound {
                    "within bound"
                } else {
                    "<span class=\"over\">over bound</span>"
                };
                let _ = write!(
                    o,
                    "<div><span class=\"badge {class}\">{}</span> lag {} · {bound}",
                    esc(&s.link),
                    esc(&s.lag)
                );
                if !s.detail.is_empty() {
                    let _ = write!(o, "<div class=\"small\">{}</div>", esc(&s.detail));
                }
                o.push_str("</div>");
            }
            if !any {
                o.push_str("<span class=\"small\">not sampled</span>");
            }
            o.push_str("</td>");
        }
        o.push_str("</tr>\n");
    }
    if apps.is_empty() {
        let _ = writeln!(
            o,
            "<tr><td colspan=\"{}\" class=\"small\">no replication samples</td></tr>",
            phases.len() + 1
        );
    }
    o.push_str("</tbody>\n</table>\n");
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

fn checks_table(o: &mut String, r: &Report) {
    o.push_str(
        "<h2>Checks</h2>\n<table id=\"checks\">\n<thead><tr><th>Check</th><th>Result</th>\
         <th>Detail</th></tr></thead>\n<tbody>\n",
    );
    for c in &r.checks {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.name),
            badge(c.passed),
            esc(&c.detail)
        );
    }
    if r.checks.is_empty() {
        o.push_str("<tr><td colspan=\"3\" class=\"small\">no checks</td></tr>\n");
    }
    o.push_str("</tbody>\n</table>\n");
}

fn audit(o: &mut String, r: &Report) {
    let _ = writeln!(
        o,
        "<h2>Audit log slice</h2>\n<dl class=\"facts\" id=\"audit\">\
         <dt>Sequence range</dt><dd>{} – {}</dd><dt>Entries</dt><dd>{}</dd>\
         <dt>SHA-256 digest</dt><dd style=\"grid-column: span 3\"><code>{}</code></dd></dl>",
        r.audit.from_seq,
        r.audit.to_seq,
        r.audit.entries,
        esc(&r.audit.digest)
    );
}

fn footer(o: &mut String, r: &Report, seal: Option<Seal<'_>>) {
    o.push_str("<footer>\n");
    match seal {
        Some(seal) => {
            let _ = writeln!(
                o,
                "<p>This report is signed by the cluster's Ed25519 key. Verify it offline with \
                 <code>metrodr report verify FILE</code>; any change to the file, even one \
                 byte of whitespace, makes verification fail.</p>\n\
                 <p>Signing public key: <code>{}</code></p>",
                seal.public_key_hex
            );
        }
        None => o.push_str("<p>This copy is not signed and cannot be verified.</p>\n"),
    }
    let _ = writeln!(
        o,
        "<p>Generated by metrodr {}.</p>\n</footer>",
        esc(&r.metrodr_version)
    );
}

/// The report JSON for the embedded `<script>` block: `<`, `>` and `&` only ever occur
/// inside JSON strings, where `\u003c` etc. mean the same character, so the element's
/// content can never contain `</script`, `<!--` or a character reference.
fn embedded_json(r: &Report) -> String {
    super::json::compact(r)
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
