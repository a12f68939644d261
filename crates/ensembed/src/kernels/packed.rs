//! A matrix multiply whose right operand is packed once, when a model is loaded, with the
//! layer's bias, residual and clamp applied while each output tile is still in registers. It is
//! the convolution GEMM of the CNN backbones on AVX-512 machines.
//!
//! Why by hand: the `gemm` crate packs both operands on every call (it has no prepacked-operand
//! API), and a backbone calls it for every layer of every image with the same weights. In a
//! ResNet-50 that packing, and the separate bias/residual/ReLU pass over the output, cost about
//! 13% of the network's time; onnxruntime's MLAS packs its weights at load. Here the weights are
//! packed into panels of [`NR`] columns at load, the left operand (activations or an im2col
//! block) is read in place, row-major, with one broadcast per element and row, and the
//! epilogue runs on the accumulators before the single store. A stride-1 convolution needs no
//! im2col block at all ([`ShiftedRows`]): within one output row its receptive fields are
//! strided views of the padded input. Machines without AVX-512 keep the `gemm` crate
//! ([`available`] says which).

use std::mem::MaybeUninit;

/// Columns per packed panel: two 16-float AVX-512 registers.
pub const NR: usize = 32;
/// Rows per micro-tile: 14 x 2 accumulators, 2 panel registers and a broadcast fill 31 of the
/// 32 vector registers.
const MR: usize = 14;
/// Depth of one pass over a panel: `KC * NR` floats (32 KiB, the L1 of current cores) are
/// reused by every row block of the tile, and each output tile is stored once per `KC` depths
/// (256 measured 4-7% faster than 128 in a ResNet-50, and level with 512).
const KC: usize = 256;
/// Largest depth block of all panels (`KC * n` floats) run row block by row block, from L2.
const ROWS_OUTER_BYTES: usize = 512 << 10;

static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes [`available`] say no from now on (`false`) or ask the CPU again (`true`): layers built
/// afterwards keep their weights for the `gemm` crate. For benchmarks that compare the two
/// paths in one process; layers already built keep their packing.
pub fn set_enabled(enabled: bool) {
    DISABLED.store(!enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this CPU runs the packed kernel (and [`set_enabled`] has not turned it off).
pub fn available() -> bool {
    if DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    cpu_has_it()
}

fn cpu_has_it() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A `[k, n]` right operand in panels of [`NR`] columns, each panel `[k, NR]` row-major and
/// zero-padded past `n`, starting on a 64-byte boundary so that every panel row is two aligned
/// loads.
#[derive(Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
    /// Floats skipped at the front of `data` to reach the 64-byte boundary.
    offset: usize,
}

impl PackedB {
    /// Packs a row-major `b`.
    ///
    /// # Shapes
    /// `b`: `[k, n]`.
    pub fn pack(b: &[f32], k: usize, n: usize) -> PackedB {
        assert_eq!(Some(b.len()), k.checked_mul(n), "PackedB::pack: b is not [k, n]");
        let mut packed = PackedB::zeros(k, n);
        let (offset, body) = (packed.offset, &mut packed.data);
        for p in 0..k {
            for j in 0..n {
                body[offset + ((j / NR) * k + p) * NR + j % NR] = b[p * n + j];
            }
        }
        packed
    }

    /// Zero panels for a `[k, n]` operand, their start on a 64-byte boundary of the allocation.
    fn zeros(k: usize, n: usize) -> PackedB {
        let data = vec![0.0f32; PackedB::len(k, n) + 16];
        let offset = (64 - (data.as_ptr() as usize) % 64) % 64 / 4;
        PackedB { k, n, data, offset }
    }

    /// Floats in the panels of a `[k, n]` operand.
    fn len(k: usize, n: usize) -> usize {
        n.div_ceil(NR) * k * NR
    }

    /// Element `(p, j)` of the unpacked matrix.
    pub fn get(&self, p: usize, j: usize) -> f32 {
        self.data[self.offset + ((j / NR) * self.k + p) * NR + j % NR]
    }

    fn body(&self) -> &[f32] {
        &self.data[self.offset..]
    }
}

/// A clone packs its panels again from the 64-byte boundary of its own allocation: the derived
/// clone would copy `offset` to a buffer at another address, and the aligned loads would fault.
impl Clone for PackedB {
    fn clone(&self) -> PackedB {
        let mut copy = PackedB::zeros(self.k, self.n);
        let len = PackedB::len(self.k, self.n);
        copy.data[copy.offset..copy.offset + len].copy_from_slice(&self.body()[..len]);
        copy
    }
}

/// What happens to `a · b` before it is stored: `min(max(a·b + bias + residual, lo), hi)`.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// `[n]`
    pub bias: &'a [f32],
    /// `[m, n]`, like the output.
    pub residual: Option<&'a [f32]>,
    pub lo: f32,
    pub hi: f32,
}

/// Where the rows of the left operand are.
#[derive(Clone, Copy)]
enum Lhs<'a> {
    /// `[m, k]` row-major.
    Dense(&'a [f32]),
    /// A stride-1 convolution's receptive fields, read in place from its padded input.
    Shifted(ShiftedRows<'a>),
}

/// The im2col rows of a stride-1 `kh` x `kw` convolution without the im2col copy: output pixel
/// `p = oy * ow + ox` (from `first`) has, at depth `(ky * kw + kx) * c + ch`, the input value
/// `x[((oy + ky) * wp + ox + kx) * c + ch]` of the zero-padded input `x` (`wp` pixels wide).
/// Within one output row, neighbouring pixels' taps are `c` floats apart, so the kernel reads
/// them with a stride, like the rows of a stored matrix.
#[derive(Clone, Copy, Debug)]
pub struct ShiftedRows<'a> {
    /// `[hp, wp, c]`: the input with the convolution's padding made of zeros.
    pub x: &'a [f32],
    pub wp: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    /// Output width (`wp - kw + 1`).
    pub ow: usize,
    /// The output pixel of row 0.
    pub first: usize,
}

impl<'a> Lhs<'a> {
    /// Rows `r0..r0 + rows`.
    fn rows(self, k: usize, r0: usize, rows: usize) -> Lhs<'a> {
        match self {
            Lhs::Dense(a) => Lhs::Dense(&a[r0 * k..(r0 + rows) * k]),
            Lhs::Shifted(s) => Lhs::Shifted(ShiftedRows { first: s.first + r0, ..s }),
        }
    }
}

/// `c = min(max(a · b + bias + residual, lo), hi)`, with `b` packed. `threads` > 1 splits the
/// rows over rayon's pool; each element is summed in the same order whatever the split.
///
/// # Shapes
/// `a`: `[m, k]` row-major; `b`: `[k, n]` packed; `c`: `[m, n]`.
///
/// # Panics
/// When the CPU lacks AVX-512 ([`available`]) or a shape disagrees.
pub fn matmul_packed(
    c: &mut [f32],
    a: &[f32],
    b: &PackedB,
    m: usize,
    epi: &Epilogue,
    threads: usize,
) {
    matmul_packed_uninit(as_uninit(c), a, b, m, epi, threads);
}

/// [`matmul_packed`] into memory that need not be initialised: every element of `c` is
/// written, so a caller may then take it as initialised (`Vec::set_len` after
/// `spare_capacity_mut`). A layer's output buffer then needs no zeroing first.
pub fn matmul_packed_uninit(
    c: &mut [MaybeUninit<f32>],
    a: &[f32],
    b: &PackedB,
    m: usize,
    epi: &Epilogue,
    threads: usize,
) {
    assert_eq!(Some(a.len()), m.checked_mul(b.k), "matmul_packed: a is not [m, k]");
    drive(c, Lhs::Dense(a), b, m, epi, threads);
}

/// An initialised slice seen as possibly uninitialised, for the kernels here, which only ever
/// store valid floats into it.
fn as_uninit(c: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; the callees write only initialised `f32`s, so `c` stays initialised.
    unsafe { &mut *(c as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// [`matmul_packed`] for `m` rows of a stride-1 convolution read in place from its padded
/// input ([`ShiftedRows`]): the GEMM of the convolution without an im2col block.
///
/// # Shapes
/// `a.x`: `[hp, wp, c]`; `b`: `[kh * kw * c, n]` packed; `c`: `[m, n]`.
///
/// # Panics
/// When the CPU lacks AVX-512, `b` is not `kh * kw * c` deep, or a row reads past `a.x`.
pub fn matmul_packed_shifted(
    c: &mut [f32],
    a: &ShiftedRows,
    b: &PackedB,
    m: usize,
    epi: &Epilogue,
    threads: usize,
) {
    matmul_packed_shifted_uninit(as_uninit(c), a, b, m, epi, threads);
}

/// [`matmul_packed_shifted`] into memory that need not be initialised: every element of `c` is
/// written (see [`matmul_packed_uninit`]).
pub fn matmul_packed_shifted_uninit(
    c: &mut [MaybeUninit<f32>],
    a: &ShiftedRows,
    b: &PackedB,
    m: usize,
    epi: &Epilogue,
    threads: usize,
) {
    assert_eq!(b.k, a.kh * a.kw * a.c, "matmul_packed_shifted: b is not [kh * kw * c, n]");
    assert!(
        a.kh > 0 && a.kw > 0 && a.ow > 0 && a.ow.checked_add(a.kw - 1) == Some(a.wp),
        "matmul_packed_shifted: ow {} with a {}x{} kernel on a {}-wide input",
        a.ow,
        a.kh,
        a.kw,
        a.wp
    );
    if m > 0 {
        // The last row's last tap is the furthest read (checked arithmetic: a wrapped sum
        // would pass the bound).
        let end = a.first.checked_add(m - 1).and_then(|last| {
            let (oy, ox) = (last / a.ow, last % a.ow);
            oy.checked_add(a.kh - 1)?.checked_mul(a.wp)?.checked_add(ox + a.kw)?.checked_mul(a.c)
        });
        assert!(
            end.is_some_and(|e| e <= a.x.len()),
            "matmul_packed_shifted: rows {}.. (m = {m}) read past a {}-float input",
            a.first,
            a.x.len()
        );
    }
    drive(c, Lhs::Shifted(*a), b, m, epi, threads);
}

/// Every element of `c` is written: the `k == 0` loop writes each one, and the kernel's first
/// depth block stores every row block of every panel before a later block loads any.
fn drive(c: &mut [MaybeUninit<f32>], a: Lhs, b: &PackedB, m: usize, epi: &Epilogue, threads: usize) {
    let (k, n) = (b.k, b.n);
    assert_eq!(Some(c.len()), m.checked_mul(n), "matmul_packed: c is not [m, n]");
    assert_eq!(epi.bias.len(), n, "matmul_packed: bias is not [n]");
    if let Some(r) = epi.residual {
        assert_eq!(r.len(), m * n, "matmul_packed: residual is not [m, n]");
    }
    assert!(cpu_has_it(), "matmul_packed needs AVX-512");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty product: the kernel's depth loop would never store.
        for (i, row) in c.chunks_exact_mut(n).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let r = epi.residual.map_or(0.0, |r| r[i * n + j]);
                v.write((epi.bias[j] + r).max(epi.lo).min(epi.hi));
            }
        }
        return;
    }
    if threads > 1 && m >= 2 * MR {
        use rayon::prelude::*;
        // Row blocks of whole micro-tiles, one or two per thread.
        let per = m.div_ceil(threads).div_ceil(MR) * MR;
        c.par_chunks_mut(per * n).enumerate().for_each(|(i, cc)| {
            let rows = cc.len() / n;
            let r0 = i * per;
            let e = Epilogue {
                residual: epi.residual.map(|r| &r[r0 * n..(r0 + rows) * n]),
                ..*epi
            };
            run(cc, a.rows(k, r0, rows), b, rows, &e);
        });
    } else {
        run(c, a, b, m, epi);
    }
}

fn run(c: &mut [MaybeUninit<f32>], a: Lhs, b: &PackedB, m: usize, epi: &Epilogue) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `drive` checked the CPU and every extent (and `matmul_packed_shifted` the
    // furthest read).
    unsafe {
        avx512::gemm(c, a, b, m, epi)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (c, a, b, m, epi);
        unreachable!("matmul_packed is only called where `available()`")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{Epilogue, Lhs, PackedB, KC, MR, NR, ROWS_OUTER_BYTES};

    /// The blocked loop: depth blocks of [`KC`] outside, then panels and row blocks of [`MR`]
    /// in the order that keeps the reused operand in cache.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm(c: &mut [MaybeUninit<f32>], a: Lhs, b: &PackedB, m: usize, epi: &Epilogue) {
        let (k, n) = (b.k, b.n);
        let bp = b.body().as_ptr();
        // Raw pointers only: parts of `c` are uninitialised until the first depth block.
        let cp = c.as_mut_ptr() as *mut f32;
        let rp = epi.residual.map(|r| r.as_ptr());
        // Rows a multiple of 4 KiB apart fall in the same L1 set, and 14 of them overflow its 8
        // ways: such blocks are copied to rows of `KC + 16` floats first (a cheap row copy).
        let alias = matches!(a, Lhs::Dense(_)) && k % 1024 == 0 && m > 1;
        // Per-thread buffers: a fresh one per call would be an mmap and page faults each time.
        thread_local! {
            static COPY: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let mut copy = if alias { COPY.take() } else { Vec::new() };
        if alias {
            copy.resize(m * (KC + 16), 0.0);
        }
        // Row blocks (first row, rows) of near-equal height (49 rows run as 13 + 12 + 12 + 12,
        // not 14 + 14 + 14 + 7: a short block pays for its panel loads with few multiplies);
        // shifted rows are blocked within each output row, where their stride is uniform.
        let mut blocks = Vec::with_capacity(m.div_ceil(MR) + 1);
        let mut split = |from: usize, len: usize| {
            let nb = len.div_ceil(MR);
            for b in 0..nb {
                let (s, e) = (b * len / nb, (b + 1) * len / nb);
                blocks.push((from + s, e - s));
            }
        };
        match a {
            Lhs::Dense(_) => split(0, m),
            Lhs::Shifted(sh) => {
                let mut i = 0;
                while i < m {
                    let len = (sh.ow - (sh.first + i) % sh.ow).min(m - i);
                    split(i, len);
                    i += len;
                }
            }
        }
        // Depth blocks of whole taps where taps are short, so that every row's run of
        // contiguous floats is as long as it can be.
        let depth = match a {
            Lhs::Shifted(sh) if sh.c <= KC => KC / sh.c * sh.c,
            _ => KC,
        };
        let mut p0 = 0;
        while p0 < k {
            let kc = depth.min(k - p0);
            let first = p0 == 0;
            let last = p0 + kc == k;
            let src = match a {
                Lhs::Dense(a) if alias => {
                    let ld = KC + 16;
                    for (i, row) in copy.chunks_exact_mut(ld).enumerate() {
                        row[..kc].copy_from_slice(&a[i * k + p0..i * k + p0 + kc]);
                    }
                    Src::Dense { a: copy.as_ptr(), lda: ld }
                }
                Lhs::Dense(a) => Src::Dense { a: a.as_ptr().add(p0), lda: k },
                Lhs::Shifted(sh) => Src::Shifted {
                    x: sh.x.as_ptr(),
                    wp: sh.wp,
                    c: sh.c,
                    kw: sh.kw,
                    ow: sh.ow,
                    first: sh.first,
                },
            };
            let panels = n.div_ceil(NR);
            let tiles: Vec<Tile> = (0..panels)
                .map(|j| {
                    let cols = NR.min(n - j * NR);
                    Tile {
                        b: bp.add((j * k + p0) * NR),
                        // The block after this one: the next panel's, or the first panel's of
                        // the next depth block (past the end after the last; prefetching never
                        // faults).
                        next_b: if j + 1 < panels {
                            bp.wrapping_add(((j + 1) * k + p0) * NR)
                        } else {
                            bp.wrapping_add((p0 + kc) * NR)
                        },
                        pf_a: j == 0 && matches!(src, Src::Dense { .. }),
                        src,
                        p0,
                        kc,
                        ldc: n,
                        m0: mask(cols, 0),
                        m1: mask(cols, 16),
                        first,
                        last,
                        bias: epi.bias.as_ptr().add(j * NR),
                        lo: _mm512_set1_ps(epi.lo),
                        hi: _mm512_set1_ps(epi.hi),
                    }
                })
                .collect();
            let block = |(i, rows): (usize, usize), j: usize, pf_b: bool| {
                let c = cp.add(i * n + j * NR);
                let r = rp.map(|r| r.add(i * n + j * NR));
                dispatch(rows, &tiles[j], pf_b, i, c, r);
            };
            if kc * n * 4 <= ROWS_OUTER_BYTES {
                // The depth block of every panel fits in L2: each row block runs across all
                // panels while its rows of `a` sit in L1, and the output is written row by row.
                for (bi, &rb) in blocks.iter().enumerate() {
                    for j in 0..panels {
                        block(rb, j, bi == 0);
                    }
                }
            } else {
                // One panel's depth block at a time sits in L1 while all row blocks pass it.
                for j in 0..panels {
                    for (bi, &rb) in blocks.iter().enumerate() {
                        block(rb, j, bi == 0);
                    }
                }
            }
            p0 += kc;
        }
        if alias {
            COPY.set(copy);
        }
    }

    /// Where a depth block's rows of the left operand are.
    #[derive(Clone, Copy)]
    enum Src {
        /// Row `i`, depth `p` of the block at `a + i * lda + p`.
        Dense { a: *const f32, lda: usize },
        /// Row `i` (output pixel `first + i`), global depth `g` as in [`super::ShiftedRows`].
        Shifted { x: *const f32, wp: usize, c: usize, kw: usize, ow: usize, first: usize },
    }

    /// Lanes `from..from + 16` of a panel that are inside the `cols` real columns.
    fn mask(cols: usize, from: usize) -> __mmask16 {
        let live = cols.saturating_sub(from).min(16);
        ((1u32 << live) - 1) as __mmask16
    }

    /// What every micro-tile of one (depth block, panel) pair shares.
    pub(super) struct Tile {
        b: *const f32,
        /// The panel block needed next, fetched into L1 during this block's first row block.
        next_b: *const f32,
        /// Whether the rows of `a` are new (the first panel): the next row block's are then
        /// fetched while this one runs.
        pf_a: bool,
        src: Src,
        /// The block's first depth.
        p0: usize,
        kc: usize,
        ldc: usize,
        m0: __mmask16,
        m1: __mmask16,
        first: bool,
        last: bool,
        bias: *const f32,
        lo: __m512,
        hi: __m512,
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dispatch(
        rows: usize,
        t: &Tile,
        pf_b: bool,
        row0: usize,
        c: *mut f32,
        r: Option<*const f32>,
    ) {
        if t.m1 == 0 {
            // A panel of at most 16 real columns: half the multiplies.
            return match rows {
                14 => half::<14>(t, pf_b, row0, c, r),
                13 => half::<13>(t, pf_b, row0, c, r),
                12 => half::<12>(t, pf_b, row0, c, r),
                11 => half::<11>(t, pf_b, row0, c, r),
                10 => half::<10>(t, pf_b, row0, c, r),
                9 => half::<9>(t, pf_b, row0, c, r),
                8 => half::<8>(t, pf_b, row0, c, r),
                7 => half::<7>(t, pf_b, row0, c, r),
                6 => half::<6>(t, pf_b, row0, c, r),
                5 => half::<5>(t, pf_b, row0, c, r),
                4 => half::<4>(t, pf_b, row0, c, r),
                3 => half::<3>(t, pf_b, row0, c, r),
                2 => half::<2>(t, pf_b, row0, c, r),
                1 => half::<1>(t, pf_b, row0, c, r),
                _ => unreachable!("row block of {rows} > MR = {MR}"),
            };
        }
        match rows {
            14 => micro::<14>(t, pf_b, row0, c, r),
            13 => micro::<13>(t, pf_b, row0, c, r),
            12 => micro::<12>(t, pf_b, row0, c, r),
            11 => micro::<11>(t, pf_b, row0, c, r),
            10 => micro::<10>(t, pf_b, row0, c, r),
            9 => micro::<9>(t, pf_b, row0, c, r),
            8 => micro::<8>(t, pf_b, row0, c, r),
            7 => micro::<7>(t, pf_b, row0, c, r),
            6 => micro::<6>(t, pf_b, row0, c, r),
            5 => micro::<5>(t, pf_b, row0, c, r),
            4 => micro::<4>(t, pf_b, row0, c, r),
            3 => micro::<3>(t, pf_b, row0, c, r),
            2 => micro::<2>(t, pf_b, row0, c, r),
            1 => micro::<1>(t, pf_b, row0, c, r),
            _ => unreachable!("row block of {rows} > MR = {MR}"),
        }
    }

    /// Step `p`'s share of the software prefetches: the two lines of the next panel block's row
    /// `p` (when `pf_b`), and one line of the next row block's `a` (when `t.pf_a`, which only
    /// dense rows have), row `p % rows`, floats `16 * (p / rows)..` of its depth block.
    #[inline(always)]
    unsafe fn prefetch(t: &Tile, pf_b: bool, rows: usize, row0: usize, p: usize) {
        if pf_b {
            let nb = t.next_b.wrapping_add(p * NR);
            _mm_prefetch::<_MM_HINT_T1>(nb as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(nb.wrapping_add(16) as *const i8);
        }
        if let (true, Src::Dense { a, lda }) = (t.pf_a, t.src) {
            let seg = 16 * (p / rows);
            if seg < t.kc {
                let na = a.wrapping_add((row0 + rows + p % rows) * lda + seg);
                _mm_prefetch::<_MM_HINT_T0>(na as *const i8);
            }
        }
    }

    /// Runs `$step!(p, i => element)` for every depth `p` of the block, the element of row
    /// `i` at depth `p` read by stride (one base register for all rows), over the whole block
    /// for dense rows and tap by tap for shifted ones, with the prefetches where the block asks
    /// for them.
    macro_rules! depth_loop {
        ($t:expr, $pf_b:expr, $row0:expr, $R:expr, $step:ident) => {{
            match $t.src {
                Src::Dense { a, lda } => {
                    let a0 = a.add($row0 * lda);
                    if $pf_b || $t.pf_a {
                        for p in 0..$t.kc {
                            prefetch($t, $pf_b, $R, $row0, p);
                            $step!(p, i => *a0.add(i * lda + p));
                        }
                    } else {
                        for p in 0..$t.kc {
                            $step!(p, i => *a0.add(i * lda + p));
                        }
                    }
                }
                Src::Shifted { x, wp, c, kw, ow, first } => {
                    // One run per tap: the block's rows are neighbours in one output row, so
                    // tap (ky, kx) of row i is `c` floats after row i - 1's.
                    let q = first + $row0;
                    let (oy, ox) = (q / ow, q % ow);
                    let mut p = 0;
                    while p < $t.kc {
                        let g = $t.p0 + p;
                        let (tap, o) = (g / c, g % c);
                        let a0 = x.add(((oy + tap / kw) * wp + ox + tap % kw) * c + o);
                        let len = (c - o).min($t.kc - p);
                        if $pf_b {
                            for q in 0..len {
                                prefetch($t, true, $R, $row0, p + q);
                                $step!(p + q, i => *a0.add(i * c + q));
                            }
                        } else {
                            for q in 0..len {
                                $step!(p + q, i => *a0.add(i * c + q));
                            }
                        }
                        p += len;
                    }
                }
            }
        }};
    }

    /// One `R` x [`NR`] output tile over one depth block: rows `row0..row0 + R` of the left
    /// operand (`t.src`), the panel block from `t.b`, the output at `c` (row stride `ldc`).
    #[inline(always)]
    unsafe fn micro<const R: usize>(
        t: &Tile,
        pf_b: bool,
        row0: usize,
        c: *mut f32,
        r: Option<*const f32>,
    ) {
        // The bias starts the sum in the first depth block (so the last adds nothing).
        let (bias0, bias1) = if t.first {
            (
                _mm512_maskz_loadu_ps(t.m0, t.bias),
                _mm512_maskz_loadu_ps(t.m1, t.bias.add(16)),
            )
        } else {
            (_mm512_setzero_ps(), _mm512_setzero_ps())
        };
        let mut acc0 = [bias0; R];
        let mut acc1 = [bias1; R];
        // A macro, not a closure: closures do not inherit `target_feature`, and the
        // intrinsics would become calls.
        macro_rules! step {
            ($p:expr, $i:ident => $x:expr) => {{
                let b = t.b.add($p * NR);
                let b0 = _mm512_load_ps(b);
                let b1 = _mm512_load_ps(b.add(16));
                for $i in 0..R {
                    let x = _mm512_set1_ps($x);
                    acc0[$i] = _mm512_fmadd_ps(x, b0, acc0[$i]);
                    acc1[$i] = _mm512_fmadd_ps(x, b1, acc1[$i]);
                }
            }};
        }
        depth_loop!(t, pf_b, row0, R, step);
        for i in 0..R {
            let ci = c.add(i * t.ldc);
            let (mut v0, mut v1) = (acc0[i], acc1[i]);
            if !t.first {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(t.m0, ci));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(t.m1, ci.add(16)));
            }
            if t.last {
                if let Some(r) = r {
                    let ri = r.add(i * t.ldc);
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(t.m0, ri));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(t.m1, ri.add(16)));
                }
                v0 = _mm512_min_ps(_mm512_max_ps(v0, t.lo), t.hi);
                v1 = _mm512_min_ps(_mm512_max_ps(v1, t.lo), t.hi);
            }
            _mm512_mask_storeu_ps(ci, t.m0, v0);
            _mm512_mask_storeu_ps(ci.add(16), t.m1, v1);
        }
    }

    /// [`micro`] for a panel whose real columns all lie in its first 16 lanes.
    #[inline(always)]
    unsafe fn half<const R: usize>(
        t: &Tile,
        pf_b: bool,
        row0: usize,
        c: *mut f32,
        r: Option<*const f32>,
    ) {
        let bias = if t.first {
            _mm512_maskz_loadu_ps(t.m0, t.bias)
        } else {
            _mm512_setzero_ps()
        };
        let mut acc = [bias; R];
        macro_rules! step {
            ($p:expr, $i:ident => $x:expr) => {{
                let b0 = _mm512_load_ps(t.b.add($p * NR));
                for $i in 0..R {
                    acc[$i] = _mm512_fmadd_ps(_mm512_set1_ps($x), b0, acc[$i]);
                }
            }};
        }
        depth_loop!(t, pf_b, row0, R, step);
        for (i, &v) in acc.iter().enumerate() {
            let ci = c.add(i * t.ldc);
            let mut v = v;
            if !t.first {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(t.m0, ci));
            }
            if t.last {
                if let Some(r) = r {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(t.m0, r.add(i * t.ldc)));
                }
                v = _mm512_min_ps(_mm512_max_ps(v, t.lo), t.hi);
            }
            _mm512_mask_storeu_ps(ci, t.m0, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform values in [-0.5, 0.5) from a 64-bit LCG (Knuth's MMIX constants).
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    /// Shifted rows against an f64 loop over the same padded input: taps shorter than a depth
    /// block (whole taps per block) and longer (a tap split between blocks), row ranges that
    /// start and end inside output rows, a column tail, two threads.
    #[test]
    fn shifted_matches_f64_reference() {
        if !available() {
            eprintln!("SKIP shifted_matches_f64_reference: this CPU has no AVX-512");
            return;
        }
        let mut next = uniform(11);
        // (output h, w, channels, kernel, n, first pixel, rows, threads)
        for &(oh, ow, ch, kk, n, first, m, threads) in
            &[(5, 7, 5, 3, 40, 0, 35, 1), (6, 17, 16, 3, 16, 3, 80, 2), (3, 4, 300, 3, 33, 5, 6, 1), (4, 9, 8, 5, 70, 9, 20, 1)]
        {
            let (hp, wp) = (oh + kk - 1, ow + kk - 1);
            let x: Vec<f32> = (0..hp * wp * ch).map(|_| next()).collect();
            let k = kk * kk * ch;
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let packed = PackedB::pack(&b, k, n);
            let rows = ShiftedRows { x: &x, wp, c: ch, kh: kk, kw: kk, ow, first };
            let mut c = vec![f32::NAN; m * n];
            let epi = Epilogue { bias: &bias, residual: None, lo: f32::NEG_INFINITY, hi: f32::INFINITY };
            matmul_packed_shifted(&mut c, &rows, &packed, m, &epi, threads);
            for r in 0..m {
                let (oy, ox) = ((first + r) / ow, (first + r) % ow);
                for j in 0..n {
                    let mut want = bias[j] as f64;
                    for ky in 0..kk {
                        for kx in 0..kk {
                            for q in 0..ch {
                                let a = x[((oy + ky) * wp + ox + kx) * ch + q] as f64;
                                want += a * b[((ky * kk + kx) * ch + q) * n + j] as f64;
                            }
                        }
                    }
                    let got = c[r * n + j] as f64;
                    assert!((got - want).abs() < 1e-4, "{oh}x{ow}x{ch} k{kk} n={n} row {r}, col {j}: {got} vs {want}");
                }
            }
        }
    }

    /// A clone's panels start on its own 64-byte boundary (a copied offset made the aligned
    /// loads fault).
    #[test]
    fn a_clone_multiplies_like_the_original() {
        if !available() {
            eprintln!("SKIP a_clone_multiplies_like_the_original: this CPU has no AVX-512");
            return;
        }
        let mut next = uniform(3);
        let (m, k, n) = (20, 40, 50);
        let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
        let bias = vec![0.0; n];
        let epi = Epilogue { bias: &bias, residual: None, lo: f32::NEG_INFINITY, hi: f32::INFINITY };
        let packed = PackedB::pack(&b, k, n);
        let mut want = vec![0.0; m * n];
        matmul_packed(&mut want, &a, &packed, m, &epi, 1);
        // Several clones, so that some land on a different alignment than the original.
        for _ in 0..8 {
            let copy = packed.clone();
            let mut got = vec![0.0; m * n];
            matmul_packed(&mut got, &a, &copy, m, &epi, 1);
            assert_eq!(got, want);
        }
    }

    #[test]
    #[should_panic(expected = "read past")]
    fn shifted_refuses_rows_whose_index_overflows() {
        // A row index that wraps in release builds must not pass the bound.
        let packed = PackedB::pack(&[1.0], 1, 1);
        let x = [0.0; 4];
        let rows = ShiftedRows { x: &x, wp: 1, c: 1, kh: 1, kw: 1, ow: 1, first: usize::MAX };
        let epi = Epilogue { bias: &[0.0], residual: None, lo: f32::NEG_INFINITY, hi: f32::INFINITY };
        matmul_packed_shifted(&mut [0.0; 1], &rows, &packed, 1, &epi, 1);
    }

    #[test]
    #[should_panic(expected = "read")]
    fn shifted_refuses_rows_past_the_input() {
        // Checked before anything runs, on any CPU: 3 output rows of 2 need a 4x4 input.
        let packed = PackedB::pack(&[1.0; 9], 9, 1);
        let x = [0.0; 12];
        let rows = ShiftedRows { x: &x, wp: 4, c: 1, kh: 3, kw: 3, ow: 2, first: 0 };
        let epi = Epilogue { bias: &[0.0], residual: None, lo: f32::NEG_INFINITY, hi: f32::INFINITY };
        matmul_packed_shifted(&mut [0.0; 6], &rows, &packed, 6, &epi, 1);
    }

    /// The packed kernel against an f64 triple loop, over shapes that hit every row-block size,
    /// a column tail in each half of a panel, several depth blocks and a residual.
    #[test]
    fn packed_matches_f64_reference() {
        if !available() {
            eprintln!("SKIP packed_matches_f64_reference: this CPU has no AVX-512");
            return;
        }
        let mut next = uniform(7);
        for &(m, k, n, threads) in &[
            (3, 0, 5, 1),
            (1, 1, 1, 1),
            (15, 3, 7, 1),
            (30, 20, 8, 1),
            (29, 130, 40, 1),
            (14, 257, 64, 1),
            (20, 2048, 33, 1),
            (57, 300, 70, 2),
            (200, 64, 32, 2),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let res: Vec<f32> = (0..m * n).map(|_| next()).collect();
            let packed = PackedB::pack(&b, k, n);
            for p in 0..k {
                for j in 0..n {
                    assert_eq!(packed.get(p, j), b[p * n + j]);
                }
            }
            for residual in [None, Some(&res[..])] {
                let (lo, hi) = (-0.3, 0.6);
                let mut c = vec![f32::NAN; m * n];
                matmul_packed(
                    &mut c,
                    &a,
                    &packed,
                    m,
                    &Epilogue {
                        bias: &bias,
                        residual,
                        lo,
                        hi,
                    },
                    threads,
                );
                for i in 0..m {
                    for j in 0..n {
                        let mut s = bias[j] as f64 + residual.map_or(0.0, |r| r[i * n + j] as f64);
                        for p in 0..k {
                            s += a[i * k + p] as f64 * b[p * n + j] as f64;
                        }
                        let want = s.clamp(lo as f64, hi as f64);
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "m={m} k={k} n={n} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
