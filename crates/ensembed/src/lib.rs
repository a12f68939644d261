//! ensembed learns one nearest-neighbour representation per image from several pretrained
//! backbones (Wallace et al., "Learning Rich Nearest Neighbor Representations from
//! Self-supervised Ensembles"). The pipeline, in the order data flows through it:
//!
//! 1. [`store`]: backbone features on disk (safetensors, memory-mapped), imported from and
//!    exported to numpy `.npy`/`.npz`.
//! 2. [`baseline`]: the representations the paper compares against (single backbone, average,
//!    concatenation) and the initialisation of the learned ones.
//! 3. [`model`]: one MLP per backbone (hand-written forward and backward over [`kernels`]),
//!    the cosine loss and the Adam optimiser (dense and lazy memory-bank semantics).
//! 4. [`fit`]: learns the MLPs and the training set's representations.
//! 5. [`embed`]: learns representations of new samples through the frozen MLPs.
//! 6. [`eval`]: k-NN classification accuracy, the paper's measure.
//!
//! Every stage takes a config struct whose defaults are those of `METHOD.md`, and reports
//! progress through [`progress::Progress`] so that the library never touches a terminal.

pub mod analysis;
pub mod artifact;
pub mod backbone;
pub mod baseline;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod embed;
pub mod error;
pub mod eval;
pub mod features;
pub mod fit;
pub mod fsio;
pub mod kernels;
pub mod matrix;
pub mod memory;
pub mod model;
pub mod objective;
pub mod pca;
pub mod progress;
pub mod report;
pub mod rng;
pub mod store;

pub use config::{BankMode, EmbedConfig, FitConfig};
pub use error::{Error, Result};
pub use features::{FeatureSet, InMemory};
pub use matrix::Matrix;
pub use progress::{NoProgress, Progress};
