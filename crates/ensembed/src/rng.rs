//! The one source of randomness. Every random draw (MLP initialisation, epoch shuffles) comes
//! from a ChaCha stream derived from the user's seed and a fixed purpose tag, so that adding a
//! draw for one purpose never shifts the numbers drawn for another, and a run is reproducible
//! byte for byte from its seed.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is used for; each purpose gets an independent stream from the same seed.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// Initialisation of MLP `j`.
    Init(usize),
    /// The shuffle of the training set at every epoch.
    Shuffle,
}

/// The stream for `purpose` under `seed`.
pub fn stream(seed: u64, purpose: Purpose) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (tag, index) = match purpose {
        Purpose::Init(j) => (1u64, j as u64),
        Purpose::Shuffle => (2u64, 0),
    };
    rng.set_stream(tag << 32 | index);
    rng
}
