//! How good a representation is. The paper, like DINO before it, judges features mainly by the
//! accuracy of a k-nearest-neighbour classifier on them ([`knn`]), because that needs no
//! training and measures exactly what the method optimises (who is whose neighbour); a linear
//! probe ([`linear`]) is its second measure.

pub mod knn;
pub mod linear;

pub use knn::{evaluate_knn, knn_neighbors, KnnConfig, KnnReport, KnnScore, Vote};
pub use linear::{evaluate_linear, LinearConfig, LinearReport};
