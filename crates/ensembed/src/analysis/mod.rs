//! The paper's diagnostics (section 5 and appendix B), as pure functions over matrices: how well
//! the learned representations recover each backbone's features, how their singular values
//! spread compared with the baselines', and how distinct each test point's nearest neighbour is.

mod neighbors;
mod recovery;
mod spectrum;

pub use neighbors::normalized_nn_similarity;
pub use recovery::recovery_cosine;
pub use spectrum::{singular_values, symmetric_eigenvalues};
