//! `msh trace report`: one self-contained HTML file (nothing fetched: no network,
//! no external script, style or font).
//!
//! It holds the run's figures, the plotters heatmap as inline SVG, an interactive
//! heatmap on a canvas (drag to zoom on time and address, double-click to reset, or
//! type the ranges) drawn by inline JavaScript from up to [`MAX_POINTS`] accesses
//! embedded as JSON (a uniform subset when the run has more; the page says so), and
//! the table of allocation sites, sortable by any column.
use crate::db::{self, RunInfo, SiteSummary};
use crate::plot::{self, AddressAxis, Format, View};
use anyhow::Result;
use std::path::PathBuf;

/// Accesses embedded for the zoomable heatmap.
pub const MAX_POINTS: usize = 200_000;

/// `msh trace report` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The trace database.
    pub db: PathBuf,
    /// The run (default: the latest).
    #[arg(long, value_name = "NAME")]
    pub run: Option<String>,
    /// Output HTML file.
    #[arg(short = 'o', long = "output", value_name = "report.html")]
    pub output: PathBuf,
}

/// Runs `msh trace report`.
pub fn run(args: &ReportArgs) -> Result<()> {
    let mut outputs = msh_files::Outputs::new(&[&args.db])?;
    let out = outputs.plan(&args.output, "-o")?;
    let conn = db::open(&args.db, false)?;
    let run = db::pick_run(&conn, args.run.as_deref())?;
    let data = plot::load(&conn, &run, &View::default())?;
    let sites = db::site_summaries(&conn, run.id)?;
    outputs.set(out, html(&run, &data, &sites)?.into_bytes());
    outputs.commit()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JSON made safe inside a `<script>` element.
fn script_json(value: &serde_json::Value) -> String {
    value.to_string().replace("</", "<\\/")
}

/// The report's HTML.
pub fn html(run: &RunInfo, data: &plot::PlotData, sites: &[SiteSummary]) -> Result<String> {
    let svg = String::from_utf8(plot::render(data, Format::Svg, (1100, 700))?)?;
    let svg = svg.trim_start_matches(|c| c != '<').to_string();
    let svg = match svg.find("<svg") {
        Some(i) => svg[i..].to_string(),
        None => svg,
    };
    let mut spans: Vec<(u64, u64)> = data.accesses.iter().map(|a| (a.1, a.1 + 64)).collect();
    spans.extend(data.allocations.iter().map(|a| (a.2, a.2 + a.3)));
    let axis = AddressAxis::new(spans);
    let step = data.accesses.len().div_ceil(MAX_POINTS).max(1);
    let points: Vec<serde_json::Value> = data
        .accesses
        .iter()
        .step_by(step)
        .filter_map(|&(t, a, w)| {
            let y = axis.position(a)?;
            Some(serde_json::json!([
                t,
                (y * 1e6).round() / 1e6,
                match w {
                    Some(true) => 1,
                    Some(false) => 0,
                    None => 2,
                }
            ]))
        })
        .collect();
    let segments: Vec<serde_json::Value> = axis
        .segments
        .iter()
        .map(|s| serde_json::json!([format!("{:#x}", s.0), format!("{:#x}", s.1), s.2, s.3]))
        .collect();
    let heat = serde_json::json!({
        "t0": data.time.start, "t1": data.time.end,
        "points": points, "segments": segments,
        "subset": step > 1, "total": data.accesses.len(),
    });
    let mut rows = String::new();
    for s in sites {
        let opt = |v: Option<i64>| {
            v.map(|v| format!("{:.3}", v as f64 / 1e6))
                .unwrap_or_default()
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3e}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&s.site),
            s.allocations,
            s.bytes,
            s.samples,
            s.reads,
            s.writes,
            s.samples_per_byte_per_s,
            opt(s.first_touch_ns),
            opt(s.last_touch_ns),
            s.never_touched
        ));
    }
    Ok(format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>msh trace: {name}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
th {{ background: #eee; cursor: pointer; user-select: none; }}
#heat {{ border: 1px solid #999; cursor: crosshair; }}
.note {{ color: #666; font-size: 13px; }}
</style></head><body>
<h1>msh trace: {name}</h1>
<p><code>{command}</code> — started {started}, {exit}</p>
<p>Wall {wall:.3} s, user {user:.3} s, sys {sys:.3} s, max RSS {rss} KiB.
Access source <b>{source}</b>: {requested} samples requested, {recorded} recorded, {lost} lost.
{allocs} allocations.</p>
<p class="note">The accesses measure: {measures}</p>
<h2>Heatmap</h2>
<div>{svg}</div>
<h2>Zoom</h2>
<p>Drag on the map to zoom on time and address; double-click to reset.
Time (ms) <input id="ta" size="8"> .. <input id="tb" size="8">
Address <input id="aa" size="16"> .. <input id="ab" size="16">
<button id="go">show</button> <span id="what" class="note"></span></p>
<canvas id="heat" width="1000" height="400"></canvas>
<h2>Allocation sites</h2>
<p class="note">Click a column to sort. Samples per byte per second: samples in the site's
allocations ÷ (bytes × seconds alive). Times in ms since the run's start.</p>
<table id="sites"><thead><tr><th>site</th><th>allocations</th><th>bytes</th><th>samples</th>
<th>reads</th><th>writes</th><th>samples/B/s</th><th>first touch</th><th>last touch</th>
<th>never touched</th></tr></thead><tbody>
{rows}</tbody></table>
<script id="heat-data" type="application/json">{heat}</script>
<script>
"use strict";
const H = JSON.parse(document.getElementById("heat-data").textContent);
const canvas = document.getElementById("heat"), ctx = canvas.getContext("2d");
let view = {{t0: H.t0, t1: H.t1, y0: 0, y1: 1}};
function addrAt(y) {{
  for (const s of H.segments) if (y <= s[3]) {{
    const lo = BigInt(s[0]), hi = BigInt(s[1]);
    const f = Math.min(1, Math.max(0, (y - s[2]) / (s[3] - s[2])));
    return "0x" + (lo + BigInt(Math.floor(Number(hi - lo) * f))).toString(16);
  }}
  return "";
}}
function yOf(addr) {{
  const a = BigInt(addr);
  for (const s of H.segments) {{
    const lo = BigInt(s[0]), hi = BigInt(s[1]);
    if (a >= lo && a < hi) return s[2] + Number(a - lo) / Number(hi - lo) * (s[3] - s[2]);
  }}
  return null;
}}
function colour(f, write) {{
  const v = Math.round(255 * (1 - f));
  return write ? `rgb(255,${{v}},${{v}})` : `rgb(${{v}},${{v}},255)`;
}}
function draw() {{
  const W = canvas.width, h = canvas.height, bins = new Map();
  let max = 1;
  for (const [t, y, w] of H.points) {{
    if (t < view.t0 || t >= view.t1 || y < view.y0 || y >= view.y1) continue;
    const x = Math.floor((t - view.t0) / (view.t1 - view.t0) * W);
    const r = Math.floor((1 - (y - view.y0) / (view.y1 - view.y0)) * (h - 1));
    const k = (r * W + x) * 2 + (w === 1 ? 1 : 0);
    const n = (bins.get(k) || 0) + 1;
    bins.set(k, n); if (n > max) max = n;
  }}
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, h);
  for (const [k, n] of bins) {{
    const cell = k >> 1, x = cell % W, r = Math.floor(cell / W);
    ctx.fillStyle = colour(Math.log1p(n) / Math.log1p(max), k & 1);
    ctx.fillRect(x, r, 2, 2);
  }}
  document.getElementById("ta").value = (view.t0 / 1e6).toFixed(3);
  document.getElementById("tb").value = (view.t1 / 1e6).toFixed(3);
  document.getElementById("aa").value = addrAt(view.y0);
  document.getElementById("ab").value = addrAt(view.y1);
  document.getElementById("what").textContent = `${{bins.size}} bins; blue reads, red writes` +
    (H.subset ? ` (a uniform subset of the ${{H.total}} accesses)` : "");
}}
let drag = null;
canvas.addEventListener("mousedown", e => {{ drag = [e.offsetX, e.offsetY]; }});
canvas.addEventListener("mouseup", e => {{
  if (!drag) return;
  const [x0, y0] = drag; drag = null;
  if (Math.abs(e.offsetX - x0) < 4 || Math.abs(e.offsetY - y0) < 4) return;
  const tx = x => view.t0 + x / canvas.width * (view.t1 - view.t0);
  const ty = y => view.y0 + (1 - y / canvas.height) * (view.y1 - view.y0);
  view = {{t0: tx(Math.min(x0, e.offsetX)), t1: tx(Math.max(x0, e.offsetX)),
           y0: ty(Math.max(y0, e.offsetY)), y1: ty(Math.min(y0, e.offsetY))}};
  draw();
}});
canvas.addEventListener("dblclick", () => {{ view = {{t0: H.t0, t1: H.t1, y0: 0, y1: 1}}; draw(); }});
document.getElementById("go").addEventListener("click", () => {{
  const ta = parseFloat(document.getElementById("ta").value) * 1e6;
  const tb = parseFloat(document.getElementById("tb").value) * 1e6;
  const ya = yOf(document.getElementById("aa").value), yb = yOf(document.getElementById("ab").value);
  if (ta < tb) {{ view.t0 = ta; view.t1 = tb; }}
  if (ya !== null && yb !== null && ya < yb) {{ view.y0 = ya; view.y1 = yb; }}
  draw();
}});
function sortBy(col, descending) {{
  const body = document.querySelector("#sites tbody");
  const rows = Array.from(body.rows);
  const key = r => {{ const t = r.cells[col].textContent; const n = parseFloat(t);
                      return col === 0 || isNaN(n) ? t : n; }};
  rows.sort((a, b) => {{ const x = key(a), y = key(b);
                         const c = x < y ? -1 : x > y ? 1 : 0; return descending ? -c : c; }});
  for (const r of rows) body.appendChild(r);
  document.getElementById("sites").dataset.sorted = col + (descending ? " desc" : " asc");
}}
document.querySelectorAll("#sites th").forEach((th, col) => {{
  th.addEventListener("click", () => {{
    const now = document.getElementById("sites").dataset.sorted;
    sortBy(col, now !== col + " desc");
  }});
}});
sortBy(3, true);
draw();
</script></body></html>
"##,
        name = escape(&run.name),
        command = escape(&run.command),
        started = escape(&run.started_at),
        exit = escape(&run.exit),
        wall = run.wall_ns as f64 / 1e9,
        user = run.user_ns as f64 / 1e9,
        sys = run.sys_ns as f64 / 1e9,
        rss = run.max_rss_kib,
        source = escape(&run.access_source),
        requested = run.samples_requested,
        recorded = run.samples_recorded,
        lost = run.lost,
        allocs = run.allocations,
        measures = escape(&run.access_measures),
        svg = svg,
        rows = rows,
        heat = script_json(&heat),
    ))
}
