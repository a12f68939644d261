//! One error type for the whole library. Every message carries the file, the field and the
//! offending value, so that a user can fix the input without reading the code; the binary adds
//! context with `anyhow` on top.

use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while touching `path`.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file whose content is malformed: a bad header, a truncated body, an unsupported dtype.
    #[error("{path}: field `{field}`: {message}")]
    Format {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// A NaN or infinite value in a feature matrix.
    #[error("{path}: {what}: non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        path: PathBuf,
        what: String,
        row: usize,
        col: usize,
        value: f32,
    },

    /// A feature row whose norm is zero: it has no direction, so cosine similarity is undefined.
    #[error("{path}: {what}: row {row} is all zeros (cosine similarity is undefined for it)")]
    ZeroRow {
        path: PathBuf,
        what: String,
        row: usize,
    },

    /// Two things that must agree in size do not.
    #[error("shape mismatch in {what}: expected {expected}, found {found}")]
    Shape {
        what: String,
        expected: String,
        found: String,
    },

    /// A setting outside its valid range.
    #[error("invalid setting `{field}` = {value}: {message}")]
    Config {
        field: String,
        value: String,
        message: String,
    },

    /// Optimisation produced a non-finite loss.
    #[error("the loss became {value} at epoch {epoch}, step {step}: lower the learning rate (`lr` = {lr})")]
    Diverged {
        epoch: usize,
        step: usize,
        value: f32,
        lr: f32,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed-file error.
    pub fn format(path: impl Into<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// An invalid-setting error.
    pub fn config(field: impl Into<String>, value: impl ToString, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            value: value.to_string(),
            message: message.into(),
        }
    }

    /// A size-mismatch error.
    pub fn shape(what: impl Into<String>, expected: impl ToString, found: impl ToString) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}
