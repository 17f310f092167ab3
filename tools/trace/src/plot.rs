//! `msh trace plot`: time × address heatmaps, binned (one bin per pixel, never drawn
//! point by point), read and write channels, empty address ranges collapsed and
//! labelled, allocations as labelled rectangles, a colour scale with its legend.
//!
//! Drawn with plotters, headless: PNG through its bitmap backend, SVG with the binned
//! raster embedded as one PNG image and the axes, labels and rectangles as vectors.
//! Text uses plotters' `ab_glyph` renderer with DejaVu Sans read at run time from
//! Debian's `fonts-dejavu-core` (no fontconfig, no freetype).
use crate::db;
use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use rusqlite::Connection;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `msh trace plot` options.
#[derive(Debug, Clone, clap::Args)]
pub struct PlotArgs {
    /// The trace database.
    pub db: PathBuf,
    /// The run to draw (default: the latest).
    #[arg(long, value_name = "NAME")]
    pub run: Option<String>,
    /// Only this time range since the run's start, e.g. `100ms..2s` (a bare number is ms).
    #[arg(long, value_name = "A..B")]
    pub time: Option<String>,
    /// Only this address range, e.g. `0x7f0000000000..0x7fffffffffff`.
    #[arg(long, value_name = "A..B")]
    pub address: Option<String>,
    /// Output: FILE.png or FILE.svg.
    #[arg(short = 'o', long = "output", value_name = "FILE.png|FILE.svg")]
    pub output: PathBuf,
    /// Width in pixels.
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(400..=8000))]
    pub width: u32,
    /// Height in pixels.
    #[arg(long, default_value_t = 800, value_parser = clap::value_parser!(u32).range(300..=8000))]
    pub height: u32,
}

/// Runs `msh trace plot`.
pub fn run(args: &PlotArgs) -> Result<()> {
    let format = match args.output.extension().and_then(|e| e.to_str()) {
        Some("png") => Format::Png,
        Some("svg") => Format::Svg,
        _ => bail!(
            "-o {}: the plot is written as .png or .svg",
            args.output.display()
        ),
    };
    let mut outputs = msh_files::Outputs::new(&[&args.db])?;
    let out = outputs.plan(&args.output, "-o")?;
    let conn = db::open(&args.db, false)?;
    let run = db::pick_run(&conn, args.run.as_deref())?;
    let view = View {
        time: args.time.as_deref().map(parse_time_range).transpose()?,
        address: args
            .address
            .as_deref()
            .map(parse_address_range)
            .transpose()?,
    };
    let data = load(&conn, &run, &view)?;
    let bytes = render(&data, format, (args.width, args.height))?;
    outputs.set(out, bytes);
    outputs.commit()
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PNG image.
    Png,
    /// SVG document.
    Svg,
}

/// Which part of a run to draw.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// ns since the run's start.
    pub time: Option<Range<u64>>,
    /// Addresses.
    pub address: Option<Range<u64>>,
}

fn parse_bound(text: &str, what: &str) -> Result<u64> {
    let text = text.trim();
    let (number, scale) = [("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9)]
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))
        .unwrap_or((text, 1e6));
    let value: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .with_context(|| format!("{what}: {text:?} is not a time (e.g. 250ms, 1.5s)"))?;
    Ok((value * scale) as u64)
}

/// Parses `A..B` as ns since the run's start (units ns, us, ms, s; bare numbers are ms).
pub fn parse_time_range(text: &str) -> Result<Range<u64>> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--time {text:?}: expected A..B"))?;
    let range = parse_bound(a, "--time")?..parse_bound(b, "--time")?;
    if range.is_empty() {
        bail!("--time {text:?}: the range is empty");
    }
    Ok(range)
}

/// Parses `A..B` as addresses (hex with 0x, or decimal).
pub fn parse_address_range(text: &str) -> Result<Range<u64>> {
    let parse = |s: &str| -> Result<u64> {
        let s = s.trim();
        let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        v.ok()
            .with_context(|| format!("--address: {s:?} is not an address"))
    };
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--address {text:?}: expected A..B"))?;
    let range = parse(a)?..parse(b)?;
    if range.is_empty() {
        bail!("--address {text:?}: the range is empty");
    }
    Ok(range)
}

/// What a heatmap shows.
#[derive(Debug, Clone, Default)]
pub struct PlotData {
    /// Title line.
    pub title: String,
    /// (time ns, address, is_write) of the accesses in view.
    pub accesses: Vec<(u64, u64, Option<bool>)>,
    /// Allocations in view with samples: (start, end, address, size, label).
    pub allocations: Vec<(u64, u64, u64, u64, String)>,
    /// The time range drawn.
    pub time: Range<u64>,
}

/// Reads what to draw from the database.
pub fn load(conn: &Connection, run: &db::RunInfo, view: &View) -> Result<PlotData> {
    let time = view.time.clone().unwrap_or(0..(run.wall_ns.max(1) as u64));
    let address = view.address.clone().unwrap_or(0..u64::MAX);
    let (a_lo, a_hi) = (
        address.start.min(i64::MAX as u64) as i64,
        address.end.min(i64::MAX as u64) as i64,
    );
    let mut stmt = conn.prepare(
        "SELECT time_ns, address, is_write FROM accesses
         WHERE run_id = ?1 AND time_ns >= ?2 AND time_ns < ?3 AND address >= ?4 AND address < ?5",
    )?;
    let accesses = stmt
        .query_map(
            rusqlite::params![run.id, time.start as i64, time.end as i64, a_lo, a_hi],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<bool>>(2)?,
                ))
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = conn.prepare(
        "SELECT a.start_ns, coalesce(a.end_ns, ?2), a.address, a.size, a.site, count(x.rowid) AS n
         FROM allocations a JOIN accesses x ON x.run_id = a.run_id AND x.allocation_id = a.id
         WHERE a.run_id = ?1 GROUP BY a.id ORDER BY n DESC LIMIT 12",
    )?;
    let allocations = stmt
        .query_map(rusqlite::params![run.id, run.wall_ns], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, String>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|a| {
            a.2 < address.end && a.2 + a.3 > address.start && a.0 < time.end && a.1 > time.start
        })
        .collect();
    Ok(PlotData {
        title: format!(
            "{} — {} — {} source, {} accesses",
            run.name,
            run.command,
            run.access_source,
            accesses.len()
        ),
        accesses,
        allocations,
        time,
    })
}

/// The address axis with empty ranges collapsed: segments of used addresses, each
/// given a share of the axis (proportional to its length, at least a minimum).
#[derive(Debug, Clone, PartialEq)]
pub struct AddressAxis {
    /// (first address, end address, axis start, axis end), axis in 0..1.
    pub segments: Vec<(u64, u64, f64, f64)>,
}

impl AddressAxis {
    /// Segments covering `spans`: gaps longer than an eighth of the used length (and
    /// at least 64 KiB) are collapsed.
    pub fn new(mut spans: Vec<(u64, u64)>) -> AddressAxis {
        spans.retain(|s| s.1 > s.0);
        spans.sort();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (lo, hi) in spans.iter().copied() {
            match merged.last_mut() {
                Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let used: u64 = merged.iter().map(|s| s.1 - s.0).sum();
        let threshold = (used / 8).max(64 << 10);
        let mut segments: Vec<(u64, u64)> = Vec::new();
        for (lo, hi) in merged {
            match segments.last_mut() {
                Some(last) if lo - last.1 <= threshold => last.1 = hi,
                _ => segments.push((lo, hi)),
            }
        }
        if segments.is_empty() {
            segments.push((0, 4096));
        }
        let total: u64 = segments.iter().map(|s| s.1 - s.0).sum();
        let weights: Vec<f64> = segments
            .iter()
            .map(|s| ((s.1 - s.0) as f64 / total as f64).max(0.08))
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut at = 0.0;
        let segments = segments
            .iter()
            .zip(weights)
            .map(|(s, w)| {
                let share = w / sum;
                let seg = (s.0, s.1, at, at + share);
                at += share;
                seg
            })
            .collect();
        AddressAxis { segments }
    }

    /// Where an address lies on the axis (0..1), if in a segment.
    pub fn position(&self, address: u64) -> Option<f64> {
        let i = self.segments.partition_point(|s| s.1 <= address);
        let (lo, hi, y0, y1) = *self.segments.get(i)?;
        (address >= lo).then(|| y0 + (address - lo) as f64 / (hi - lo) as f64 * (y1 - y0))
    }

    /// The address at an axis position.
    pub fn address_at(&self, y: f64) -> u64 {
        let s = self
            .segments
            .iter()
            .find(|s| y < s.3)
            .or(self.segments.last())
            .expect("at least one segment");
        let f = ((y - s.2) / (s.3 - s.2)).clamp(0.0, 1.0);
        s.0 + ((s.1 - s.0) as f64 * f) as u64
    }
}

fn font() -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let candidates = [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            ];
            let path = candidates
                .iter()
                .find(|p| Path::new(p).is_file())
                .ok_or("no DejaVuSans.ttf (install the Debian package fonts-dejavu-core)")?;
            let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path}: not a usable font"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("cannot draw text: {e}"))
}

/// Draws the heatmap as PNG or SVG bytes.
pub fn render(data: &PlotData, format: Format, size: (u32, u32)) -> Result<Vec<u8>> {
    font()?;
    match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw(&root, data).map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
                root.present()
                    .map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
            }
            Ok(svg.into_bytes())
        }
        Format::Png => {
            let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                draw(&root, data).map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
                root.present()
                    .map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
            }
            encode_png(&rgb, size)
        }
    }
}

/// PNG bytes of an RGB buffer, through plotters' SVG backend's encoder (no other
/// image crate needed): the data URI it embeds is the PNG.
fn encode_png(rgb: &[u8], size: (u32, u32)) -> Result<Vec<u8>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let image: BitMapElement<(i32, i32)> =
            BitMapElement::with_ref((0, 0), size, rgb).context("bitmap size mismatch")?;
        root.draw(&image)
            .map_err(|e| anyhow::anyhow!("cannot encode the PNG: {e}"))?;
        root.present()
            .map_err(|e| anyhow::anyhow!("cannot encode the PNG: {e}"))?;
    }
    let start = svg.find("base64,").context("no embedded PNG")? + "base64,".len();
    let end = start + svg[start..].find('"').context("no embedded PNG")?;
    base64_decode(&svg[start..end])
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c).context("bad base64")? << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Ok(out)
}

type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, data: &PlotData) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (main, legend) = root.split_horizontally(root.dim_in_pixel().0 - 110);
    let main = main.titled(&data.title, ("sans-serif", 16))?;
    let mut spans: Vec<(u64, u64)> = data.accesses.iter().map(|a| (a.1, a.1 + 64)).collect();
    spans.extend(data.allocations.iter().map(|a| (a.2, a.2 + a.3)));
    let axis = AddressAxis::new(spans);
    let has_rw = data.accesses.iter().any(|a| a.2 == Some(true))
        && data.accesses.iter().any(|a| a.2 == Some(false));
    let channels: Vec<(&str, Option<bool>)> = if has_rw {
        vec![("reads", Some(false)), ("writes", Some(true))]
    } else {
        vec![("accesses", None)]
    };
    let panels = main.split_evenly((channels.len(), 1));
    let mut max_count = 1;
    let mut rasters = Vec::new();
    for (panel, (name, channel)) in panels.iter().zip(&channels) {
        let t0 = data.time.start as f64 / 1e6;
        let t1 = data.time.end as f64 / 1e6;
        let mut chart = ChartBuilder::on(panel)
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(130)
            .caption(*name, ("sans-serif", 14))
            .build_cartesian_2d(t0..t1, 0f64..1f64)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("time since start (ms)")
            .y_labels(10)
            .y_label_formatter(&|y| format!("{:#x}", axis.address_at(*y)))
            .label_style(("sans-serif", 11))
            .draw()?;
        let (w, h) = chart.plotting_area().dim_in_pixel();
        let (w, h) = (w.max(1) as usize, h.max(1) as usize);
        let mut counts = vec![0u32; w * h];
        for &(t, a, is_write) in &data.accesses {
            if channel.is_some() && is_write != *channel {
                continue;
            }
            let Some(y) = axis.position(a) else { continue };
            let x = ((t - data.time.start.min(t)) as f64 / (data.time.end - data.time.start) as f64
                * w as f64) as usize;
            let row = ((1.0 - y) * h as f64) as usize;
            let cell = &mut counts[row.min(h - 1) * w + x.min(w - 1)];
            *cell += 1;
            max_count = max_count.max(*cell);
        }
        rasters.push((chart.plotting_area().clone(), counts, w, h, t0, t1));
        // Collapsed gaps: a line and the skipped length.
        for pair in axis.segments.windows(2) {
            let y = pair[0].3;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(t0, y), (t1, y)],
                BLACK.mix(0.5),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("… {} skipped …", human_bytes(pair[1].0 - pair[0].1)),
                (t0, y),
                ("sans-serif", 10).into_font().color(&BLACK.mix(0.7)),
            )))?;
        }
    }
    // The rasters share one colour scale, so they are drawn once its maximum is known.
    for (area, counts, w, h, _, _) in &rasters {
        let mut rgb = vec![255u8; w * h * 3];
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 {
                let RGBColor(r, g, b) = colour(c, max_count);
                rgb[3 * i..3 * i + 3].copy_from_slice(&[r, g, b]);
            }
        }
        let image: BitMapElement<(f64, f64)> = BitMapElement::with_owned_buffer(
            (area.get_x_range().start, 1.0),
            (*w as u32, *h as u32),
            rgb,
        )
        .ok_or("bitmap size mismatch")?;
        area.draw(&image)?;
    }
    // Allocations on top of the rasters.
    for (area, _, _, _, t0, t1) in &rasters {
        for (i, (start, end, address, size, site)) in data.allocations.iter().enumerate() {
            let (Some(y0), Some(y1)) = (axis.position(*address), axis.position(address + size - 1))
            else {
                continue;
            };
            let x0 = (*start as f64 / 1e6).max(*t0);
            let x1 = (*end as f64 / 1e6).min(*t1);
            let colour = Palette99::pick(i).to_rgba();
            area.draw(&Rectangle::new(
                [(x0, y0), (x1, y1)],
                colour.stroke_width(2),
            ))?;
            area.draw(&Text::new(
                format!("{site} ({})", human_bytes(*size)),
                (x0, y1),
                ("sans-serif", 11).into_font().color(&colour),
            ))?;
        }
    }
    draw_legend(&legend, max_count)?;
    Ok(())
}

/// Colour of a cell with `count` samples on a log scale up to `max`.
fn colour(count: u32, max: u32) -> RGBColor {
    let f = (count as f64).ln_1p() / (max as f64).ln_1p().max(1e-9);
    ViridisRGB::get_color_normalized(f.clamp(0.0, 1.0), 0.0, 1.0)
}

fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, max: u32) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    let (_, h) = area.dim_in_pixel();
    let (top, bottom) = (60i32, h as i32 - 60);
    area.draw(&Text::new(
        "samples/bin",
        (10, top - 30),
        ("sans-serif", 12),
    ))?;
    let steps = (bottom - top).max(1);
    for i in 0..steps {
        let f = 1.0 - i as f64 / steps as f64;
        let c = ViridisRGB::get_color_normalized(f, 0.0, 1.0);
        area.draw(&Rectangle::new(
            [(10, top + i), (35, top + i + 1)],
            c.filled(),
        ))?;
    }
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let count = ((max as f64).ln_1p() * f).exp_m1().round() as u64;
        let y = bottom - (f * steps as f64) as i32;
        area.draw(&Text::new(
            format!("{count}"),
            (40, y - 6),
            ("sans-serif", 11),
        ))?;
    }
    area.draw(&Text::new(
        "log scale",
        (10, bottom + 10),
        ("sans-serif", 11),
    ))?;
    Ok(())
}

/// 1.5 GiB, 64 KiB, 12 B.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_axis_collapses_gaps_and_round_trips() {
        let heap = (0x5555_0000_0000, 0x5555_0001_0000);
        let mmap = (0x7f00_0000_0000, 0x7f00_0200_0000);
        let axis = AddressAxis::new(vec![heap, mmap]);
        assert_eq!(axis.segments.len(), 2);
        let y_heap = axis.position(heap.0 + 0x8000).unwrap();
        let y_mmap = axis.position(mmap.0 + 0x100_0000).unwrap();
        assert!(y_heap < y_mmap);
        assert!(
            axis.segments[0].3 - axis.segments[0].2 >= 0.07,
            "a small segment stays visible"
        );
        assert_eq!(
            axis.position(0x6000_0000_0000),
            None,
            "a collapsed gap has no place"
        );
        let back = axis.address_at(y_mmap);
        assert!(back.abs_diff(mmap.0 + 0x100_0000) < 0x1000);
    }

    #[test]
    fn ranges_parse_with_units_and_refuse_nonsense() {
        assert_eq!(
            parse_time_range("100ms..2s").unwrap(),
            100_000_000..2_000_000_000
        );
        assert_eq!(parse_time_range("5..10").unwrap(), 5_000_000..10_000_000);
        assert!(parse_time_range("2s..1s").is_err());
        assert!(parse_time_range("abc").is_err());
        assert_eq!(
            parse_address_range("0x1000..0x2000").unwrap(),
            0x1000..0x2000
        );
        assert!(parse_address_range("0x2000..0x1000").is_err());
    }

    #[test]
    fn draws_png_and_svg() {
        let data = PlotData {
            title: "test".into(),
            accesses: (0..10_000u64)
                .map(|i| {
                    (
                        i * 1000,
                        0x7f00_0000_0000 + (i * 4096) % (1 << 24),
                        Some(i % 3 == 0),
                    )
                })
                .collect(),
            allocations: vec![(
                0,
                10_000_000,
                0x7f00_0000_0000,
                1 << 24,
                "main+0x10 (t)".into(),
            )],
            time: 0..10_000_000,
        };
        let png = render(&data, Format::Png, (800, 500)).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = String::from_utf8(render(&data, Format::Svg, (800, 500)).unwrap()).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains(";base64,iVBOR"),
            "the raster is an embedded PNG"
        );
        assert!(svg.contains("main+0x10 (t)"), "the allocation is labelled");
        assert!(svg.contains("reads") && svg.contains("writes"));
    }
}
