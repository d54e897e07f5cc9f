//! `quarry report`: a self-contained HTML page (inline SVG charts, inline
//! CSS, nothing fetched from the network) and the same charts as SVG files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use quarry_core::{Error, Result, RunStatus};
use quarry_proto::{RunRecord, TopUser, WeeklyTotal};

/// What the report shows, as read from the warehouse.
pub struct ReportData {
    pub weekly: Vec<WeeklyTotal>,
    /// Client type of the top-users lists.
    pub top_client_type: String,
    pub top_by_volume: Vec<TopUser>,
    pub top_by_pnl: Vec<TopUser>,
    /// Recent runs, newest first.
    pub runs: Vec<RunRecord>,
}

pub struct Chart {
    /// File name under `charts/`.
    pub file: &'static str,
    pub title: String,
    pub svg: String,
}

const CLIENT_COLORS: [(&str, RGBColor); 3] = [
    ("gold", RGBColor(212, 160, 23)),
    ("silver", RGBColor(120, 130, 140)),
    ("bronze", RGBColor(176, 101, 45)),
];
const BAR: RGBColor = RGBColor(52, 101, 164);
const FAILED: RGBColor = RGBColor(204, 0, 0);
const SIZE: (u32, u32) = (760, 340);

fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("cannot draw chart: {e}"))
}

fn num(text: &str) -> f64 {
    text.parse().unwrap_or(0.0)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// An SVG document of one chart: a white page that `draw` fills.
fn svg_chart(draw: impl FnOnce(&Area<'_>) -> Result<()>) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// The common frame: title, margin, label areas of the given sizes.
fn frame<'a, 'b>(
    root: &'a Area<'b>,
    title: &str,
    x_labels: u32,
    y_labels: u32,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(root);
    b.caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(x_labels)
        .y_label_area_size(y_labels);
    b
}

/// One line per client type over the weeks.
fn weekly_chart(title: &str, weekly: &[WeeklyTotal], pnl: bool) -> Result<String> {
    let weeks: Vec<&str> = {
        let mut w: Vec<&str> = weekly.iter().map(|t| t.week_start_date.as_str()).collect();
        w.dedup();
        w
    };
    let index: BTreeMap<&str, usize> = weeks.iter().enumerate().map(|(i, w)| (*w, i)).collect();
    let value = |t: &WeeklyTotal| num(if pnl { &t.total_pnl } else { &t.total_volume });
    let (lo, hi) = weekly
        .iter()
        .map(value)
        .fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = ((hi - lo) * 0.05).max(1.0);
    svg_chart(|root| {
        let mut chart = frame(root, title, 36, 90)
            .build_cartesian_2d(0..weeks.len().max(1), (lo - pad)..(hi + pad))
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|i| weeks.get(*i).map_or(String::new(), |w| w.to_string()))
            .y_label_formatter(&|v| human(*v))
            .y_desc(if pnl { "PnL" } else { "volume" })
            .draw()
            .map_err(draw_err)?;
        for (ct, color) in CLIENT_COLORS {
            let points: Vec<(usize, f64)> = weekly
                .iter()
                .filter(|t| t.client_type == ct)
                .map(|t| (index[t.week_start_date.as_str()], value(t)))
                .collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(draw_err)?
                .label(ct)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        Ok(())
    })
}

/// Vertical bars with a label under each.
fn bar_chart(title: &str, bars: &[(String, f64, RGBColor)], y_desc: &str) -> Result<String> {
    let hi = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1.0);
    let lo = bars.iter().map(|b| b.1).fold(0.0f64, f64::min);
    svg_chart(|root| {
        let n = bars.len().max(1);
        let mut chart = frame(root, title, 60, 90)
            .build_cartesian_2d(0.0..n as f64, lo.min(0.0)..hi * 1.1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                // Labels sit at the bar centres (i + 0.5).
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    bars.get(i as usize).map_or(String::new(), |b| b.0.clone())
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| human(*v))
            .y_desc(y_desc)
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v, color))| {
                let x = i as f64;
                Rectangle::new([(x + 0.15, 0.0), (x + 0.85, *v)], color.filled())
            }))
            .map_err(draw_err)?;
        Ok(())
    })
}

/// Lines of the share-valued checks over the recent runs, oldest first.
fn quality_trend(title: &str, runs: &[(String, serde_json::Value)]) -> Result<String> {
    let metrics: Vec<(String, Vec<(usize, f64)>)> = {
        let mut m: BTreeMap<String, Vec<(usize, f64)>> = BTreeMap::new();
        for (i, (_, q)) in runs.iter().enumerate() {
            for c in q["checks"].as_array().into_iter().flatten() {
                let metric = c["metric"].as_str().unwrap_or_default();
                if metric.ends_with("_share")
                    && let Some(v) = c["value"].as_f64()
                {
                    m.entry(metric.to_string()).or_default().push((i, v));
                }
            }
        }
        m.into_iter().collect()
    };
    let palette = [BAR, FAILED, RGBColor(78, 154, 6), RGBColor(117, 80, 123)];
    svg_chart(|root| {
        let mut chart = frame(root, title, 36, 60)
            .build_cartesian_2d(0..runs.len().max(1), 0.0..1.05)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_labels(runs.len().clamp(1, 10))
            .x_label_formatter(&|i| runs.get(*i).map_or(String::new(), |r| r.0.clone()))
            .y_desc("share of rows")
            .draw()
            .map_err(draw_err)?;
        for ((metric, points), color) in metrics.into_iter().zip(palette.iter().cycle()) {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(draw_err)?
                .label(metric)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        Ok(())
    })
}

/// 1.2M, 35.0k, 12.5: short axis labels.
fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// Escapes text for HTML element content and attribute values. Five
/// replacements: not worth a dependency.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `11-25 23:37` from a run's RFC 3339 start time: a short axis label.
fn run_label(r: &RunRecord) -> String {
    r.started_at
        .get(5..16)
        .unwrap_or(&r.started_at)
        .replace('T', " ")
}

fn quality_of(r: &RunRecord) -> serde_json::Value {
    serde_json::from_str(&r.quality_json).unwrap_or_default()
}

/// Draws every chart.
pub fn charts(data: &ReportData) -> Result<Vec<Chart>> {
    let oldest_first: Vec<&RunRecord> = data.runs.iter().rev().collect();
    let latest_done = data
        .runs
        .iter()
        .find(|r| !RunStatus::Running.is(&r.status))
        .map(quality_of)
        .unwrap_or_default();
    let reasons: Vec<(String, f64, RGBColor)> = latest_done["rejected_by_reason"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0), FAILED))
        .collect();
    let top = |users: &[TopUser]| -> Vec<(String, f64, RGBColor)> {
        users
            .iter()
            .map(|u| (u.user_id.clone(), num(&u.value), BAR))
            .collect()
    };
    let durations: Vec<(String, f64, RGBColor)> = oldest_first
        .iter()
        .map(|r| {
            let color = if RunStatus::Failed.is(&r.status) {
                FAILED
            } else {
                BAR
            };
            let ms = r.stats.unwrap_or_default().total_ms as f64;
            (run_label(r), ms / 1000.0, color)
        })
        .collect();
    let trend: Vec<(String, serde_json::Value)> = oldest_first
        .iter()
        .map(|r| (run_label(r), quality_of(r)))
        .collect();
    let ct = &data.top_client_type;
    let mut out = Vec::new();
    let mut add = |file, title: String, draw: &dyn Fn(&str) -> Result<String>| -> Result<()> {
        let svg = draw(&title)?;
        out.push(Chart { file, title, svg });
        Ok(())
    };
    add(
        "weekly_volume.svg",
        "Weekly volume by client type".into(),
        &|t| weekly_chart(t, &data.weekly, false),
    )?;
    add("weekly_pnl.svg", "Weekly PnL by client type".into(), &|t| {
        weekly_chart(t, &data.weekly, true)
    })?;
    add(
        "top_users_volume.svg",
        format!("Top {ct} users by volume"),
        &|t| bar_chart(t, &top(&data.top_by_volume), "volume"),
    )?;
    add(
        "top_users_pnl.svg",
        format!("Top {ct} users by PnL"),
        &|t| bar_chart(t, &top(&data.top_by_pnl), "PnL"),
    )?;
    add(
        "rejected_by_reason.svg",
        "Rejected rows by reason (latest finished run)".into(),
        &|t| bar_chart(t, &reasons, "rows"),
    )?;
    add(
        "quality_trend.svg",
        "Quality checks over recent runs".into(),
        &|t| quality_trend(t, &trend),
    )?;
    add(
        "run_durations.svg",
        "Run durations (red: failed)".into(),
        &|t| bar_chart(t, &durations, "seconds"),
    )?;
    Ok(out)
}

/// The page: summary of the latest runs, the checks, the charts inline.
pub fn html(data: &ReportData, charts: &[Chart], generated_at: &str) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <title>Quarry report</title><style>\
         body{{font-family:sans-serif;margin:24px;color:#222}}\
         table{{border-collapse:collapse;margin:8px 0 24px}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         .pass{{color:#2e7d32}}.warn{{color:#b26a00}}.fail{{color:#c62828}}.skipped{{color:#777}}\
         figure{{display:inline-block;margin:0 16px 24px 0}}\
         </style></head><body>\n<h1>Quarry report</h1>\n<p>Generated {}.</p>\n",
        esc(generated_at)
    );
    h.push_str("<h2>Recent runs</h2>\n<table><tr><th>run</th><th>started</th><th>status</th><th>rows in</th><th>valid</th><th>rejected</th><th>seconds</th><th>error</th></tr>\n");
    for r in data.runs.iter().take(20) {
        let s = r.stats.unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
            esc(&r.run_id),
            esc(&r.started_at),
            esc(&r.status),
            s.rows_in,
            s.rows_valid,
            s.rows_rejected,
            s.total_ms as f64 / 1000.0,
            esc(&if r.error_category.is_empty() {
                String::new()
            } else {
                format!("{}: {}", r.error_category, r.error_message)
            })
        );
    }
    h.push_str("</table>\n");
    if let Some(latest) = data.runs.iter().find(|r| !RunStatus::Running.is(&r.status)) {
        let _ = writeln!(
            h,
            "<h2>Quality checks of run {}</h2>\n<table><tr><th>check</th><th>metric</th><th>value</th><th>bound</th><th>severity</th><th>result</th><th>detail</th></tr>",
            esc(&latest.run_id)
        );
        for c in quality_of(latest)["checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let text = |k: &str| esc(c[k].as_str().unwrap_or_default());
            let outcome = text("outcome");
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td class=\"{outcome}\">{outcome}</td><td>{}</td></tr>",
                text("check"),
                text("metric"),
                c["value"]
                    .as_f64()
                    .map_or("n/a".into(), |v| format!("{v:.6}")),
                text("bound"),
                c["threshold"],
                text("severity"),
                text("detail"),
            );
        }
        h.push_str("</table>\n");
    }
    let _ = writeln!(
        h,
        "<h2>Top {} users</h2>\n<table><tr><th>by volume</th><th>volume</th><th>by PnL</th><th>PnL</th></tr>",
        esc(&data.top_client_type)
    );
    for i in 0..data.top_by_volume.len().max(data.top_by_pnl.len()) {
        let cell = |l: &[TopUser]| {
            l.get(i).map_or("<td></td><td></td>".to_string(), |u| {
                format!("<td>{}</td><td>{}</td>", esc(&u.user_id), esc(&u.value))
            })
        };
        let _ = writeln!(
            h,
            "<tr>{}{}</tr>",
            cell(&data.top_by_volume),
            cell(&data.top_by_pnl)
        );
    }
    h.push_str("</table>\n<h2>Charts</h2>\n");
    for c in charts {
        // The SVG document's own XML declaration is dropped when inlined.
        let svg = c.svg.trim_start_matches(|ch| ch != '<');
        let svg = match svg.strip_prefix("<?xml") {
            Some(rest) => rest.split_once("?>").map_or(svg, |(_, s)| s.trim_start()),
            None => svg,
        };
        let _ = writeln!(
            h,
            "<figure><figcaption>{}</figcaption>\n{svg}\n</figure>",
            esc(&c.title)
        );
    }
    h.push_str("</body></html>\n");
    h
}

/// Writes `report.html` and `charts/*.svg` under `dir`; returns the paths.
pub fn write(dir: &Path, data: &ReportData, generated_at: &str) -> Result<Vec<PathBuf>> {
    let charts = charts(data)?;
    let chart_dir = dir.join("charts");
    std::fs::create_dir_all(&chart_dir).map_err(|e| {
        Error::config(format!("cannot create {}: {e}", chart_dir.display())).with_source(e)
    })?;
    let mut written = vec![];
    for c in &charts {
        let path = chart_dir.join(c.file);
        crate::client::write_replacing(&path, c.svg.as_bytes())?;
        written.push(path);
    }
    let page = dir.join("report.html");
    crate::client::write_replacing(&page, html(data, &charts, generated_at).as_bytes())?;
    written.insert(0, page);
    Ok(written)
}
