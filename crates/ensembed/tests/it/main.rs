//! The one integration-test binary: each module tests one stage of the pipeline against a known
//! answer (finite differences, brute force, or numbers from a reference script kept beside the
//! test); `helpers` holds what they share.

mod helpers;

mod analysis;
mod backbone;
mod checkpoint;
mod cnn;
mod extract;
mod fuzz;
mod knn;
mod linear;
mod model;
mod nonneg;
mod onnx;
mod pipeline;
mod report;
mod store;
mod tflite_writer;
