//! Log-log plots of boot time against size: ours (both formats) against each baseline and
//! the floor, one plot per shape, as SVG and PNG.

use std::path::Path;

use plotters::prelude::*;

use crate::Report;
use crate::run::Row;

/// Shapes with at least two sizes (a line needs two points).
#[must_use]
pub fn shapes(rep: &Report) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in &rep.rows {
        if !v.contains(&r.shape) && rep.rows.iter().filter(|x| x.shape == r.shape).count() > 1 {
            v.push(r.shape.clone());
        }
    }
    v
}

type Series = (&'static str, RGBColor, fn(&Row) -> f64);

const SERIES: [Series; 6] = [
    ("ours kho-v4", RGBColor(0, 114, 178), |r| r.ours_v4.ms),
    ("ours kho-v1", RGBColor(86, 180, 233), |r| r.ours_v1.ms),
    ("Linux 7.3 model", RGBColor(213, 94, 0), |r| r.linux_7_3.ms),
    ("Linux 6.16 model", RGBColor(230, 159, 0), |r| r.linux_6_16.ms),
    ("floor: read metadata (v4)", RGBColor(0, 0, 0), |r| r.floor_scan_v4.ms),
    ("floor: read + 1 word/block", RGBColor(120, 120, 120), |r| r.floor_mark.ms),
];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    rows: &[&Row],
    title: &str,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let xs: Vec<f64> = rows.iter().map(|r| r.size as f64 / (1u64 << 30) as f64).collect();
    let ys: Vec<f64> = rows.iter().flat_map(|r| SERIES.iter().map(move |s| (s.2)(r))).filter(|v| *v > 0.0).collect();
    let (xmin, xmax) = (xs.iter().copied().fold(f64::MAX, f64::min), xs.iter().copied().fold(0.0, f64::max));
    let (ymin, ymax) = (ys.iter().copied().fold(f64::MAX, f64::min), ys.iter().copied().fold(0.0, f64::max));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), (ymin * 0.5..ymax * 2.0).log_scale())
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("preserved size (GiB; sparse shapes: address span)")
        .y_desc("time (ms)")
        .draw()
        .map_err(|x| e(&x))?;
    for (name, color, f) in SERIES {
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.size as f64 / (1u64 << 30) as f64, f(r).max(1e-6))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a system font for PNG text; false if none was found.
fn font() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Writes `boot-<shape>.svg` and `.png` for every shape with two or more sizes.
///
/// # Errors
/// Drawing or writing failed (a missing font only skips the PNGs).
pub fn all(rep: &Report, dir: &Path) -> Result<(), String> {
    let have_font = font();
    for shape in shapes(rep) {
        let rows: Vec<&Row> = rep.rows.iter().filter(|r| r.shape == shape).collect();
        let title = format!("validate + reserve: {shape}");
        let svg = dir.join(format!("boot-{shape}.svg"));
        draw(SVGBackend::new(&svg, (900, 600)).into_drawing_area(), &rows, &title)?;
        if have_font {
            let png = dir.join(format!("boot-{shape}.png"));
            draw(BitMapBackend::new(&png, (900, 600)).into_drawing_area(), &rows, &title)?;
        }
    }
    Ok(())
}
