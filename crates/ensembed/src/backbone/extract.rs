//! From an image folder to a feature store: the `DIR/<class>/<image>` layout (torchvision's
//! ImageFolder, one level deep) gives labels (class folders sorted by name) and ids (paths
//! relative to `DIR`), every image is decoded once and run through each backbone, and the
//! pooled features go to a [`StoreWriter`] as f16 (half the size, and far more precision than
//! 8-bit activations carry). The store appears only when everything succeeded.

use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::{FeatureExtractor, RgbImage};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::store::{check_backbone_name, StoreWriter};

/// File extensions (compared ignoring case) taken as images.
const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

/// An image folder's listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFolder {
    pub root: PathBuf,
    /// Class folder names, sorted: label `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Per image: its id (`<class>/<file>`, relative to `root`) and label; sorted by class, then
    /// file name.
    pub images: Vec<(String, usize)>,
}

fn utf8_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::format(
                path,
                "file name",
                "is not valid UTF-8 (ids and class names must be text)",
            )
        })
}

/// Sorted entries of `dir` (names and whether each is a directory).
fn entries(dir: &Path) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let path = e.path();
        // Follows symbolic links, so a folder of links to images works.
        let is_dir = path.is_dir();
        out.push((utf8_name(&path)?, is_dir));
    }
    out.sort();
    Ok(out)
}

/// Lists `dir/<class>/<image>`: class folders sorted by name, image files (.jpg, .jpeg, .png,
/// .bmp, any case) sorted by name inside each. Hidden entries (names starting with `.`) are
/// skipped; a folder with no class folders or no images is an error.
pub fn list_image_folder(dir: &Path) -> Result<ImageFolder> {
    let mut classes = Vec::new();
    let mut images = Vec::new();
    for (class, is_dir) in entries(dir)? {
        if !is_dir || class.starts_with('.') {
            continue;
        }
        let label = classes.len();
        for (file, sub_dir) in entries(&dir.join(&class))? {
            let ext = Path::new(&file)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if !sub_dir && !file.starts_with('.') && IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                images.push((format!("{class}/{file}"), label));
            }
        }
        classes.push(class);
    }
    if classes.is_empty() {
        return Err(Error::config(
            "images folder",
            dir.display(),
            "has no class folders (expected DIR/<class>/<image>)",
        ));
    }
    if images.is_empty() {
        return Err(Error::config(
            "images folder",
            dir.display(),
            format!(
                "has no images (.jpg, .jpeg, .png or .bmp) in its {} class folders",
                classes.len()
            ),
        ));
    }
    Ok(ImageFolder {
        root: dir.to_path_buf(),
        classes,
        images,
    })
}

/// Extracts the pooled features of every image of the folder `images_dir` with each named
/// model (a [`super::Backbone`] of any format, or one model type directly) and writes them, with
/// labels, class names and ids, as a store at `out` (replacing an existing store only with
/// `overwrite`). Images are decoded once, `batch` at a time, and run in parallel. Returns the
/// store's path.
pub fn extract_folder<M: FeatureExtractor + ?Sized>(
    models: &[(String, &M)],
    images_dir: &Path,
    out: &Path,
    batch: usize,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    if models.is_empty() {
        return Err(Error::config(
            "models",
            0,
            "name at least one model to extract features with",
        ));
    }
    if batch == 0 {
        return Err(Error::config("batch", 0, "must be at least 1"));
    }
    for (i, (name, _)) in models.iter().enumerate() {
        check_backbone_name(name)?;
        if models[..i]
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return Err(Error::config(
                "backbone name",
                format!("`{name}`"),
                "is used twice",
            ));
        }
    }
    let folder = list_image_folder(images_dir)?;
    let n = folder.images.len();
    // Created first so that a refused destination fails before minutes of work.
    let mut writer = StoreWriter::create(out, n, overwrite)?;

    let mut feats: Vec<Vec<f16>> = models
        .iter()
        .map(|(_, m)| Vec::with_capacity(n * m.pooled_dim()))
        .collect();
    progress.start("extract features", n as u64);
    for chunk in folder.images.chunks(batch) {
        let imgs: Vec<RgbImage> = chunk
            .par_iter()
            .map(|(id, _)| RgbImage::open(&folder.root.join(id)))
            .collect::<Result<_>>()?;
        for ((_, model), f) in models.iter().zip(&mut feats) {
            let m = model.features(&imgs)?;
            let start = f.len();
            f.resize(start + m.data.len(), f16::ZERO);
            f[start..].convert_from_f32_slice(&m.data);
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();

    for ((name, model), f) in models.iter().zip(&feats) {
        writer.add_backbone_f16(name, model.pooled_dim(), f)?;
    }
    let labels: Vec<i64> = folder.images.iter().map(|&(_, l)| l as i64).collect();
    writer.set_labels(&labels, Some(folder.classes.clone()))?;
    writer.set_ids(folder.images.iter().map(|(id, _)| id.clone()).collect())?;
    writer.finish()
}
