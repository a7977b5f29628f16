//! `loss.svg`: the loss per optimizer step as a line, readable in any browser.

use std::fmt::Write;

/// An SVG line chart of `losses` (step i+1 at x), with the first and last values labelled.
pub fn loss_svg(losses: &[f64]) -> String {
    let (width, height, margin) = (640.0, 320.0, 48.0);
    let finite: Vec<f64> = losses.iter().copied().filter(|l| l.is_finite()).collect();
    let low = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let high = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if high > low { high - low } else { 1.0 };
    let steps = losses.len().max(2) - 1;
    let x = |i: usize| margin + (width - 2.0 * margin) * i as f64 / steps as f64;
    let y = |loss: f64| height - margin - (height - 2.0 * margin) * (loss - low) / span;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{margin}\" y=\"20\">training loss per step ({} steps)</text>\n\
         <line x1=\"{margin}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\n\
         <line x1=\"{margin}\" y1=\"{margin}\" x2=\"{margin}\" y2=\"{b}\" stroke=\"#888\"/>\n",
        losses.len(),
        b = height - margin,
        r = width - margin,
    );
    let points: Vec<String> = losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(i, &l)| format!("{:.1},{:.1}", x(i), y(l)))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
    if !finite.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"4\" y=\"{:.1}\">{high:.3}</text>\n<text x=\"4\" y=\"{:.1}\">{low:.3}</text>",
            y(high) + 4.0,
            y(low) + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
