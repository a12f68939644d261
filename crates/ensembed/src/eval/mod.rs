//! How good a representation is: the paper, like DINO before it, judges features by the
//! accuracy of a k-nearest-neighbour classifier on them, because that needs no training and
//! measures exactly what the method optimises (who is whose neighbour).

pub mod knn;

pub use knn::{evaluate_knn, knn_neighbors, KnnConfig, KnnReport, KnnScore, Vote};
