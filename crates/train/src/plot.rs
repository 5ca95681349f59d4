//! The loss curve of a run as SVG and PNG (plotters): training loss per step and
//! validation loss at each evaluation, redrawn at every checkpoint from `metrics.jsonl`.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::trainer::StepMetrics;

/// Fonts tried for the labels, in order (plotters draws text with a font it is given).
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers the first font found; false when there is none (curves are then drawn
/// without text).
fn register_font() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        FONTS.iter().any(|path| {
            std::fs::read(path).is_ok_and(|bytes| {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

/// Writes `loss.svg` and `loss.png` into `dir` for `metrics`.
pub fn plot_losses(metrics: &[StepMetrics], dir: &Path) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let text = register_font();
    let svg = dir.join("loss.svg");
    draw(
        SVGBackend::new(&svg, (900, 540)).into_drawing_area(),
        metrics,
        text,
    )
    .map_err(|e| plot_error(&svg, e))?;
    let png = dir.join("loss.png");
    draw(
        BitMapBackend::new(&png, (900, 540)).into_drawing_area(),
        metrics,
        text,
    )
    .map_err(|e| plot_error(&png, e))?;
    Ok(())
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid {
        file: path.display().to_string(),
        msg: format!("drawing the loss curve: {e}"),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    metrics: &[StepMetrics],
    text: bool,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let train: Vec<(f64, f64)> = metrics.iter().map(|m| (m.step as f64, m.loss)).collect();
    let val: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.val_loss.map(|v| (m.step as f64, v)))
        .collect();
    let last_step = metrics.last().map_or(1, |m| m.step).max(1) as f64;
    let finite = train
        .iter()
        .chain(&val)
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if text {
        builder
            .caption("Loss (nats per token)", ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(56);
    }
    let mut chart = builder.build_cartesian_2d(0.0..last_step, (lo - pad)..(hi + pad))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("optimizer step").y_desc("loss");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    chart
        .draw_series(LineSeries::new(train, &BLUE))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(val.clone(), &RED))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()
}

/// Writes `rewards.svg` and `rewards.png` into `dir`: per round of rejection sampling, the
/// held-out reward's mean, interquartile range (bar) and extremes (whiskers), and the mean
/// reward of all sampled and of the kept answers.
pub fn plot_rounds(rounds: &[crate::rejection::RoundSummary], dir: &Path) -> Result<()> {
    if rounds.is_empty() {
        return Ok(());
    }
    let text = register_font();
    let svg = dir.join("rewards.svg");
    draw_rounds(
        SVGBackend::new(&svg, (900, 540)).into_drawing_area(),
        rounds,
        text,
    )
    .map_err(|e| plot_error(&svg, e))?;
    let png = dir.join("rewards.png");
    draw_rounds(
        BitMapBackend::new(&png, (900, 540)).into_drawing_area(),
        rounds,
        text,
    )
    .map_err(|e| plot_error(&png, e))?;
    Ok(())
}

fn draw_rounds<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    rounds: &[crate::rejection::RoundSummary],
    text: bool,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let x = |r: &crate::rejection::RoundSummary| r.round as f64;
    let values = rounds.iter().flat_map(|r| {
        let h = &r.heldout.reward;
        [h.min, h.max]
            .into_iter()
            .chain(r.sampled.map(|d| d.mean))
            .chain(r.kept.map(|d| d.mean))
    });
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let last = rounds.last().map_or(1.0, x).max(1.0);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if text {
        builder
            .caption("Reward per round of rejection sampling", ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(56);
    }
    let mut chart = builder.build_cartesian_2d(-0.3..last + 0.3, (lo - pad)..(hi + pad))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("round (0: the starting model)")
            .y_desc("reward")
            .x_labels(rounds.len() + 1)
            .x_label_formatter(&|x| format!("{x:.0}"));
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    let blue = BLUE.mix(0.35);
    for r in rounds {
        let (c, h) = (x(r), &r.heldout.reward);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(c - 0.08, h.q25), (c + 0.08, h.q75)],
            blue.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(c, h.min), (c, h.max)],
            blue,
        )))?;
    }
    let held: Vec<(f64, f64)> = rounds
        .iter()
        .map(|r| (x(r), r.heldout.reward.mean))
        .collect();
    chart
        .draw_series(LineSeries::new(held.clone(), &BLUE))?
        .label("held-out answers: mean, quartiles, range")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart.draw_series(held.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))?;
    let sampled: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| r.sampled.map(|d| (x(r), d.mean)))
        .collect();
    let kept: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| r.kept.map(|d| (x(r), d.mean)))
        .collect();
    chart
        .draw_series(LineSeries::new(sampled.clone(), &GREEN))?
        .label("all K sampled answers (mean)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart.draw_series(sampled.iter().map(|&p| Circle::new(p, 3, GREEN.filled())))?;
    chart
        .draw_series(LineSeries::new(kept.clone(), &RED))?
        .label("kept (best of K) answers (mean)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.draw_series(kept.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_curves_without_a_font() {
        // As on a machine with none of FONTS: no text at all, but the curves.
        let dir =
            std::env::temp_dir().join(format!("ferrollama-plot-nofont-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = |step, loss| StepMetrics {
            step,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens_per_s: 1.0,
            tokens: step,
            val_loss: Some(loss),
            val_ppl: None,
        };
        let path = dir.join("nofont.svg");
        draw(
            SVGBackend::new(&path, (300, 200)).into_drawing_area(),
            &[m(1, 3.0), m(2, 2.0)],
            false,
        )
        .unwrap();
        let png = dir.join("nofont.png");
        draw(
            BitMapBackend::new(&png, (300, 200)).into_drawing_area(),
            &[m(1, 3.0), m(2, 2.0)],
            false,
        )
        .unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("polyline"));
    }

    #[test]
    fn writes_an_svg_and_a_png() {
        let dir = std::env::temp_dir().join(format!("ferrollama-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let metrics: Vec<StepMetrics> = (1..=50u64)
            .map(|step| StepMetrics {
                step,
                loss: 6.0 / (step as f64).sqrt(),
                lr: 1e-3,
                grad_norm: 1.0,
                tokens_per_s: 1000.0,
                tokens: step * 100,
                val_loss: (step % 10 == 0).then(|| 6.1 / (step as f64).sqrt()),
                val_ppl: None,
            })
            .collect();
        plot_losses(&metrics, &dir).unwrap();
        let svg = std::fs::read_to_string(dir.join("loss.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("polyline"), "{svg}");
        let png = std::fs::read(dir.join("loss.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
