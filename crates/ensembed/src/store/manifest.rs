//! The store's `manifest.json`: the one place that says what a store holds. It is parsed before
//! any feature file is touched, and every name in it is checked here, because backbone names and
//! file entries become paths: a manifest from an untrusted source must not be able to make the
//! reader open `../../etc/passwd` or the writer create a file outside the store.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The value of the manifest's `format` field.
pub const FORMAT: &str = "ensembed-store";
/// The manifest version this library reads and writes.
pub const VERSION: u32 = 1;
/// The manifest's file name inside a store.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The labels file's name inside a store; a backbone may therefore not be called `labels`.
pub const LABELS_FILE: &str = "labels.safetensors";
/// The ids file's name inside a store.
pub const IDS_FILE: &str = "ids.txt";
/// The tensor name inside a backbone file.
pub const FEATURES_TENSOR: &str = "features";
/// The tensor name inside the labels file.
pub const LABELS_TENSOR: &str = "labels";

// Leaves room for the ".safetensors" suffix within the usual 255-byte file-name limit.
const MAX_NAME_LEN: usize = 200;

/// The element type of a backbone's features on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
        })
    }
}

/// One backbone as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneEntry {
    pub name: String,
    pub dim: usize,
    pub dtype: Dtype,
    pub file: String,
}

/// The parsed `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub n: usize,
    pub backbones: Vec<BackboneEntry>,
    #[serde(default)]
    pub labels: Option<String>,
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    #[serde(default)]
    pub ids: Option<String>,
}

impl Manifest {
    /// Reads and validates `path` (a store's `manifest.json`).
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, "manifest", format!("not a valid store manifest: {e}")))?;
        m.validate(path)?;
        Ok(m)
    }

    /// Checks everything that can be checked without opening the files the manifest names.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::format(
                path,
                "format",
                format!(
                    "`{}` is not `{FORMAT}`: this is not an ensembed feature store",
                    self.format
                ),
            ));
        }
        if self.version != VERSION {
            return Err(Error::format(
                path,
                "version",
                format!(
                    "version {} is not supported (this build reads version {VERSION})",
                    self.version
                ),
            ));
        }
        if self.backbones.is_empty() {
            return Err(Error::format(
                path,
                "backbones",
                "the list is empty: a store needs at least one backbone",
            ));
        }
        let mut seen = HashSet::new();
        for (k, b) in self.backbones.iter().enumerate() {
            check_backbone_name(&b.name)
                .map_err(|e| Error::format(path, format!("backbones[{k}].name"), e.to_string()))?;
            if !seen.insert(b.name.to_ascii_lowercase()) {
                return Err(Error::format(
                    path,
                    format!("backbones[{k}].name"),
                    format!(
                        "`{}` appears twice (names are compared ignoring letter case)",
                        b.name
                    ),
                ));
            }
            if b.dim == 0 {
                return Err(Error::format(
                    path,
                    format!("backbones[{k}].dim"),
                    format!("backbone `{}` has dim 0", b.name),
                ));
            }
            check_file_name(path, &format!("backbones[{k}].file"), &b.file)?;
        }
        if let Some(f) = &self.labels {
            check_file_name(path, "labels", f)?;
        }
        if let Some(f) = &self.ids {
            check_file_name(path, "ids", f)?;
        }
        if let Some(c) = &self.classes {
            if self.labels.is_none() {
                return Err(Error::format(
                    path,
                    "classes",
                    format!("{} class names are listed but `labels` is null", c.len()),
                ));
            }
        }
        Ok(())
    }

    /// Writes the manifest as pretty JSON to `path` and flushes it to disk.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::format(path, "manifest", format!("cannot serialise: {e}")))?;
        text.push('\n');
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
        sync_file(path)
    }
}

/// Checks that `name` can be a backbone name: non-empty, at most 200 bytes, only
/// `[A-Za-z0-9._-]`, not starting with `.`, and not `labels` (which would collide with the
/// labels file). Names become file names, so this is also what keeps the store's paths safe.
pub fn check_backbone_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::config("backbone name", format!("`{name}`"), why));
    if name.is_empty() {
        return bad("a backbone name may not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("a backbone name may have at most 200 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character {c:?} is not allowed: use only letters, digits, '.', '_' and '-' (the name becomes a file name)"
        ));
    }
    if name.starts_with('.') {
        return bad("a backbone name may not start with '.'");
    }
    if name.eq_ignore_ascii_case("labels") {
        return bad("`labels` is reserved: the store keeps its labels in labels.safetensors");
    }
    Ok(())
}

/// Checks that `file` (the manifest field `field`) is a plain file name inside the store: no
/// separators, no `..`, not hidden, not absolute.
pub fn check_file_name(manifest: &Path, field: &str, file: &str) -> Result<()> {
    let plain = !file.is_empty()
        && !file.starts_with('.')
        && !file.contains(['/', '\\', ':', '\0'])
        && matches!(
            Path::new(file).components().collect::<Vec<_>>().as_slice(),
            [Component::Normal(_)]
        );
    if plain {
        Ok(())
    } else {
        Err(Error::format(
            manifest,
            field,
            format!("`{file}` is not a plain file name inside the store (no '/', '\\', '..' or leading '.')"),
        ))
    }
}

/// Flushes a written file to disk, so that the rename that publishes a store happens after its
/// content is durable.
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Flushes a directory entry (after creating or renaming files in it). Only meaningful on Unix;
/// elsewhere directories cannot be opened as files and the call does nothing.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        sync_file(path)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}
