//! Side-by-side comparison of scored runs (say f32 against q4_k against 196 visual tokens):
//! a text table of every metric and a bar chart of each benchmark's headline metric.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use super::files::read_json;
use super::font::{advance, draw_text, line_height, text_width};
use super::score::ScoreReport;
use crate::{Error, Result};

/// One metric of one benchmark across the runs (`None` where a run lacks it).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub benchmark: String,
    pub metric: String,
    pub values: Vec<Option<f64>>,
    /// The benchmark's headline metric (its first).
    pub headline: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Run labels, in the order first seen.
    pub labels: Vec<String>,
    pub rows: Vec<Row>,
}

pub fn read_reports(paths: &[PathBuf]) -> Result<Vec<ScoreReport>> {
    paths.iter().map(|p| read_json(p)).collect()
}

impl Comparison {
    pub fn new(reports: &[ScoreReport]) -> Result<Self> {
        let mut labels: Vec<String> = Vec::new();
        for r in reports {
            if !labels.contains(&r.label) {
                labels.push(r.label.clone());
            }
        }
        let mut rows: Vec<Row> = Vec::new();
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for report in reports {
            if seen.contains(&(&report.benchmark, &report.label)) {
                return Err(Error::InvalidArgument(format!(
                    "two runs of {} are labelled `{}`; score them with distinct --label values",
                    report.benchmark, report.label
                )));
            }
            seen.push((&report.benchmark, &report.label));
            let column = labels.iter().position(|l| *l == report.label).unwrap_or(0);
            for (i, m) in report.metrics.iter().enumerate() {
                let row = match rows
                    .iter_mut()
                    .position(|r| r.benchmark == report.benchmark && r.metric == m.name)
                {
                    Some(at) => &mut rows[at],
                    None => {
                        rows.push(Row {
                            benchmark: report.benchmark.clone(),
                            metric: m.name.clone(),
                            values: vec![None; labels.len()],
                            headline: i == 0,
                        });
                        rows.last_mut().expect("just pushed")
                    }
                };
                row.values[column] = Some(m.value);
            }
        }
        // Keep each benchmark's rows together, benchmarks in the order first seen (stable).
        let mut order: Vec<String> = Vec::new();
        for r in &rows {
            if !order.contains(&r.benchmark) {
                order.push(r.benchmark.clone());
            }
        }
        rows.sort_by_key(|r| order.iter().position(|b| *b == r.benchmark));
        Ok(Self { labels, rows })
    }

    /// A fixed-width table: benchmark, metric, then one column per run.
    pub fn to_text(&self) -> String {
        let cell = |v: &Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        let bench_w = self
            .rows
            .iter()
            .map(|r| r.benchmark.len())
            .max()
            .unwrap_or(0)
            .max(9);
        let metric_w = self
            .rows
            .iter()
            .map(|r| r.metric.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let widths: Vec<usize> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                self.rows
                    .iter()
                    .map(|r| cell(&r.values[i]).len())
                    .chain([l.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = format!("{:<bench_w$}  {:<metric_w$}", "benchmark", "metric");
        for (label, w) in self.labels.iter().zip(&widths) {
            text.push_str(&format!("  {label:>w$}"));
        }
        text.push('\n');
        for row in &self.rows {
            text.push_str(&format!(
                "{:<bench_w$}  {:<metric_w$}",
                row.benchmark, row.metric
            ));
            for (v, w) in row.values.iter().zip(&widths) {
                text.push_str(&format!("  {:>w$}", cell(v)));
            }
            text.push('\n');
        }
        text
    }

    /// One panel per benchmark with a bar per run for its headline metric, and a legend.
    pub fn chart(&self) -> RgbImage {
        const PANEL_H: u32 = 300;
        const PLOT_TOP: u32 = 70;
        const PLOT_H: u32 = 190;
        const BAR_W: u32 = 36;
        const GAP: u32 = 14;
        const MARGIN: u32 = 16;
        const LEGEND_ROW: u32 = 24;
        let headlines: Vec<&Row> = self.rows.iter().filter(|r| r.headline).collect();
        let panel_w = (self.labels.len() as u32 * (BAR_W + GAP) + 2 * MARGIN).max(240);
        let legend_w = self
            .labels
            .iter()
            .map(|l| text_width(l, 2) + 40)
            .max()
            .unwrap_or(0);
        let width = (headlines.len() as u32 * panel_w).max(legend_w + 2 * MARGIN);
        let height = PANEL_H + self.labels.len() as u32 * LEGEND_ROW + MARGIN;
        let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
        let ink = Rgb([30, 30, 30]);
        for (p, row) in headlines.iter().enumerate() {
            let left = p as u32 * panel_w;
            let fit = |text: &str, scale: u32| -> String {
                let room = ((panel_w - 2 * MARGIN) / advance(scale)) as usize;
                text.chars().take(room).collect()
            };
            draw_text(
                &mut image,
                left + MARGIN,
                MARGIN,
                &fit(&row.benchmark, 3),
                3,
                ink,
            );
            draw_text(
                &mut image,
                left + MARGIN,
                MARGIN + line_height(3) + 8,
                &fit(&row.metric, 2),
                2,
                ink,
            );
            let max = row.values.iter().flatten().fold(0.0f64, |m, v| m.max(*v));
            let baseline = PLOT_TOP + PLOT_H;
            for x in left + MARGIN..left + panel_w - MARGIN {
                image.put_pixel(x, baseline, ink);
            }
            for (i, value) in row.values.iter().enumerate() {
                let Some(value) = value else { continue };
                let bar_h = if max > 0.0 {
                    ((value / max) * f64::from(PLOT_H - 20)).round() as u32
                } else {
                    0
                };
                let x0 = left + MARGIN + GAP / 2 + i as u32 * (BAR_W + GAP);
                for y in baseline - bar_h..baseline {
                    for x in x0..x0 + BAR_W {
                        image.put_pixel(x, y, color(i));
                    }
                }
                let label = format!("{value:.1}");
                let text_x = (x0 + BAR_W / 2).saturating_sub(text_width(&label, 1) / 2);
                draw_text(&mut image, text_x, baseline - bar_h - 10, &label, 1, ink);
            }
        }
        for (i, label) in self.labels.iter().enumerate() {
            let y = PANEL_H + i as u32 * LEGEND_ROW;
            for dy in 0..14 {
                for dx in 0..24 {
                    image.put_pixel(MARGIN + dx, y + dy, color(i));
                }
            }
            draw_text(&mut image, MARGIN + 32, y, label, 2, ink);
        }
        image
    }

    pub fn write_chart(&self, path: &Path, overwrite: imp::files::Overwrite) -> Result<()> {
        let mut png = std::io::Cursor::new(Vec::new());
        self.chart()
            .write_to(&mut png, image::ImageFormat::Png)
            .map_err(|e| Error::image(path.display().to_string(), e.to_string()))?;
        Ok(imp::files::write(path, png.get_ref(), overwrite)?)
    }
}

fn color(i: usize) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; 8] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
    ];
    Rgb(PALETTE[i % PALETTE.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::score::Metric;

    fn report(benchmark: &str, label: &str, metrics: &[(&str, f64)]) -> ScoreReport {
        ScoreReport {
            benchmark: benchmark.into(),
            label: label.into(),
            answers: PathBuf::from("a.jsonl"),
            metrics: metrics
                .iter()
                .map(|(n, v)| Metric {
                    name: (*n).into(),
                    value: *v,
                })
                .collect(),
            details: serde_json::Value::Null,
            submission: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn table_lines_up_runs_side_by_side() {
        let reports = [
            report(
                "pope",
                "f32",
                &[("F1 (avg)", 85.95), ("accuracy (avg)", 86.98)],
            ),
            report("scienceqa", "f32", &[("IMG accuracy", 71.64)]),
            report("pope", "q4_k", &[("F1 (avg)", 84.5)]),
        ];
        let c = Comparison::new(&reports).unwrap();
        assert_eq!(c.labels, vec!["f32", "q4_k"]);
        let text = c.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].starts_with("pope")
                && lines[1].contains("85.95")
                && lines[1].ends_with("84.50")
        );
        assert!(
            lines[2].contains("accuracy (avg)") && lines[2].ends_with('-'),
            "{text}"
        );
        assert!(lines[3].starts_with("scienceqa"), "{text}");
        let dup = [report("pope", "f32", &[]), report("pope", "f32", &[])];
        assert!(Comparison::new(&dup).is_err());
    }

    #[test]
    fn chart_draws_a_bar_per_run() {
        let reports = [
            report("pope", "f32", &[("F1 (avg)", 80.0)]),
            report("pope", "q4_k", &[("F1 (avg)", 40.0)]),
            report("mme", "f32", &[("perception", 1500.0)]),
        ];
        let image = Comparison::new(&reports).unwrap().chart();
        assert_eq!(image.width(), 480);
        // First panel: the f32 bar is twice as tall as the q4_k bar, both above the baseline.
        let column_height = |x: u32, c: Rgb<u8>| {
            (0..image.height())
                .filter(|&y| *image.get_pixel(x, y) == c)
                .count()
        };
        let first = 16 + 7 + 18;
        let second = first + 50;
        assert_eq!(column_height(first, color(0)), 170);
        assert_eq!(column_height(second, color(1)), 85);
    }
}
