//! The report's figures, drawn with plotters: each figure is drawn once into an SVG string and
//! once into an RGB buffer that is encoded as PNG (through the `image` crate the library already
//! uses, so plotters needs no encoder of its own). Text is laid out and rasterised with a small
//! bundled font (DejaVu Sans, ASCII subset, see `FONT-LICENSE`), so no system fonts are needed.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::evaluate::Report;
use crate::error::{Error, Result};

/// DejaVu Sans reduced to ASCII and a few symbols (10 KB).
static FONT: &[u8] = include_bytes!("DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid font (checked by the tests); a failure would leave text undrawn.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Tableau-10: distinct, colour-blind-friendly series colours.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Colour of series `i`.
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One rendered figure.
#[derive(Clone, Debug)]
pub struct Figure {
    /// File stem: `fig/<name>.svg` and `fig/<name>.png`.
    pub name: String,
    pub title: String,
    pub svg: String,
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

type DrawResult = std::result::Result<(), String>;

/// Something drawable on any plotters backend.
trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Draws `d` into an SVG and a PNG of `size` pixels.
fn render(name: &str, title: &str, size: (u32, u32), d: &impl Draw) -> Result<Figure> {
    register_font();
    let fail = |m: String| Error::io(format!("fig/{name}"), std::io::Error::other(format!("drawing the figure failed: {m}")));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        d.draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        d.draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        let enc = image::codecs::png::PngEncoder::new_with_quality(
            &mut png,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::Adaptive,
        );
        enc.write_image(&rgb, size.0, size.1, image::ExtendedColorType::Rgb8).map_err(|e| fail(e.to_string()))?;
    }
    Ok(Figure { name: name.into(), title: title.into(), svg, png, width: size.0, height: size.1 })
}

/// A tick value without float noise: at most 4 decimals, trailing zeros dropped.
fn tidy(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// Labels of integer positions on an f64 axis; blank elsewhere.
fn index_label(names: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 1e-6 || i < 0.0 || i as usize >= names.len() {
        return String::new();
    }
    names[i as usize].clone()
}

// ---------------------------------------------------------------- (a) k-NN bars

struct KnnBars {
    title: String,
    methods: Vec<String>,
    /// (legend, colour index, value in % per method; None = missing)
    groups: Vec<(String, Vec<Option<f64>>)>,
}

impl Draw for KnnBars {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        root.fill(&WHITE).map_err(err)?;
        let n = self.methods.len();
        let top = self.groups.iter().flat_map(|g| g.1.iter().flatten()).fold(0.0f64, |a, &b| a.max(b));
        // Headroom above the tallest bar keeps the legend (upper right) clear of the bars.
        let ymax = ((top / 10.0).ceil() * 10.0 + 20.0).max(10.0);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 2)
            .x_label_formatter(&|x| index_label(&self.methods, *x))
            .y_desc("top-1 accuracy (%)")
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .draw()
            .map_err(err)?;
        let g = self.groups.len().max(1) as f64;
        let width = 0.8 / g;
        for (gi, (label, values)) in self.groups.iter().enumerate() {
            let c = color(gi);
            let x0 = |i: usize| i as f64 - 0.4 + gi as f64 * width;
            chart
                .draw_series(values.iter().enumerate().filter_map(|(i, v)| {
                    v.map(|v| Rectangle::new([(x0(i) + 0.01, 0.0), (x0(i) + width - 0.01, v)], c.filled()))
                }))
                .map_err(err)?
                .label(label.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            chart
                .draw_series(values.iter().enumerate().filter_map(|(i, v)| {
                    v.map(|v| {
                        Text::new(
                            format!("{v:.1}"),
                            (x0(i) + width / 2.0, v),
                            (FAMILY, 11).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Center,
                                plotters::style::text_anchor::VPos::Bottom,
                            )),
                        )
                    })
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// (a) k-NN top-1 per method at the headline k, and at 200 (or the largest other k) beside it.
pub fn knn_figure(report: &Report) -> Result<Figure> {
    let c = &report.comparison;
    let k = c.config.headline_k;
    let second = if c.config.knn.ks.contains(&200) && k != 200 {
        Some(200)
    } else {
        c.config.knn.ks.iter().copied().filter(|&x| x != k).max()
    };
    let methods: Vec<String> = c.methods.iter().map(|m| m.name.clone()).collect();
    let col = |k: usize| c.methods.iter().map(|m| m.knn.at(k).map(|s| 100.0 * s.top1)).collect::<Vec<_>>();
    let mut groups = vec![(format!("k = {k}"), col(k))];
    if let Some(k2) = second {
        groups.push((format!("k = {k2}"), col(k2)));
    }
    let title = "k-NN top-1 accuracy per method".to_string();
    let w = (160 + 130 * methods.len() as u32).max(640);
    render("knn_top1", &title, (w, 460), &KnnBars { title: title.clone(), methods, groups })
}

// ---------------------------------------------------------------- (b) spectra

/// Smallest normalised singular value shown (float noise below it).
const SPECTRUM_FLOOR: f64 = 1e-5;

struct Lines {
    title: String,
    x_desc: String,
    y_desc: String,
    log_y: bool,
    /// (name, points)
    series: Vec<(String, Vec<(f64, f64)>)>,
    /// Horizontal reference lines: (name, y).
    hlines: Vec<(String, f64)>,
    /// Vertical reference lines: (name, x).
    vlines: Vec<(String, f64)>,
    /// Tick labels of integer x positions (a categorical x axis) when given.
    x_names: Option<Vec<String>>,
    /// Label only integer x positions (epochs).
    integer_x: bool,
}

impl Lines {
    fn ranges(&self) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
        let pts = || self.series.iter().flat_map(|s| s.1.iter());
        let (mut x0, mut x1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let ys = pts().map(|p| p.1).chain(self.hlines.iter().map(|h| h.1));
        let (mut y0, mut y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if self.x_names.is_some() {
            (x0, x1) = (x0 - 0.3, x1 + 0.3);
        }
        if x1 - x0 < 1e-12 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        if y0 > y1 {
            (y0, y1) = (0.0, 1.0);
        }
        let yr = if self.log_y { (y0.max(SPECTRUM_FLOOR) * 0.8)..(y1 * 1.25) } else {
            let pad = ((y1 - y0) * 0.08).max(1e-3);
            (y0 - pad)..(y1 + pad)
        };
        (x0..x1, yr)
    }

    fn body<'a, DB: DrawingBackend + 'a, X, Y>(&self, mut chart: ChartContext<'a, DB, Cartesian2d<X, Y>>) -> DrawResult
    where
        X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
        Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
    {
        let names = self.x_names.clone();
        let integer_x = self.integer_x;
        let fmt = move |x: &f64| match &names {
            Some(n) => index_label(n, *x),
            None if integer_x && (x - x.round()).abs() > 1e-9 => String::new(),
            None => tidy(*x),
        };
        let log_y = self.log_y;
        let yfmt = move |y: &f64| if log_y { format!("{y:.0e}") } else { tidy(*y) };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.x_desc.as_str())
            .y_desc(self.y_desc.as_str())
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .x_label_formatter(&fmt)
            .y_label_formatter(&yfmt);
        if let Some(n) = &self.x_names {
            mesh.x_labels(n.len() + 2);
        }
        mesh.draw().map_err(err)?;
        let (xr, yr) = (chart.x_range(), chart.y_range());
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let c = color(i);
            let style = c.stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
            if self.x_names.is_some() || pts.len() == 1 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
            }
        }
        for (i, (name, y)) in self.hlines.iter().enumerate() {
            let c = color(self.series.len() + i);
            chart
                .draw_series(DashedLineSeries::new(vec![(xr.start, *y), (xr.end, *y)], 8, 5, c.stroke_width(2)))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        for (name, x) in &self.vlines {
            chart
                .draw_series(DashedLineSeries::new(vec![(*x, yr.start), (*x, yr.end)], 4, 4, BLACK.mix(0.6).stroke_width(1)))
                .map_err(err)?
                .label(name.as_str())
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6).stroke_width(1)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

impl Draw for Lines {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        root.fill(&WHITE).map_err(err)?;
        let (xr, yr) = self.ranges();
        let mut b = ChartBuilder::on(root);
        b.caption(&self.title, (FAMILY, 20)).margin(12).x_label_area_size(45).y_label_area_size(65);
        if self.log_y {
            self.body(b.build_cartesian_2d(xr, yr.log_scale()).map_err(err)?)
        } else {
            self.body(b.build_cartesian_2d(xr, yr).map_err(err)?)
        }
    }
}

/// (b) Sorted singular values of every method's training matrix, divided by the largest (log y).
pub fn spectrum_figure(report: &Report) -> Result<Figure> {
    let rank_bound = report.comparison.methods.first().map(|m| m.knn.n_train).unwrap_or(usize::MAX);
    let series = report
        .diagnostics
        .methods
        .iter()
        .map(|m| {
            let s0 = m.singular_values.first().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
            // At most n_train values are non-zero (the rest is rounding noise), and values below
            // the floor are not drawn.
            let pts = m
                .singular_values
                .iter()
                .take(rank_bound)
                .enumerate()
                .map(|(i, s)| ((i + 1) as f64, s / s0))
                .take_while(|p| p.1 >= SPECTRUM_FLOOR)
                .collect();
            (m.method.clone(), pts)
        })
        .collect();
    let title = "Singular values of the training representations (normalised by the largest)".to_string();
    let lines = Lines {
        title: title.clone(),
        x_desc: "index (sorted)".into(),
        y_desc: "singular value / largest".into(),
        log_y: true,
        series,
        hlines: vec![],
        vlines: vec![],
        x_names: None,
        integer_x: true,
    };
    render("singular_values", &title, (900, 520), &lines)
}

// ---------------------------------------------------------------- (c) NN-similarity histograms

/// Bins per histogram.
const BINS: usize = 40;

struct Histograms {
    title: String,
    /// (method, values, median)
    panels: Vec<(String, Vec<f32>, f32)>,
}

impl Draw for Histograms {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(&self.title, (FAMILY, 20)).map_err(err)?;
        // One x range for every panel whose ratio is meaningful (positive median), from the
        // 1st to the 99th percentile so that a few outliers do not squeeze the rest into one
        // bin; a panel with a median <= 0 (centred representations: mean cosine near 0, the
        // ratio explodes either way) gets its own. Values beyond a range count in its end bins.
        let shared = self
            .panels
            .iter()
            .filter(|p| p.2 > 0.0)
            .map(|p| robust_range(&p.1))
            .fold((f64::MAX, f64::MIN), |a, b| (a.0.min(b.0), a.1.max(b.1)));
        let cols = 3.min(self.panels.len().max(1));
        let rows = self.panels.len().div_ceil(cols).max(1);
        let areas = root.split_evenly((rows, cols));
        for (i, ((name, vals, med), area)) in self.panels.iter().zip(areas.iter()).enumerate() {
            let meaningful = *med > 0.0;
            let (lo, hi) = tidy_range(if meaningful { shared } else { robust_range(vals) });
            let bw = (hi - lo) / BINS as f64;
            let mut counts = vec![0usize; BINS];
            for &v in vals.iter().filter(|v| v.is_finite()) {
                let b = (((v as f64 - lo) / bw) as usize).min(BINS - 1);
                counts[b] += 1;
            }
            let frac: Vec<f64> = counts.iter().map(|&c| c as f64 / vals.len().max(1) as f64).collect();
            let ymax = frac.iter().fold(0.0f64, |a, &b| a.max(b)) * 1.15 + 1e-9;
            let mut chart = ChartBuilder::on(area)
                .caption(
                    if meaningful { format!("{name}: median {med:.3}") } else { format!("{name}: median {med:.3} (mean cos ~ 0)") },
                    (FAMILY, 15),
                )
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(45)
                .build_cartesian_2d(lo..hi, 0f64..ymax)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_labels(5)
                .y_labels(4)
                .label_style((FAMILY, 11))
                .x_label_formatter(&|x| format!("{x:.2}"))
                .y_label_formatter(&|y| format!("{y:.2}"))
                .draw()
                .map_err(err)?;
            let c = color(i);
            chart
                .draw_series(frac.iter().enumerate().map(|(b, &f)| {
                    let x0 = lo + b as f64 * bw;
                    Rectangle::new([(x0, 0.0), (x0 + bw, f)], c.mix(0.75).filled())
                }))
                .map_err(err)?;
            let m = *med as f64;
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(m, 0.0), (m, ymax)], BLACK.stroke_width(2))))
                .map_err(err)?;
        }
        Ok(())
    }
}

/// The 1st and 99th percentiles of the finite values of `v`; (MAX, MIN) when there are none.
///
/// # Shapes
/// `v`: `[n]`.
fn robust_range(v: &[f32]) -> (f64, f64) {
    let mut s: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return (f64::MAX, f64::MIN);
    }
    s.sort_by(f32::total_cmp);
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize] as f64;
    (at(0.01), at(0.99))
}

/// A drawable range from `(lo, hi)`: widened when empty or a single point, (0, 1) when unset.
fn tidy_range((lo, hi): (f64, f64)) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 0.5, lo + 0.5)
    } else {
        (lo, hi)
    }
}

/// (c) Histograms of the normalised NN similarity (max/mean cosine) per method, median marked.
pub fn nn_similarity_figure(report: &Report) -> Result<Figure> {
    let panels: Vec<_> = report
        .diagnostics
        .methods
        .iter()
        .map(|m| (m.method.clone(), m.nn_similarity.clone(), m.nn_similarity_median))
        .collect();
    let title = "Normalised nearest-neighbour similarity (max / mean cosine) of test points".to_string();
    let rows = panels.len().div_ceil(3).max(1) as u32;
    render("nn_similarity", &title, (960, 40 + 250 * rows), &Histograms { title: title.clone(), panels })
}

// ---------------------------------------------------------------- (d) loss curves

/// (d) The fit loss per epoch and the test embedding loss per epoch (of ours and of every
/// variant), with the end of warm-up.
pub fn loss_figure(report: &Report) -> Result<Figure> {
    let c = &report.comparison;
    let mut series = Vec::new();
    if !c.fit_history.is_empty() {
        series.push(("fit (train)".to_string(), c.fit_history.iter().map(|e| ((e.epoch + 1) as f64, e.loss)).collect()));
    }
    if !c.embed_history.is_empty() {
        series.push(("embed (test)".to_string(), c.embed_history.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l)).collect()));
    }
    for v in &report.variants {
        if !v.fit_history.is_empty() {
            series.push((format!("{}: fit", v.name), v.fit_history.iter().map(|e| ((e.epoch + 1) as f64, e.loss)).collect()));
        }
        if !v.embed_history.is_empty() {
            series.push((format!("{}: embed", v.name), v.embed_history.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l)).collect()));
        }
    }
    let vlines = c
        .fit_history
        .iter()
        .find(|e| e.bank_learning)
        .filter(|e| e.epoch > 0)
        .map(|e| vec![("warm-up ends".to_string(), e.epoch as f64 + 0.5)])
        .unwrap_or_default();
    let title = "Loss (mean 1 - cos) per epoch".to_string();
    let lines = Lines {
        title: title.clone(),
        x_desc: "epoch".into(),
        y_desc: "loss".into(),
        log_y: false,
        series,
        hlines: vec![],
        vlines,
        x_names: None,
        integer_x: true,
    };
    render("loss", &title, (900, 460), &lines)
}

/// All four report figures, in page order.
pub fn report_figures(report: &Report) -> Result<Vec<Figure>> {
    Ok(vec![knn_figure(report)?, spectrum_figure(report)?, nn_similarity_figure(report)?, loss_figure(report)?])
}

/// The sweep plot: ours' top-1 (%) against the swept values (categorical x axis, in the order
/// given), the best baseline as a dashed horizontal line.
///
/// # Shapes
/// `values`, `ours`: one entry per run.
pub fn sweep_figure(param: &str, values: &[String], ours: &[f64], k: usize, baseline: Option<(&str, f64)>) -> Result<Figure> {
    let title = format!("ours: k-NN top-1 at k={k} against {param}");
    let lines = Lines {
        title: title.clone(),
        x_desc: param.into(),
        y_desc: format!("top-1 @{k} (%)"),
        log_y: false,
        series: vec![("ours".into(), ours.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect())],
        hlines: baseline.map(|(n, v)| vec![(format!("best baseline ({n})"), v)]).unwrap_or_default(),
        vlines: vec![],
        x_names: Some(values.to_vec()),
        integer_x: true,
    };
    render("sweep", &title, (800, 460), &lines)
}
