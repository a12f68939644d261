//! Which images an extraction reads, in which order, and what it records of each: the three
//! ways users hold images. An ImageFolder (`DIR/<class>/<image>`, torchvision's layout: class
//! folders sorted by name give the labels), a plain folder of unlabelled images, or a list file
//! (`path[,label]` per line, for images spread over several folders or labelled elsewhere).
//! Every image's id is its path as the user gave it (relative to the folder, or as written in
//! the list), so that a store row can always be traced back to its file. Listing checks that
//! every image exists, so a typo fails before minutes of extraction rather than after.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File extensions (compared ignoring case) taken as images.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

/// The images of an extraction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSet {
    /// What relative ids are relative to: the folder, or the list file's folder.
    pub root: PathBuf,
    /// Per image: its id (a path relative to `root`, or absolute when a list file says so).
    pub ids: Vec<String>,
    /// Per image: its class index, when the source has labels.
    pub labels: Option<Vec<i64>>,
    /// Class names (label `i` is `classes[i]`), when the source names them.
    pub classes: Option<Vec<String>>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The file of image `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        self.root.join(&self.ids[i])
    }
}

fn utf8_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::format(path, "file name", "is not valid UTF-8 (ids and class names must be text)"))
}

/// Sorted entries of `dir` (names and whether each is a directory).
fn entries(dir: &Path) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let path = e.path();
        // Follows symbolic links, so a folder of links to images works.
        out.push((utf8_name(&path)?, path.is_dir()));
    }
    out.sort();
    Ok(out)
}

fn is_image_name(name: &str) -> bool {
    let ext = Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    !name.starts_with('.') && IMAGE_EXTENSIONS.contains(&ext.as_str())
}

/// Lists `path`: a list file when it is a file, otherwise a folder — an ImageFolder when it has
/// class folders holding images, a plain folder of unlabelled images when its images lie in it
/// directly. See [`list_image_folder`] and [`list_image_file`].
pub fn list_images(path: &Path) -> Result<ImageSet> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return list_image_file(path);
    }
    let top = entries(path)?;
    let has_class_folders = top.iter().any(|(name, is_dir)| *is_dir && !name.starts_with('.'));
    let has_images = top.iter().any(|(name, is_dir)| !is_dir && is_image_name(name));
    if has_images && !has_class_folders {
        let ids: Vec<String> = top.into_iter().filter(|(n, d)| !d && is_image_name(n)).map(|(n, _)| n).collect();
        return Ok(ImageSet { root: path.to_path_buf(), ids, labels: None, classes: None });
    }
    list_image_folder(path)
}

/// Lists `dir/<class>/<image>`: class folders sorted by name, image files (.jpg, .jpeg, .png,
/// .bmp, any case) sorted by name inside each. Hidden entries (names starting with `.`) and
/// files beside the class folders are skipped; a folder with no class folders or no images is
/// an error.
pub fn list_image_folder(dir: &Path) -> Result<ImageSet> {
    let mut classes = Vec::new();
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    for (class, is_dir) in entries(dir)? {
        if !is_dir || class.starts_with('.') {
            continue;
        }
        for (file, sub_dir) in entries(&dir.join(&class))? {
            if !sub_dir && is_image_name(&file) {
                ids.push(format!("{class}/{file}"));
                labels.push(classes.len() as i64);
            }
        }
        classes.push(class);
    }
    if classes.is_empty() {
        return Err(Error::config(
            "images folder",
            dir.display(),
            "has no class folders (expected DIR/<class>/<image>) and no images (.jpg, .jpeg, .png or .bmp)",
        ));
    }
    if ids.is_empty() {
        return Err(Error::config(
            "images folder",
            dir.display(),
            format!("has no images (.jpg, .jpeg, .png or .bmp) in its {} class folders", classes.len()),
        ));
    }
    Ok(ImageSet { root: dir.to_path_buf(), ids, labels: Some(labels), classes: Some(classes) })
}

/// Reads a list file: one image per line, `path` or `path,label`; blank lines and lines starting
/// with `#` are skipped. Relative paths are relative to the list file's folder. Labels are
/// either all integers >= 0 (taken as class indices) or all names (classes sorted by name, as
/// for folders); either every line has a label or none has. The last comma separates the label,
/// so a path with a comma in it needs one. Every listed image must exist.
pub fn list_image_file(list: &Path) -> Result<ImageSet> {
    let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let root = list.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let mut ids = Vec::new();
    let mut raw_labels: Vec<Option<String>> = Vec::new();
    let mut line_of = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let field = format!("line {}", k + 1);
        let (path, label) = match line.rsplit_once(',') {
            Some((p, l)) => (p.trim(), Some(l.trim().to_string())),
            None => (line, None),
        };
        if path.is_empty() || label.as_deref() == Some("") {
            return Err(Error::format(list, field, format!("{line:?}: expected `path` or `path,label`")));
        }
        if !root.join(path).is_file() {
            return Err(Error::format(list, field, format!("the image {path:?} does not exist (relative paths are relative to {})", root.display())));
        }
        if raw_labels.first().is_some_and(|l: &Option<String>| l.is_some() != label.is_some()) {
            return Err(Error::format(list, field, format!("{line:?}: either every line has a label or none has (line {} {})", line_of[0], if label.is_some() { "has none" } else { "has one" })));
        }
        ids.push(path.to_string());
        raw_labels.push(label);
        line_of.push(k + 1);
    }
    if ids.is_empty() {
        return Err(Error::format(list, "lines", "lists no images"));
    }
    let (labels, classes) = match raw_labels.iter().map(|l| l.clone()).collect::<Option<Vec<String>>>() {
        None => (None, None),
        Some(names) => {
            if let Ok(ints) = names.iter().map(|s| s.parse::<i64>()).collect::<std::result::Result<Vec<_>, _>>() {
                if let Some(i) = ints.iter().position(|&v| v < 0) {
                    return Err(Error::format(list, format!("line {}", line_of[i]), format!("label {} is negative", ints[i])));
                }
                (Some(ints), None)
            } else {
                let classes: Vec<String> = names.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
                let labels = names.iter().map(|n| classes.binary_search(n).expect("listed") as i64).collect();
                (Some(labels), Some(classes))
            }
        }
    };
    Ok(ImageSet { root, ids, labels, classes })
}
