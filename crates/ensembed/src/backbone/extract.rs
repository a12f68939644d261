//! From images to a feature store, resumably. Extraction is the slowest stage a user meets
//! (hours for a large dataset), so it must survive being killed: every image is decoded once and
//! run through each backbone, `batch` at a time, and after each batch the features are appended
//! to one raw f16 file per backbone in `.OUT.extract-partial/` and synced, then `record.json`
//! there says how many images are complete (and what they were made from). A rerun with `resume`
//! checks that record against this run — the image list, the backbones and their fingerprints,
//! the batch size — cuts each file back to the recorded length and continues; the finished
//! store is byte-identical to an uninterrupted run's, because each batch is the same batch. The
//! store appears all at once at the end (a [`StoreWriter`]), as f16 (half the size, and far more
//! precision than 8-bit activations carry), and the partial folder is removed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::images::{list_image_folder, ImageSet};
use super::{FeatureExtractor, RgbImage};
use crate::error::{Error, Result};
use crate::fsio::{fnv1a, write_atomic, FNV1A_OFFSET};
use crate::progress::Progress;
use crate::store::{check_backbone_name, check_destination, StoreWriter};

/// How an extraction runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Images decoded and run per batch (also the unit of resumption).
    pub batch: usize,
    /// Replace an existing store at the destination.
    pub overwrite: bool,
    /// Continue an interrupted run from its partial folder (made with the same images,
    /// backbones and batch), instead of starting over.
    pub resume: bool,
    /// Per backbone, what a resumed run must find unchanged besides its name and width (the CLI
    /// gives the model file's size and hash and its preprocessing); empty means none.
    pub fingerprints: Vec<String>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions { batch: 64, overwrite: false, resume: false, fingerprints: Vec::new() }
    }
}

/// `record.json` of a partial extraction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PartialRecord {
    format: String,
    version: u32,
    /// Images (count and FNV-1a of their ids and labels) and the batch size.
    n: usize,
    images: String,
    batch: usize,
    /// `name[dim]` and fingerprint per backbone.
    backbones: Vec<(String, String)>,
    /// Images whose features of every backbone are synced to the partial files.
    done: usize,
}

const PARTIAL_FORMAT: &str = "ensembed-extract-partial";
const RECORD_FILE: &str = "record.json";

/// Where an extraction into `out` keeps its partial work: `.OUT.extract-partial` beside it.
pub fn extract_partial_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "store".into());
    out.with_file_name(format!(".{name}.extract-partial"))
}

fn images_hash(images: &ImageSet) -> String {
    let mut h = FNV1A_OFFSET;
    for (i, id) in images.ids.iter().enumerate() {
        h = fnv1a(h, id.as_bytes());
        let label = images.labels.as_ref().map_or(-1, |l| l[i]);
        h = fnv1a(h, &label.to_le_bytes());
    }
    for c in images.classes.iter().flatten() {
        h = fnv1a(h, c.as_bytes());
        h = fnv1a(h, &[0]);
    }
    format!("{h:016x}")
}

/// Extracts the pooled features of every image of the ImageFolder `images_dir` (see
/// [`list_image_folder`]) with each named model into a store at `out` (replacing an existing
/// store only with `overwrite`); not resumable. Returns the store's path.
pub fn extract_folder<M: FeatureExtractor + ?Sized>(
    models: &[(String, &M)],
    images_dir: &Path,
    out: &Path,
    batch: usize,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    check_models(models, &ExtractOptions { batch, ..Default::default() })?;
    let images = list_image_folder(images_dir)?;
    extract_images(models, &images, out, &ExtractOptions { batch, overwrite, ..Default::default() }, progress)
}

fn check_models<M: FeatureExtractor + ?Sized>(models: &[(String, &M)], opts: &ExtractOptions) -> Result<()> {
    if models.is_empty() {
        return Err(Error::config("models", 0, "name at least one model to extract features with"));
    }
    if opts.batch == 0 {
        return Err(Error::config("batch", 0, "must be at least 1"));
    }
    if !opts.fingerprints.is_empty() && opts.fingerprints.len() != models.len() {
        return Err(Error::config("fingerprints", opts.fingerprints.len(), format!("one per model ({})", models.len())));
    }
    for (i, (name, _)) in models.iter().enumerate() {
        check_backbone_name(name)?;
        if models[..i].iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(Error::config("backbone name", format!("`{name}`"), "is used twice"));
        }
    }
    Ok(())
}

/// Extracts the pooled features of `images` with each named model and writes them, with the
/// labels, class names and ids the set has, as a store at `out`. Work in progress lives in
/// [`extract_partial_path`]`(out)`: with `opts.resume` an interrupted run continues from it
/// (an error names the first setting that differs), without it any partial work is discarded.
/// Returns the store's path.
pub fn extract_images<M: FeatureExtractor + ?Sized>(
    models: &[(String, &M)],
    images: &ImageSet,
    out: &Path,
    opts: &ExtractOptions,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    check_models(models, opts)?;
    let n = images.len();
    if n == 0 {
        return Err(Error::config("images", 0, "no images to extract"));
    }
    // Checked first so that a refused destination fails before minutes of work; the writer
    // comes at the end, so that a killed run leaves nothing but its partial folder.
    check_destination(out, opts.overwrite)?;
    let partial = extract_partial_path(out);
    let fresh = PartialRecord {
        format: PARTIAL_FORMAT.into(),
        version: 1,
        n,
        images: images_hash(images),
        batch: opts.batch,
        backbones: models
            .iter()
            .enumerate()
            .map(|(j, (name, m))| (format!("{name}[{}]", m.pooled_dim()), opts.fingerprints.get(j).cloned().unwrap_or_default()))
            .collect(),
        done: 0,
    };
    let record_path = partial.join(RECORD_FILE);
    let mut record = if opts.resume && record_path.exists() {
        resumable_record(&record_path, &fresh)?
    } else {
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        write_atomic(&record_path, &serde_json::to_vec_pretty(&fresh).expect("record serialises"))?;
        fresh
    };

    // One raw f16 file per backbone, cut back to the recorded images.
    let mut files = Vec::with_capacity(models.len());
    for (name, m) in models {
        let path = partial.join(format!("{name}.f16"));
        let keep = (record.done * m.pooled_dim() * 2) as u64;
        let io = |e| Error::io(&path, e);
        let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if len < keep {
            return Err(Error::format(&path, "length", format!("{len} bytes, fewer than the {keep} of the {} images its record says are done", record.done)));
        }
        f.set_len(keep).map_err(io)?;
        f.seek(SeekFrom::Start(keep)).map_err(io)?;
        files.push((path, f));
    }

    progress.start("extract features", n as u64);
    progress.advance(record.done as u64);
    let mut bytes = Vec::new();
    while record.done < n {
        let (start, end) = (record.done, (record.done + opts.batch).min(n));
        let imgs: Vec<RgbImage> = (start..end).into_par_iter().map(|i| RgbImage::open(&images.path(i))).collect::<Result<_>>()?;
        for ((_, model), (path, f)) in models.iter().zip(&mut files) {
            let m = model.features(&imgs)?; // [end - start, pooled_dim]
            let mut h = vec![f16::ZERO; m.data.len()];
            h.convert_from_f32_slice(&m.data);
            bytes.clear();
            bytes.extend(h.iter().flat_map(|v| v.to_le_bytes()));
            f.write_all(&bytes).map_err(|e| Error::io(&*path, e))?;
        }
        // The features reach the disk before the record says they did.
        for (path, f) in &files {
            f.sync_data().map_err(|e| Error::io(path, e))?;
        }
        record.done = end;
        write_atomic(&record_path, &serde_json::to_vec_pretty(&record).expect("record serialises"))?;
        progress.advance((end - start) as u64);
    }
    progress.finish();

    let mut writer = StoreWriter::create(out, n, opts.overwrite)?;
    for ((name, model), (path, f)) in models.iter().zip(&mut files) {
        let mut raw = Vec::with_capacity(n * model.pooled_dim() * 2);
        f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(&*path, e))?;
        f.read_to_end(&mut raw).map_err(|e| Error::io(&*path, e))?;
        if raw.len() != n * model.pooled_dim() * 2 {
            return Err(Error::format(&*path, "length", format!("{} bytes, expected {} ({n} images x {} f16)", raw.len(), n * model.pooled_dim() * 2, model.pooled_dim())));
        }
        let data: Vec<f16> = raw.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
        writer.add_backbone_f16(name, model.pooled_dim(), &data)?;
    }
    drop(files);
    if let Some(labels) = &images.labels {
        writer.set_labels(labels, images.classes.clone())?;
    }
    writer.set_ids(images.ids.clone())?;
    let path = writer.finish()?;
    std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    Ok(path)
}

/// The record of an interrupted run made from the same images, backbones and batch size; an
/// error naming the first difference otherwise.
fn resumable_record(path: &Path, fresh: &PartialRecord) -> Result<PartialRecord> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let old: PartialRecord = serde_json::from_slice(&text).map_err(|e| Error::format(path, "record", format!("not a partial-extraction record: {e}")))?;
    let differ = |field: &str, was: String, now: String| {
        Error::config(field, now, format!("differs from the interrupted run in {}, which had {field} = {was}; rerun without resume to start over", path.display()))
    };
    if old.format != fresh.format || old.version != fresh.version {
        return Err(differ("format", format!("{} v{}", old.format, old.version), format!("{} v{}", fresh.format, fresh.version)));
    }
    if old.n != fresh.n || old.images != fresh.images {
        return Err(differ("images", format!("{} images ({})", old.n, old.images), format!("{} images ({})", fresh.n, fresh.images)));
    }
    if old.batch != fresh.batch {
        return Err(differ("batch", old.batch.to_string(), fresh.batch.to_string()));
    }
    if old.backbones != fresh.backbones {
        let show = |b: &[(String, String)]| b.iter().map(|(n, f)| if f.is_empty() { n.clone() } else { format!("{n} ({f})") }).collect::<Vec<_>>().join(", ");
        return Err(differ("backbones", show(&old.backbones), show(&fresh.backbones)));
    }
    if old.done > old.n {
        return Err(Error::format(path, "done", format!("{} images done of {}: damaged", old.done, old.n)));
    }
    Ok(old)
}

/// Hashes a backbone file for [`ExtractOptions::fingerprints`]: its size and FNV-1a, streamed.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let (mut h, mut len, mut buf) = (FNV1A_OFFSET, 0u64, vec![0u8; 1 << 20]);
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if k == 0 {
            break;
        }
        h = fnv1a(h, &buf[..k]);
        len += k as u64;
    }
    Ok(format!("{len} bytes, fnv1a {h:016x}"))
}
