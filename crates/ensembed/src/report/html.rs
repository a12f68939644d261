//! The report's one self-contained HTML page: the comparison table (the rows of `compare`), the
//! recovery cosine, the diagnostics summary and every figure as inline SVG, so that the page can
//! be mailed or archived as a single file and opened without a server.

use super::evaluate::Report;
use super::figures::Figure;

/// `s` with the five XML special characters escaped.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or_else(|| "-".into())
}

fn row(cells: &[String], header: bool) -> String {
    let tag = if header { "th" } else { "td" };
    let mut s = String::from("<tr>");
    for c in cells {
        s += &format!("<{tag}>{}</{tag}>", escape(c));
    }
    s + "</tr>\n"
}

/// The comparison table: method, dim, top-1/top-5 at the headline k, top-1 at the other ks,
/// linear probe when present (the columns of `Comparison::table`).
fn comparison_table(r: &Report) -> String {
    let c = &r.comparison;
    let k = c.config.headline_k;
    let ks: Vec<usize> = c.config.knn.ks.iter().copied().filter(|&x| x != k).collect();
    let mut head = vec!["method".to_string(), "dim".into(), format!("top1@{k}"), format!("top5@{k}")];
    head.extend(ks.iter().map(|x| format!("top1@{x}")));
    if c.config.linear.is_some() {
        head.push("linear".into());
    }
    let mut s = String::from("<table>\n") + &row(&head, true);
    for m in &c.methods {
        let sc = m.knn.at(k);
        let mut cells = vec![m.name.clone(), m.dim.to_string(), pct(sc.map(|s| s.top1)), pct(sc.map(|s| s.top5))];
        cells.extend(ks.iter().map(|&x| pct(m.knn.at(x).map(|s| s.top1))));
        if c.config.linear.is_some() {
            cells.push(pct(m.linear.as_ref().map(|l| l.top1)));
        }
        s += &row(&cells, false).replacen("<tr>", if m.name.starts_with("ours") { "<tr class=\"ours\">" } else { "<tr>" }, 1);
    }
    for (name, why) in &c.skipped {
        s += &format!("<tr><td>{}</td><td colspan=\"{}\">skipped: {}</td></tr>\n", escape(name), head.len() - 1, escape(why));
    }
    s + "</table>\n"
}

/// One sentence per variant: what differs from `ours`.
fn variant_notes(r: &Report) -> String {
    r.variants
        .iter()
        .map(|v| {
            if v.transferred {
                format!("; {}: MLPs of a model fitted on another store, train and test embedded through them", v.name)
            } else if v.fit.nonneg {
                format!("; {}: the same fit with the representations kept non-negative", v.name)
            } else {
                format!("; {}: fitted here", v.name)
            }
        })
        .collect()
}

/// The page. `figures` are inlined in order; `json_name` is the sibling file with all numbers.
pub fn page(r: &Report, figures: &[Figure], json_name: &str) -> String {
    let c = &r.comparison;
    let d = &r.diagnostics;
    let summary = c.table().lines().last().filter(|l| l.starts_with("ours - best")).unwrap_or("").to_string();
    let mut rec = String::from("<table>\n") + &row(&["method".into(), "backbone".into(), "train".into(), "test".into()], true);
    for x in &d.recovery_cosine {
        rec += &row(&[x.method.clone(), x.backbone.clone(), format!("{:.4}", x.train), format!("{:.4}", x.test)], false);
    }
    rec += "</table>\n";
    let mut diag = String::from("<table>\n")
        + &row(&["method".into(), "dim".into(), "effective rank".into(), "median max/mean similarity".into()], true);
    for m in &d.methods {
        diag += &row(&[m.method.clone(), m.dim.to_string(), format!("{:.1}", m.effective_rank), format!("{:.3}", m.nn_similarity_median)], false);
    }
    diag += "</table>\n";
    let cfg = &c.config.fit;
    let n = c.methods.first().map(|m| (m.knn.n_train, m.knn.n_test)).unwrap_or((0, 0));
    let setting = format!(
        "{} train / {} test samples; k-NN vote {:?}, T = {}; fit: {} epochs, batch {}, lr {}, depth {}, seed {}{}",
        n.0,
        n.1,
        c.config.knn.vote,
        c.config.knn.temperature,
        cfg.epochs,
        cfg.batch,
        cfg.lr,
        cfg.depth,
        cfg.seed,
        if c.fit_history.is_empty() { " (MLPs of a given model; not fitted here)" } else { "" }
    ) + &variant_notes(r);
    let mut figs = String::new();
    for f in figures {
        let svg = f.svg.trim_start();
        let svg = if svg.starts_with("<?xml") { svg.split_once("?>").map(|x| x.1).unwrap_or(svg) } else { svg };
        figs += &format!(
            "<figure id=\"{0}\">\n{1}\n<figcaption>{2} (<a href=\"fig/{0}.svg\">SVG</a>, <a href=\"fig/{0}.png\">PNG</a>)</figcaption>\n</figure>\n",
            escape(&f.name),
            svg.trim(),
            escape(&f.title)
        );
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ensembed report</title>
<style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f2f2f2; }}
tr.ours td {{ font-weight: bold; background: #fff6e0; }}
figure {{ margin: 1.5em 0; }}
figure svg {{ max-width: 100%; height: auto; }}
figcaption {{ color: #555; font-size: 0.9em; }}
.note {{ color: #555; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>ensembed report</h1>
<p class="note">{setting}. All numbers: <a href="{json}">{json}</a>.</p>
<h2>k-NN accuracy (%)</h2>
{table}<p><b>{summary}</b></p>
<h2>Recovery cosine of &#966;<sub>j</sub>(&#968;) against z<sub>j</sub></h2>
{rec}<h2>Representations</h2>
{diag}<h2>Figures</h2>
{figs}</body>
</html>
"#,
        setting = escape(&setting),
        json = escape(json_name),
        table = comparison_table(r),
        summary = escape(&summary),
    )
}
