//! `ensembed report` and `ensembed sweep` as library code: one evaluation that yields the
//! comparison and the diagnostics together ([`evaluate`]), the figures of both commands drawn
//! with plotters as SVG and PNG ([`figures`]), the self-contained HTML page ([`html`]), the fit
//! parameter a sweep varies ([`sweep`]), and [`write_report`], which writes a whole report
//! directory crash-safely (built in a temporary directory, renamed into place).

pub mod evaluate;
pub mod figures;
pub mod html;
pub mod sweep;

use std::fs;
use std::path::{Path, PathBuf};

pub use evaluate::{effective_rank, evaluate, evaluate_with, median, Diagnostics, MethodDiagnostics, RecoveryRow, Report, Variant, VariantRun};
pub use figures::{report_figures, sweep_figure, Figure};
pub use sweep::{apply_sweep_value, SWEEP_PARAMS};

use crate::error::{Error, Result};
use crate::fsio::{temp_path, write_atomic};

/// Writes `dir/report.json`, `dir/fig/<name>.svg|.png` for every figure and `dir/index.html`.
/// The files are written into a temporary sibling directory that is renamed to `dir`; an
/// existing `dir` is an error unless `overwrite`, in which case it is replaced only once the
/// new report is complete. Returns the written paths (under `dir`).
pub fn write_report(dir: &Path, report: &Report, figures: &[Figure], overwrite: bool) -> Result<Vec<PathBuf>> {
    if dir.exists() && !overwrite {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists (pass --overwrite to replace it)"),
        ));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temp_path(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let mut files = Vec::new();
    let result = (|| -> Result<()> {
        let json = serde_json::to_vec_pretty(&report.to_json()).expect("JSON of plain numbers and strings");
        write_atomic(&tmp.join("report.json"), &json)?;
        files.push("report.json".to_string());
        for f in figures {
            write_atomic(&tmp.join("fig").join(format!("{}.svg", f.name)), f.svg.as_bytes())?;
            write_atomic(&tmp.join("fig").join(format!("{}.png", f.name)), &f.png)?;
            files.push(format!("fig/{}.svg", f.name));
            files.push(format!("fig/{}.png", f.name));
        }
        write_atomic(&tmp.join("index.html"), html::page(report, figures, "report.json").as_bytes())?;
        files.push("index.html".to_string());
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    replace_dir(&tmp, dir)?;
    Ok(files.iter().map(|f| dir.join(f)).collect())
}

/// Renames the complete directory `tmp` to `dir`, replacing an existing `dir` (moved aside
/// first, removed after), so that `dir` is never half-written.
fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = fs::rename(tmp, dir) {
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        return Err(Error::io(dir, e));
    }
    if had_old {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}
