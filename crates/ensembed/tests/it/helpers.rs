//! Shared test helpers: deterministic random data, the shipped demo features and the optional
//! `../shared` folder (present in CI, absent on a user's clone).
#![allow(dead_code)]

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `../shared` beside the repository when it exists. Tests that need it call this and return
/// early (printing a visible SKIP line) when it is absent.
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    let p = repo_root().join("../shared");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("SKIP {test}: ../shared is not present beside the repository (it is in CI)");
        None
    }
}

/// A deterministic RNG for test data.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `[rows, cols]` of uniform values in [-1, 1).
pub fn random_matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> ensembed::Matrix {
    let data = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    ensembed::Matrix::from_vec(rows, cols, data).unwrap()
}

/// `[rows, cols]` of non-negative values (like post-ReLU features), each row unit-norm.
pub fn random_features(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> ensembed::Matrix {
    let data = (0..rows * cols).map(|_| rng.random_range(0.0f32..1.0).powi(3)).collect();
    let mut m = ensembed::Matrix::from_vec(rows, cols, data).unwrap();
    m.normalize_rows();
    m
}

/// Largest absolute difference between two slices.
/// A feature map `[c, h, w]` in f64, for the naive NCHW references of the CNN and ONNX tests
/// (written without anything from the library but `Fmap`'s layout).
#[derive(Clone, Debug)]
pub struct Chw {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub v: Vec<f64>,
}

impl Chw {
    /// The value at channel `c`, row `y`, column `x`; `None` in the padding outside the map.
    pub fn at(&self, c: usize, y: isize, x: isize) -> Option<f64> {
        (y >= 0 && x >= 0 && (y as usize) < self.h && (x as usize) < self.w)
            .then(|| self.v[(c * self.h + y as usize) * self.w + x as usize])
    }

    /// `f` applied to every value.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Chw {
        Chw { v: self.v.iter().map(|&x| f(x)).collect(), ..self.clone() }
    }

    /// From the library's NHWC map of one image.
    pub fn from_nhwc(f: &ensembed::backbone::cnn::Fmap) -> Chw {
        let mut v = vec![0.0; f.data.len()];
        for y in 0..f.h {
            for x in 0..f.w {
                for c in 0..f.c {
                    v[(c * f.h + y) * f.w + x] = f.data[(y * f.w + x) * f.c + c] as f64;
                }
            }
        }
        Chw { c: f.c, h: f.h, w: f.w, v }
    }

    /// Back to NHWC, rounded to f32.
    pub fn to_nhwc(&self) -> ensembed::backbone::cnn::Fmap {
        let mut data = vec![0.0; self.v.len()];
        for c in 0..self.c {
            for y in 0..self.h {
                for x in 0..self.w {
                    data[(y * self.w + x) * self.c + c] = self.v[(c * self.h + y) * self.w + x] as f32;
                }
            }
        }
        ensembed::backbone::cnn::Fmap { h: self.h, w: self.w, c: self.c, data }
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Exact eigenvalues of a small symmetric matrix by cyclic Jacobi rotations (f64).
pub fn jacobi_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _ in 0..100 {
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-15 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut ev: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    ev.sort_by(|x, y| y.partial_cmp(x).unwrap());
    ev
}


// ---------------------------------------------------------------------------------------------
// Allocation tracking: the test binary's allocator is the system's, plus a per-thread record of
// the largest single request, so that a test can check that a parser sized its buffers from the
// bytes present rather than from a declared size (a 100-byte file must not get 1 GB allocated,
// even briefly). Per thread, so that tests running in parallel do not see each other's requests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Tracking;

thread_local! {
    // `const` and without a destructor: readable from the allocator at any point of a thread's
    // life, without allocating.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

#[inline]
fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size)
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; `note` only reads and writes a
// thread-local integer.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation (bytes) it requested on
/// this thread (work it hands to other threads is not counted).
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LARGEST.with(|c| c.replace(0));
    let out = f();
    let largest = LARGEST.with(|c| c.replace(before.max(c.get())));
    (out, largest)
}
