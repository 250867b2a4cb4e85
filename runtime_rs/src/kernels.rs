//! CPU kernels of the compiled model, with exactly the numpy interpreter's semantics
//! (monologue_compile/interpreter.py): f32 activations and accumulation, int8 weights used as
//! int8 values times f32 scales (per output row, or per group of K), never dequantized up front.
//!
//! Activations are (1, T, ...) tensors. A kernel sees each one as a `View`: token t's elements are
//! `data[t * stride + off ..][..len]`, so a slice of a merged q/k/v projection is read in place.
//!
//! SIMD: x86_64 AVX2+FMA (detected at run time) natively, SIMD128 on wasm32 when the crate is
//! built with `-C target-feature=+simd128`, plain Rust otherwise. Natively, large matmuls are
//! split over the cores with scoped threads.

/// Token t's elements of a tensor: `data[t * stride + off..][..len]` (stride 0: the same for every t).
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub off: usize,
    pub stride: usize,
    pub len: usize,
}

impl View {
    #[inline]
    pub fn row<'a>(&self, data: &'a [f32], t: usize) -> &'a [f32] {
        let s = t * self.stride + self.off;
        &data[s..s + self.len]
    }
    #[inline]
    pub fn row_mut<'a>(&self, data: &'a mut [f32], t: usize) -> &'a mut [f32] {
        let s = t * self.stride + self.off;
        &mut data[s..s + self.len]
    }
}

pub use crate::elementwise::{binary, unary, Binary, Unary};
use crate::elementwise::{binary_row, unary_row};

/// A tensor operand of an epilogue step. Element j of token t's row reads
/// `view.row(data, t)[(j / repeat) % view.len]`: a same-shape tensor (repeat 1), a weight
/// broadcast over T (stride 0), a scalar (len 1), or a per-head value over each head's row.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub view: View,
    pub repeat: usize,
}

/// One elementwise step of an epilogue (interpreter.apply_step).
#[derive(Clone, Copy)]
pub enum Step<'a> {
    Unary(Unary),
    /// v op scalar, or scalar op v when reversed
    Scalar(Binary, f32, bool),
    /// v op operand, or operand op v when reversed
    Tensor(Binary, Operand<'a>, bool),
    /// v op the element this kernel is about to overwrite (a same-shape operand at this view of
    /// the output buffer itself: the memory plan's in-place residual add), or reversed
    Own(Binary, View, bool),
    /// RMSNorm over each run of `width` elements (the last axis), times an optional weight
    RmsNorm { eps: f32, width: usize, weight: Option<&'a [f32]> },
    /// LayerNorm over each run of `width` elements, times an optional weight, plus an optional bias
    LayerNorm { eps: f32, width: usize, weight: Option<&'a [f32]>, bias: Option<&'a [f32]> },
    /// softmax over each run of `width` elements
    Softmax { width: usize },
}

/// x / sqrt(mean(x^2) + eps) [* w], in place.
pub fn rms_norm_in_place(x: &mut [f32], eps: f32, weight: Option<&[f32]>) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    match weight {
        Some(w) => x.iter_mut().zip(w).for_each(|(v, w)| *v = *v * r * w),
        None => x.iter_mut().for_each(|v| *v *= r),
    }
}

/// (x - mean) / sqrt(var + eps) [* w] [+ b], in place; two passes, as interpreter.layer_norm.
pub fn layer_norm_in_place(x: &mut [f32], eps: f32, weight: Option<&[f32]>, bias: Option<&[f32]>) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    x.iter_mut().for_each(|v| *v -= mean);
    let var = x.iter().map(|v| v * v).sum::<f32>() / n;
    let r = 1.0 / (var + eps).sqrt();
    x.iter_mut().for_each(|v| *v *= r);
    if let Some(w) = weight {
        x.iter_mut().zip(w).for_each(|(v, w)| *v *= w);
    }
    if let Some(b) = bias {
        x.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

/// Apply the epilogue steps to token t's output row.
pub fn apply_steps(row: &mut [f32], t: usize, steps: &[Step]) {
    apply_steps_over(row, t, steps, &[])
}

/// apply_steps for a kernel that builds row t apart and stores it after: `own` is its output
/// buffer before that store, what `Step::Own` reads (`&[]` for kernels that take no such step).
pub fn apply_steps_over(row: &mut [f32], t: usize, steps: &[Step], own: &[f32]) {
    // a chain ending in a pick by one value per token is 0 where that value is, whatever came before
    // (an expert's activation on a token its router did not pick: passes/gate.py)
    if let Some(Step::Tensor(Binary::Pick, op, false)) = steps.last() {
        if op.view.len == 1 && op.view.row(op.data, t)[0] == 0.0 {
            row.fill(0.0);
            return;
        }
    }
    for step in steps {
        match *step {
            Step::Own(f, view, rev) => {
                let o = view.row(own, t);
                binary_row(f, rev, row, |j| o[j]);
            }
            Step::Unary(f) => unary_row(f, row),
            Step::Scalar(f, s, rev) => binary_row(f, rev, row, |_| s),
            Step::Tensor(f, op, rev) => {
                let o = op.view.row(op.data, t);
                let rep = op.repeat.max(1);
                if rep == 1 && o.len() == row.len() {
                    // a same-shape operand (residual adds, gates): no index arithmetic per element
                    binary_row(f, rev, row, |j| o[j]);
                } else if o.len() == 1 {
                    // one value for the row (an expert's routing weight): no division per element
                    let v = o[0];
                    binary_row(f, rev, row, |_| v);
                } else {
                    binary_row(f, rev, row, |j| o[(j / rep) % o.len()]);
                }
            }
            Step::RmsNorm { eps, width, weight } => {
                for part in row.chunks_mut(width) {
                    rms_norm_in_place(part, eps, weight);
                }
            }
            Step::LayerNorm { eps, width, weight, bias } => {
                for part in row.chunks_mut(width) {
                    layer_norm_in_place(part, eps, weight, bias);
                }
            }
            Step::Softmax { width } => {
                for part in row.chunks_mut(width) {
                    let m = part.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
                    part.iter_mut().for_each(|v| *v = crate::math::expf(*v - m));
                    let s = part.iter().sum::<f32>();
                    part.iter_mut().for_each(|v| *v /= s);
                }
            }
        }
    }
}

// --- int8 dot products: fixed-point activations ---------------------------------------------------

/// The int8 matmul's arithmetic, the same on every target: the activations of each quantization
/// group become 24-bit fixed point (the group's max |x| at 2^23), split into two i16 halves
/// v = hi * 4096 + lo, and the dot products run on 16-bit multiplies with exact i32 sums
/// (i32x4.dot_i16x8_s on wasm SIMD128, vpmaddwd on AVX2). Integer sums make every target's matmul
/// give the same bits for the same input, and the error is f32's own (2^-24 of the group's
/// largest value). DESIGN.md asks for f32 accumulation; this is as precise and faster. Measured per
/// core against f32 products: V8 1.8 -> 16 G multiply-adds/s (it widens int8 to f32 slowly),
/// AVX2 20 -> 28-35 in cache.
pub(crate) mod fixed {
    use super::Layout;

    /// Each run of `group` values as v = hi * 4096 + lo (|v| <= 2^23), in units of
    /// `unit[run]` = max |x| of the run / 2^23.
    pub struct Fixed {
        pub hi: Vec<i16>,
        pub lo: Vec<i16>,
        pub unit: Vec<f32>,
        /// The byte planes of `Layout::Lanes8`'s x86 kernels, where the matrix is in that layout.
        pub planes: Option<Planes>,
    }

    /// Each run of `group` values of xs in fixed point (`Q8Input::new` splits a prompt's tokens
    /// over the cores with `split_into`).
    #[cfg(test)]
    pub fn split(xs: &[f32], group: usize) -> Fixed {
        let mut x = Fixed { hi: vec![0i16; xs.len()], lo: vec![0i16; xs.len()], unit: vec![0f32; (xs.len() + group.max(1) - 1) / group.max(1)], planes: None };
        split_into(xs, group, &mut x.hi, &mut x.lo, &mut x.unit);
        x
    }

    /// `split` into hi, lo (zeroed, xs.len() each) and unit (one per run).
    pub fn split_into(xs: &[f32], group: usize, hi: &mut [i16], lo: &mut [i16], unit: &mut [f32]) {
        for (g, (run, u)) in xs.chunks(group.max(1)).zip(unit).enumerate() {
            let m = max_abs(run);
            if !m.is_finite() {
                *u = f32::NAN; // inf or NaN in, NaN out, as f32 products would give
            } else if m < 1e-30 {
                *u = 0.0; // (2^23 / m would overflow; such a run adds nothing to a dot)
            } else {
                *u = m / 8388608.0;
                let (a, b) = (g * group, g * group + run.len());
                to_fixed(run, 8388608.0 / m, &mut hi[a..b], &mut lo[a..b]);
            }
        }
    }

    /// `Layout::Lanes8`'s x86 kernels multiply bytes (vpdpbusd: four u8 x i8 products into each
    /// i32 lane): each fixed-point value of a group as three digits, v = d2 * 65536 + d1 * 256 + d0
    /// with d0, d1 in 0..=255 and d2 in -128..=127, against the stored weights (q + 8, 1..=15): 24
    /// vpdpbusd per 8 x 32 weights where hi and lo take 32 vpdpwssd.
    /// The digits reach -2^23..2^23 - 1, not the group's +2^23 (its largest positive value), so a
    /// group holding +2^23 is negated: its sums are then -S, and its unit is negated with them
    /// (-f32(S) * -u = f32(S) * u, the same bits). A group holding both +-2^23 keeps 2^23 - 1 in
    /// place of +2^23, and the kernel adds those columns' q back (`Terms::wide`).
    pub struct Planes {
        /// token i's digits at [3 * i * width..], by column octet: d0 of columns 8j..8j + 8, then
        /// their d1, then their d2 (each one 64-bit broadcast in the kernels)
        pub digits: Vec<u8>,
        /// per token and group
        pub terms: Vec<Terms>,
    }

    /// One token's group in `Planes`: its unit (negated with the group), 8 * the sum of each
    /// digit plane (the weights are stored plus 8) and those sums' total (o2 * 65536 + o1 * 256
    /// + o0, wrapping), and whether it holds both +-2^23.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Terms {
        pub unit: f32,
        pub offset: [i32; 3],
        pub total: i32,
        pub wide: bool,
    }

    /// `Planes` of t tokens of `width` columns in groups of `group` (multiples of 8).
    #[inline(always)]
    pub fn planes(x: &Fixed, t: usize, width: usize, group: usize) -> Planes {
        let mut p = Planes { digits: vec![0u8; 3 * t * width], terms: vec![Terms::default(); t * (width / group)] };
        planes_into(&x.hi[..t * width], &x.lo[..t * width], &x.unit[..t * (width / group)], width, group, &mut p.digits, &mut p.terms);
        p
    }

    /// `planes` of the tokens whose hi, lo and unit these are, into digits and terms (theirs).
    #[inline(always)]
    pub fn planes_into(hi: &[i16], lo: &[i16], unit: &[f32], width: usize, group: usize, digits: &mut [u8], terms: &mut [Terms]) {
        const TOP: i32 = 1 << 23;
        let groups = width / group;
        let t = hi.len() / width;
        let mut w = vec![0i32; group];
        // (plain loops over whole slices: LLVM vectorizes each)
        for i in 0..t {
            for g in 0..groups {
                let at = i * width + g * group;
                for (w, (h, l)) in w.iter_mut().zip(hi[at..at + group].iter().zip(&lo[at..at + group])) {
                    *w = *h as i32 * 4096 + *l as i32;
                }
                let max = w.iter().fold(0, |m, &v| m.max(v));
                let min = w.iter().fold(0, |m, &v| m.min(v));
                let sign = if max == TOP && min > -TOP { -1 } else { 1 };
                for w in w.iter_mut() {
                    *w = (sign * *w).min(TOP - 1);
                }
                let mut offset = [0i32; 3];
                for w in w.iter() {
                    offset[0] += w & 0xff;
                    offset[1] += (w >> 8) & 0xff;
                    offset[2] += w >> 16;
                }
                for (d, w) in digits[3 * at..3 * (at + group)].chunks_exact_mut(24).zip(w.chunks_exact(8)) {
                    let plane = |shift: u32| u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7].map(|i| (w[i] >> shift) as u8)).to_le_bytes();
                    d[..8].copy_from_slice(&plane(0));
                    d[8..16].copy_from_slice(&plane(8));
                    d[16..].copy_from_slice(&plane(16));
                }
                let offset = offset.map(|o| 8 * o);
                let total = offset[2].wrapping_shl(16).wrapping_add(offset[1] << 8).wrapping_add(offset[0]);
                let unit = unit[i * groups + g];
                terms[i * groups + g] = Terms { unit: if sign < 0 { -unit } else { unit }, offset, total, wide: max == TOP && min == -TOP };
            }
        }
    }

    /// max |x|; NaN when x holds a NaN.
    fn max_abs(x: &[f32]) -> f32 {
        let mut m = 0f32;
        #[allow(unused_mut)] // advanced by the SIMD loop only
        let mut i = 0;
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*; // SSE2, in every x86_64
            // four lanes of max |x| and of "a NaN was seen" (maxps drops a NaN operand); a max
            // is exact in any order. (With the scalar loop alone, one value a time, the input's
            // split took 2.6% of a one-thread int4 decode token on the 0.5B model; now 0.7%.)
            // SAFETY: loads stay inside x (i + 4 <= n).
            unsafe {
                let (mut mv, mut nan) = (_mm_setzero_ps(), _mm_setzero_ps());
                let abs = _mm_castsi128_ps(_mm_set1_epi32(i32::MAX));
                while i + 4 <= x.len() {
                    let v = _mm_and_ps(_mm_loadu_ps(x.as_ptr().add(i)), abs);
                    mv = _mm_max_ps(mv, v);
                    nan = _mm_or_ps(nan, _mm_cmpunord_ps(v, v));
                    i += 4;
                }
                if _mm_movemask_ps(nan) != 0 {
                    return f32::NAN;
                }
                let mut lanes = [0f32; 4];
                _mm_storeu_ps(lanes.as_mut_ptr(), mv);
                m = lanes.iter().fold(m, |m, &v| if v > m { v } else { m });
            }
        }
        for &v in &x[i..] {
            // not f32::max: a libm call on wasm, and it would skip a NaN
            let a = v.abs();
            if a > m {
                m = a;
            } else if a.is_nan() {
                return a;
            }
        }
        m
    }

    /// v = round(x * s) as hi * 4096 + lo.
    fn to_fixed(x: &[f32], s: f32, hi: &mut [i16], lo: &mut [i16]) {
        #[allow(unused_mut)] // advanced by the SIMD loops only
        let mut i = 0;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            use core::arch::wasm32::*;
            let sv = f32x4_splat(s);
            let half = |v: v128| {
                let v = i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(v, sv)));
                let h = i32x4_shr(i32x4_add(v, i32x4_splat(2048)), 12);
                (h, i32x4_sub(v, i32x4_shl(h, 12)))
            };
            // SAFETY: loads and stores stay inside x, hi and lo (i + 8 <= n, all of length n).
            unsafe {
                while i + 8 <= x.len() {
                    let (h0, l0) = half(v128_load(x.as_ptr().add(i) as *const v128));
                    let (h1, l1) = half(v128_load(x.as_ptr().add(i + 4) as *const v128));
                    v128_store(hi.as_mut_ptr().add(i) as *mut v128, i16x8_narrow_i32x4(h0, h1));
                    v128_store(lo.as_mut_ptr().add(i) as *mut v128, i16x8_narrow_i32x4(l0, l1));
                    i += 8;
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*; // SSE2, in every x86_64
            // SAFETY: loads and stores stay inside x, hi and lo (i + 8 <= n, all of length n).
            unsafe {
                let sv = _mm_set1_ps(s);
                let half = |v: __m128| {
                    let v = _mm_cvtps_epi32(_mm_mul_ps(v, sv)); // rounds to nearest
                    let h = _mm_srai_epi32(_mm_add_epi32(v, _mm_set1_epi32(2048)), 12);
                    (h, _mm_sub_epi32(v, _mm_slli_epi32(h, 12)))
                };
                while i + 8 <= x.len() {
                    let (h0, l0) = half(_mm_loadu_ps(x.as_ptr().add(i)));
                    let (h1, l1) = half(_mm_loadu_ps(x.as_ptr().add(i + 4)));
                    _mm_storeu_si128(hi.as_mut_ptr().add(i) as *mut __m128i, _mm_packs_epi32(h0, h1));
                    _mm_storeu_si128(lo.as_mut_ptr().add(i) as *mut __m128i, _mm_packs_epi32(l0, l1));
                    i += 8;
                }
            }
        }
        for j in i..x.len() {
            // half to even, as the SIMD loops round (f32x4.nearest, cvtps2dq)
            let v = crate::math::round_half_even((x[j] * s) as f64) as i32;
            let h = (v + 2048) >> 12;
            hi[j] = h as i16;
            lo[j] = (v - (h << 12)) as i16;
        }
    }

    /// i32 sums run over at most TILE values, cut at multiples of TILE (an i32 sum of 2048
    /// products of |hi|, |lo| <= 2048 and |q| <= 128 stays below 2^29), then go to f32: any width
    /// is safe, and the cuts are the same for every layout and target. TILE is also the width of
    /// the column tiles the four-row kernels walk (see `rows`).
    pub const TILE: usize = 2048;

    /// The pieces of columns [a, b) cut at multiples of `step`.
    pub(crate) fn pieces(a: usize, b: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
        let mut s = a;
        core::iter::from_fn(move || {
            let e = b.min((s / step + 1) * step);
            let piece = (s, e);
            s = e;
            if piece.0 < b { Some(piece) } else { None }
        })
    }

    /// The integer kernels of one target: (sum hi*q, sum lo*q) for one weight row, and for the
    /// four rows of a block in the blocked layout (`block_rows`; hi.len() a multiple of 16).
    pub trait Kernels {
        fn dot(&self, hi: &[i16], lo: &[i16], q: &[i8]) -> (i32, i32);
        fn dot4(&self, hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4];
        /// dot4 over the int4 form of a block (`block_rows_q4`): half the bytes, the same sums.
        fn dot4_q4(&self, hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4];
        /// One token against one block over whole groups of `group` values (`unit.len()` of them,
        /// hi.len() = unit.len() * group), int8 or int4: for each group g in order, row j's sums
        /// (a, b) over it go to f32 and `ys[j] += (a * 4096 + b) * unit[g] * scale[j][g]`, left to
        /// right (`rows` with groups inside a tile; the SIMD kernels make the same f32 operations, four
        /// rows at a time).
        #[allow(clippy::too_many_arguments)]
        fn groups4(&self, hi: &[i16], lo: &[i16], block: &[i8], group: usize, int4: bool, unit: &[f32], scale: [&[f32]; 4], ys: &mut [f32; 4]) {
            let per = if int4 { 2 * group } else { 4 * group };
            for (g, u) in unit.iter().enumerate() {
                let (h, l, w) = (&hi[g * group..(g + 1) * group], &lo[g * group..(g + 1) * group], &block[g * per..(g + 1) * per]);
                let d = if int4 { self.dot4_q4(h, l, w) } else { self.dot4(h, l, w) };
                for (j, (a, b)) in d.iter().enumerate() {
                    ys[j] += (*a as f32 * 4096.0 + *b as f32) * u * scale[j][g];
                }
            }
        }
        /// Prefill's inner step: two tokens' activations `x[0]`, `x[1]` (each hi, lo over the
        /// columns c0.. of one tile) against one block's tile (int4: `block_rows_q4` form), each
        /// weight loaded and unpacked once for both tokens. Piece by piece (the tile cut at
        /// multiples of `group`), each (row, token) lane adds its i32 sums to its running f32 sums
        /// `l.a`, `l.b`, and at the end of a group adds (a * 4096 + b) * unit * scale to `l.y`:
        /// `rows`' arithmetic, in the same order. `unit[token]` and `scale[row]` are per group.
        #[allow(clippy::too_many_arguments)]
        fn tile_x2(&self, x: [(&[i16], &[i16]); 2], tile: &[i8], int4: bool, c0: usize, group: usize, unit: [&[f32]; 2], scale: [&[f32]; 4], l: &mut Lanes) {
            let bytes = |v: usize| if int4 { v / 2 } else { v };
            for (s, e) in pieces(c0, c0 + x[0].0.len(), group) {
                let (g, w) = (s / group, &tile[bytes(4 * (s - c0))..bytes(4 * (e - c0))]);
                for (token, (h, lo)) in x.iter().enumerate() {
                    let (h, lo) = (&h[s - c0..e - c0], &lo[s - c0..e - c0]);
                    let d = if int4 { self.dot4_q4(h, lo, w) } else { self.dot4(h, lo, w) };
                    for (row, (da, db)) in d.iter().enumerate() {
                        let at = 2 * row + token;
                        l.a[at] += *da as f32;
                        l.b[at] += *db as f32;
                        if e % group == 0 {
                            l.y[at] += (l.a[at] * 4096.0 + l.b[at]) * unit[token][g] * scale[row][g];
                            l.a[at] = 0.0;
                            l.b[at] = 0.0;
                        }
                    }
                }
            }
        }
        /// `Layout::Lanes8`: NT tokens (one or two) against one eight-row block's tile over whole
        /// groups (`unit.len()` of them): for each group g in order, row r's sums (a, b) over it go
        /// to f32 and `ys[token][r] += (a * 4096 + b) * unit[g] * scale[8 * g + r]` (`rows`'
        /// arithmetic, in the same order). This one is the definition, value by value.
        fn lanes8<const NT: usize>(&self, x: [TokenTile; NT], tile: &[i8], group: usize, scale: &[f32], ys: &mut [[f32; 8]]) {
            for (x, y) in x.iter().zip(&mut ys[..NT]) {
                for (g, u) in x.unit.iter().enumerate() {
                    for (r, y) in y.iter_mut().enumerate() {
                        let (mut a, mut b) = (0i32, 0i32);
                        for j in g * group..(g + 1) * group {
                            let q = crate::kernels::lanes8_value(tile, r, j) as i32;
                            a += x.hi[j] as i32 * q;
                            b += x.lo[j] as i32 * q;
                        }
                        *y += (a as f32 * 4096.0 + b as f32) * u * scale[8 * g + r];
                    }
                }
            }
        }
    }

    /// One token's activations over the columns of a tile (`Layout::Lanes8`'s kernels): hi, lo
    /// and the unit per group of the tile (the definition's), and the same as `Planes` (the x86
    /// kernels').
    #[derive(Clone, Copy)]
    pub struct TokenTile<'a> {
        pub hi: &'a [i16],
        pub lo: &'a [i16],
        pub unit: &'a [f32],
        pub digits: &'a [u8],
        pub terms: &'a [Terms],
    }

    /// The f32 state of a block's four rows for two tokens in prefill (lane 2 * row + token): the
    /// output so far, and the running sums of the group the last tile ended inside.
    #[derive(Default)]
    pub struct Lanes {
        pub y: [f32; 8],
        pub a: [f32; 8],
        pub b: [f32; 8],
    }

    /// Activation bytes (hi and lo, per token) of one column tile that a chunk of prefill tokens
    /// may hold: the chunk's activations stay in L2 while every weight block of the tile passes
    /// (all 128 tokens of a 2048-wide tile are 1 MiB, past L2, and each block re-read them).
    const CHUNK_BYTES: usize = 128 << 10;

    /// Prefill's tokens per chunk for rows of `width` (CHUNK_BYTES of a tile's activations).
    fn chunk_tokens(width: usize) -> usize {
        (CHUNK_BYTES / (4 * TILE.min(width).max(1))).max(2)
    }

    /// Value j (of a run of 16) of row r in a 32-byte int4 packet: low nibbles hold values 0-7,
    /// high nibbles 8-15, rows 8 bytes apart.
    #[inline(always)]
    pub fn q4_at(packet: &[i8], r: usize, j: usize) -> i32 {
        let b = packet[r * 8 + j % 8] as i32;
        if j < 8 { (b << 28) >> 28 } else { b >> 4 }
    }

    /// Plain Rust: no SIMD.
    pub struct Scalar;

    impl Kernels for Scalar {
        fn dot(&self, hi: &[i16], lo: &[i16], q: &[i8]) -> (i32, i32) {
            dot_i32_scalar(hi, lo, q)
        }
        fn dot4(&self, hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
            let mut out = [(0, 0); 4];
            for (i, (h, l)) in hi.iter().zip(lo).enumerate() {
                for (r, o) in out.iter_mut().enumerate() {
                    let q = block[i / 8 * 32 + r * 8 + i % 8] as i32;
                    o.0 += *h as i32 * q;
                    o.1 += *l as i32 * q;
                }
            }
            out
        }
        fn dot4_q4(&self, hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
            let mut out = [(0, 0); 4];
            for (i, (h, l)) in hi.iter().zip(lo).enumerate() {
                let packet = &block[i / 16 * 32..];
                for (r, o) in out.iter_mut().enumerate() {
                    let q = q4_at(packet, r, i % 16);
                    o.0 += *h as i32 * q;
                    o.1 += *l as i32 * q;
                }
            }
            out
        }
    }

    /// Token t's row of `x` (rows of `width`) times one weight row (`qr`, one scale per group in `sr`).
    #[inline(always)]
    pub fn dot_row(k: &impl Kernels, x: &Fixed, width: usize, group: usize, t: usize, qr: &[i8], sr: &[f32]) -> f32 {
        let row = t * width;
        let mut acc = 0f32;
        for (g, s) in sr.iter().enumerate() {
            let (mut a, mut b) = (0f32, 0f32);
            for (c0, c1) in pieces(g * group, (g + 1) * group, TILE) {
                let (sa, sb) = k.dot(&x.hi[row + c0..row + c1], &x.lo[row + c0..row + c1], &qr[c0..c1]);
                a += sa as f32;
                b += sb as f32;
            }
            acc += (a * 4096.0 + b) * x.unit[t * (width / group) + g] * s;
        }
        acc
    }

    /// ys[(r - first) * t + i] = token i's row of `x` times weight row r, for the rows
    /// first..first + ys.len() / t of the n rows in `q` (rows of `width` int8 or int4, scales per
    /// group, in `layout`: whole blocks, then the rows left over row by row). `first` is a
    /// multiple of eight.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn rows(k: &impl Kernels, x: &Fixed, t: usize, width: usize, group: usize, layout: Layout, bits: u32, q: &[i8], n: usize, first: usize, scale: &[f32], ys: &mut [f32]) {
        let groups = width / group;
        // bytes of the blocked part holding `v` values (int4: two per byte)
        let int4 = bits == 4;
        let bytes = |v: usize| if int4 { v / 2 } else { v };
        let end = first + ys.len() / t;
        let nb = layout.blocked_rows(n);
        let blocks_end = end.min(nb).max(first);
        // rows left over from the blocks (or all, unblocked) are int8, row-major, after the blocks
        // (their scales row-major in every layout)
        for r in blocks_end..end {
            let at = bytes(nb * width) + (r - nb) * width;
            for i in 0..t {
                ys[(r - first) * t + i] = dot_row(k, x, width, group, i, &q[at..at + width], &scale[r * groups..(r + 1) * groups]);
            }
        }
        if layout == Layout::Lanes8 {
            return lanes8_rows(k, x, t, width, group, &q[..bytes(nb * width)], nb, first..blocks_end, scale, &mut ys[..(blocks_end - first) * t]);
        }
        if t > 1 {
            return prefill(k, x, t, width, group, int4, &q[..bytes(nb * width)], nb, first..blocks_end, scale, ys);
        }
        // Decode: one token. Column tile by column tile, as `block_rows` stores them: the tile's
        // activations (TILE * 4 bytes) stay in L1 while the weights stream past in one sequential
        // run, where a whole wide row's would not (1280x5120 ran at half speed on wasm). Each row
        // keeps its group's running (a, b) sums from one tile to the next.
        let blocked_rows = blocks_end.saturating_sub(first);
        for y in &mut ys[..blocked_rows] {
            *y = 0.0;
        }
        // Groups that never straddle a tile (those dividing TILE, or any group of a row no wider
        // than a tile, one scale per row included) go through `groups4`: the per-piece work
        // around a dot4 call (an iterator, eight lane extractions, scalar f32 updates per row)
        // cost more than a small group's 32 or 64 values (int4-g32 decode ran at half int8's
        // speed), and 5% of a wasm decode token even with one scale per 512-value row.
        let whole = TILE % group == 0 || width <= TILE;
        let mut sums = if whole { Vec::new() } else { vec![(0f32, 0f32); blocked_rows] };
        for c0 in (0..width).step_by(TILE) {
            let c1 = (c0 + TILE).min(width);
            let (hi, lo) = (&x.hi[c0..c1], &x.lo[c0..c1]);
            let (g0, g1) = (c0 / group, c1 / group); // (the groups of a whole tile)
            for r in (first..blocks_end).step_by(4) {
                let tile = &q[bytes(c0 * nb + r * (c1 - c0))..bytes(c0 * nb + (r + 4) * (c1 - c0))];
                #[cfg(target_arch = "wasm32")]
                if TOUCHING.load(core::sync::atomic::Ordering::Relaxed) {
                    touch_ahead(q, bytes(c0 * nb + r * (c1 - c0)) + TOUCH_AHEAD, tile.len());
                }
                let y = &mut ys[r - first..r - first + 4];
                if whole {
                    // whole groups, each row's sums start and end in this call: the f32 arithmetic
                    // of groups4 is the one below from zero sums (0 + x is x)
                    let sc = |j: usize| &scale[(r + j) * groups + g0..(r + j) * groups + g1];
                    let mut y4 = [y[0], y[1], y[2], y[3]];
                    k.groups4(hi, lo, tile, group, int4, &x.unit[g0..g1], [sc(0), sc(1), sc(2), sc(3)], &mut y4);
                    y.copy_from_slice(&y4);
                    continue;
                }
                // each part of the tile in one group g
                for (s, e) in pieces(c0, c1, group) {
                    let (g, w) = (s / group, &tile[bytes(4 * (s - c0))..bytes(4 * (e - c0))]);
                    let (h, l) = (&hi[s - c0..e - c0], &lo[s - c0..e - c0]);
                    let d = if int4 { k.dot4_q4(h, l, w) } else { k.dot4(h, l, w) };
                    for (j, (da, db)) in d.iter().enumerate() {
                        let st = &mut sums[r - first + j];
                        st.0 += *da as f32;
                        st.1 += *db as f32;
                        if e == (g + 1) * group {
                            y[j] += (st.0 * 4096.0 + st.1) * x.unit[g] * scale[(r + j) * groups + g];
                            *st = (0.0, 0.0);
                        }
                    }
                }
            }
        }
    }

    /// How far ahead of the block being multiplied wasm decode reads the weight stream.
    #[cfg(target_arch = "wasm32")]
    const TOUCH_AHEAD: usize = 2048;

    /// Whether wasm decode touches the weight stream ahead (`touch_ahead`); `set_touching`.
    #[cfg(target_arch = "wasm32")]
    static TOUCHING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

    /// Switches wasm decode's touching ahead on or off. wasm cannot see the CPU it runs on, so the
    /// JS glue (web_shell/wasm_runtime.js) times a model's first decode steps both ways and keeps
    /// the faster. The results are the same bits either way.
    #[cfg(target_arch = "wasm32")]
    pub fn set_touching(on: bool) {
        TOUCHING.store(on, core::sync::atomic::Ordering::Relaxed);
    }

    /// wasm has no prefetch instruction, so decode reads one byte of each cache line of the
    /// stream a block ahead (q[from..from + len], cut at q's end: a read past linear memory would
    /// trap): by the time the block's kernel comes to them the lines are on their way. The reads
    /// are volatile so neither LLVM nor V8 drops them. On an Intel Xeon (0.5B model, int8) wasm
    /// decode went from 10.2 to 12.7 tok/s, int4-g32 from 7.1 to 12.3; 1 to 8 KB ahead measured
    /// alike, touching every other line and touching inside the kernel's loop were slower. On an
    /// AMD EPYC Zen 3, whose hardware prefetcher keeps up with the stream, the same reads cost:
    /// a read that misses holds up retirement until its line comes, where a prefetch would not,
    /// and int8 decode ran at 12.2 tok/s touching and 18.6 without (8 KB and 32 KB ahead, eight
    /// reads a loop step, or one a 4 KB page measured alike or worse). Hence `set_touching`.
    #[cfg(target_arch = "wasm32")]
    #[inline(always)]
    fn touch_ahead(q: &[i8], from: usize, len: usize) {
        let end = (from + len).min(q.len());
        let mut i = from;
        while i < end {
            // SAFETY: i < end <= q.len()
            unsafe { core::ptr::read_volatile(q.as_ptr().add(i)) };
            i += 64;
        }
    }

    /// `rows` of T > 1 tokens for the blocks of `rows` (`q`: the blocked part, `ys` as in `rows`):
    /// a matrix-matrix product. Tokens go in chunks whose tile activations fit CHUNK_BYTES; for
    /// each column tile, each block's tile (in L1 after its first use) meets the chunk's tokens
    /// two at a time (`tile_x2`), so a weight is read from memory once per chunk and loaded and
    /// unpacked once per two tokens. Every (row, token) adds its pieces in column order with
    /// decode's arithmetic: the same bits whatever the chunking and pairing.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn prefill(k: &impl Kernels, x: &Fixed, t: usize, width: usize, group: usize, int4: bool, q: &[i8], nb: usize, rows: core::ops::Range<usize>, scale: &[f32], ys: &mut [f32]) {
        let groups = width / group;
        let bytes = |v: usize| if int4 { v / 2 } else { v };
        let chunk = chunk_tokens(width);
        let blocks = (rows.end - rows.start) / 4;
        // each (block, token pair)'s state across the tiles of a chunk
        let mut lanes: Vec<Lanes> = Vec::with_capacity(blocks * ((chunk.min(t) + 1) / 2));
        for t0 in (0..t).step_by(chunk) {
            let t1 = (t0 + chunk).min(t);
            let pairs = (t1 - t0 + 1) / 2;
            // an odd last token goes as both tokens of its pair
            let pair = |p: usize| [t0 + 2 * p, (t0 + 2 * p + 1).min(t1 - 1)];
            lanes.clear();
            lanes.resize_with(blocks * pairs, Lanes::default);
            for c0 in (0..width).step_by(TILE) {
                let c1 = (c0 + TILE).min(width);
                for (b, r) in rows.clone().step_by(4).enumerate() {
                    let tile = &q[bytes(c0 * nb + r * (c1 - c0))..bytes(c0 * nb + (r + 4) * (c1 - c0))];
                    let scales = [0, 1, 2, 3].map(|j| &scale[(r + j) * groups..(r + j + 1) * groups]);
                    for (p, l) in lanes[b * pairs..(b + 1) * pairs].iter_mut().enumerate() {
                        let tokens = pair(p);
                        let xs = tokens.map(|i| (&x.hi[i * width + c0..i * width + c1], &x.lo[i * width + c0..i * width + c1]));
                        let unit = tokens.map(|i| &x.unit[i * groups..(i + 1) * groups]);
                        k.tile_x2(xs, tile, int4, c0, group, unit, scales, l);
                    }
                }
            }
            for (bp, l) in lanes[..blocks * pairs].iter().enumerate() {
                let (r, tokens) = (rows.start + bp / pairs * 4, pair(bp % pairs));
                for (lane, y) in l.y.iter().enumerate() {
                    ys[(r - rows.start + lane / 2) * t + tokens[lane % 2]] = *y;
                }
            }
        }
    }

    /// `rows` for the blocks of a `Layout::Lanes8` matrix (`q`: the blocked part, nb rows; `ys` as
    /// in `rows`, for `rows`): decode and prefill alike. Tokens go in chunks as in `prefill`; for
    /// each column tile, each block's tile (in L1 after its first use) meets the chunk's tokens two
    /// at a time (`Kernels::lanes8`), each block and token keeping its eight rows' sums across tiles.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn lanes8_rows(k: &impl Kernels, x: &Fixed, t: usize, width: usize, group: usize, q: &[i8], nb: usize, rows: core::ops::Range<usize>, scale: &[f32], ys: &mut [f32]) {
        let groups = width / group;
        let own;
        let planes = match &x.planes {
            Some(p) => p,
            None => {
                own = planes(x, t, width, group);
                &own
            }
        };
        let chunk = if t == 1 { 1 } else { chunk_tokens(width) };
        let blocks = rows.len() / 8;
        let mut sums = Vec::with_capacity(blocks * chunk.min(t));
        for t0 in (0..t).step_by(chunk) {
            let t1 = (t0 + chunk).min(t);
            let m = t1 - t0;
            sums.clear();
            sums.resize(blocks * m, [0f32; 8]);
            for c0 in (0..width).step_by(TILE) {
                let c1 = (c0 + TILE).min(width);
                let (g0, g1) = (c0 / group, c1 / group);
                // the chunk's tokens over this tile, and each block's tile and scales, found once
                // here: built per block call (closures LLVM did not inline) they took 2% of a
                // one-thread decode token on the 0.5B model
                let tokens: Vec<TokenTile> = (t0..t1)
                    .map(|i| TokenTile {
                        hi: &x.hi[i * width + c0..i * width + c1],
                        lo: &x.lo[i * width + c0..i * width + c1],
                        unit: &x.unit[i * groups + g0..i * groups + g1],
                        digits: &planes.digits[3 * (i * width + c0)..3 * (i * width + c1)],
                        terms: &planes.terms[i * groups + g0..i * groups + g1],
                    })
                    .collect();
                let (tile_bytes, tile_scales) = (4 * (c1 - c0), 8 * (g1 - g0));
                let tiles = q[c0 * nb / 2..][rows.start * (c1 - c0) / 2..].chunks_exact(tile_bytes);
                let scales = scale[8 * (rows.start / 8 * groups)..].chunks_exact(8 * groups).map(|s| &s[8 * g0..8 * g0 + tile_scales]);
                // tokens two at a time share each weight's load and unpacking (two blocks sharing
                // each of one token's activation loads instead ran decode from memory 0.8x)
                for ((tile, sc), y) in tiles.zip(scales).zip(sums.chunks_exact_mut(m)).take(blocks) {
                    let mut i = 0;
                    while i + 2 <= m {
                        k.lanes8([tokens[i], tokens[i + 1]], tile, group, sc, &mut y[i..i + 2]);
                        i += 2;
                    }
                    if i < m {
                        k.lanes8([tokens[i]], tile, group, sc, &mut y[i..i + 1]);
                    }
                }
            }
            for (bi, y8) in sums[..blocks * m].iter().enumerate() {
                let (b, i) = (bi / m, t0 + bi % m);
                for (r, y) in y8.iter().enumerate() {
                    ys[(8 * b + r) * t + i] = *y;
                }
            }
        }
    }

    pub fn dot_i32_scalar(hi: &[i16], lo: &[i16], q: &[i8]) -> (i32, i32) {
        let sa = hi.iter().zip(q).map(|(h, w)| *h as i32 * *w as i32).sum();
        let sb = lo.iter().zip(q).map(|(l, w)| *l as i32 * *w as i32).sum();
        (sa, sb)
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    pub mod simd128 {
        use super::dot_i32_scalar;
        use core::arch::wasm32::*;

        fn sum(v: v128) -> i32 {
            i32x4_extract_lane::<0>(v) + i32x4_extract_lane::<1>(v) + i32x4_extract_lane::<2>(v) + i32x4_extract_lane::<3>(v)
        }

        pub struct Simd128;

        impl super::Kernels for Simd128 {
            #[inline(always)]
            fn dot(&self, hi: &[i16], lo: &[i16], q: &[i8]) -> (i32, i32) {
                dot_i32(hi, lo, q)
            }
            #[inline(always)]
            fn dot4(&self, hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
                dot4_i32(hi, lo, block)
            }
            #[inline(always)]
            fn dot4_q4(&self, hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
                dot4_q4_i32(hi, lo, block)
            }
            #[inline(always)]
            fn groups4(&self, hi: &[i16], lo: &[i16], block: &[i8], group: usize, int4: bool, unit: &[f32], scale: [&[f32]; 4], ys: &mut [f32; 4]) {
                groups4_simd128(hi, lo, block, group, int4, unit, scale, ys)
            }
            #[inline(always)]
            fn tile_x2(&self, x: [(&[i16], &[i16]); 2], tile: &[i8], int4: bool, c0: usize, group: usize, unit: [&[f32]; 2], scale: [&[f32]; 4], l: &mut super::Lanes) {
                tile_x2(x, tile, int4, c0, group, unit, scale, l)
            }
        }

        /// `Kernels::tile_x2`: rows 0-1, then rows 2-3 (two tokens of four rows would need more
        /// than the 16 registers V8 has on x64); each piece's 16 sums of a row pair reduced to
        /// four lanes by shuffles, and the f32 arithmetic on those four (row, token) lanes at once.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        fn tile_x2(x: [(&[i16], &[i16]); 2], tile: &[i8], int4: bool, c0: usize, group: usize, unit: [&[f32]; 2], scale: [&[f32]; 4], l: &mut super::Lanes) {
            let w = x[0].0.len();
            assert!(x.iter().all(|(h, lo)| h.len() == w && lo.len() == w) && w % 16 == 0 && group % 16 == 0);
            assert!(tile.len() >= if int4 { 2 * w } else { 4 * w } && unit.iter().all(|u| u.len() >= (c0 + w) / group) && scale.iter().all(|s| s.len() >= (c0 + w) / group));
            // SAFETY: the lanes are [f32; 8], read and written four at 4 * pair (pair < 2)
            let get = |v: &[f32; 8], pair: usize| unsafe { v128_load(v.as_ptr().add(4 * pair) as *const v128) };
            let put = |v: v128, to: &mut [f32; 8], pair: usize| unsafe { v128_store(to.as_mut_ptr().add(4 * pair) as *mut v128, v) };
            let mut s = c0;
            while s < c0 + w {
                let e = (c0 + w).min((s / group + 1) * group);
                for pair in 0..2 {
                    // SAFETY: the asserts above: [s - c0, e - c0) is inside the activations and tile
                    let (a, b) = unsafe { dot2x2(x, tile, pair, int4, s - c0, e - c0) };
                    let (mut fa, mut fb) = (f32x4_convert_i32x4(a), f32x4_convert_i32x4(b));
                    if s % group != 0 {
                        // a group the last tile began (0 + x is x: a piece that begins its group skips this)
                        fa = f32x4_add(get(&l.a, pair), fa);
                        fb = f32x4_add(get(&l.b, pair), fb);
                    }
                    if e % group == 0 {
                        let g = s / group;
                        let u = f32x4(unit[0][g], unit[1][g], unit[0][g], unit[1][g]);
                        let (s0, s1) = (scale[2 * pair][g], scale[2 * pair + 1][g]);
                        // ((a * 4096 + b) * unit) * scale, as `rows`
                        let v = f32x4_mul(f32x4_mul(f32x4_add(f32x4_mul(fa, f32x4_splat(4096.0)), fb), u), f32x4(s0, s0, s1, s1));
                        put(f32x4_add(get(&l.y, pair), v), &mut l.y, pair);
                        fa = f32x4_splat(0.0);
                        fb = f32x4_splat(0.0);
                    }
                    if s % group != 0 || e % group != 0 {
                        put(fa, &mut l.a, pair);
                        put(fb, &mut l.b, pair);
                    }
                }
                s = e;
            }
        }

        /// [sum a, sum b, sum c, sum d]
        #[inline(always)]
        fn sums4(a: v128, b: v128, c: v128, d: v128) -> v128 {
            let ab = i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(a, b), i32x4_shuffle::<2, 3, 6, 7>(a, b));
            let cd = i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(c, d), i32x4_shuffle::<2, 3, 6, 7>(c, d));
            i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(ab, cd), i32x4_shuffle::<1, 3, 5, 7>(ab, cd))
        }

        /// Rows 2 * pair and 2 * pair + 1 of a block (int8 or int4) times two tokens over values
        /// [i0, i1): the (hi, lo) sums as lanes (row 2 * pair, token 0), (.., token 1), (row
        /// 2 * pair + 1, token 0), (.., token 1). The caller keeps [i0, i1) inside both, at
        /// multiples of 16.
        #[inline(always)]
        unsafe fn dot2x2(x: [(&[i16], &[i16]); 2], block: &[i8], pair: usize, int4: bool, i0: usize, i1: usize) -> (v128, v128) {
            // one loop per weight width, as groups4_simd128
            if int4 {
                dot2x2_of::<true>(x, block, pair, i0, i1)
            } else {
                dot2x2_of::<false>(x, block, pair, i0, i1)
            }
        }

        #[inline(always)]
        unsafe fn dot2x2_of<const INT4: bool>(x: [(&[i16], &[i16]); 2], block: &[i8], pair: usize, i0: usize, i1: usize) -> (v128, v128) {
            let (h0, l0, h1, l1) = (x[0].0.as_ptr(), x[0].1.as_ptr(), x[1].0.as_ptr(), x[1].1.as_ptr());
            let qp = block.as_ptr();
            let z = i32x4_splat(0);
            let (mut a00, mut b00, mut a01, mut b01, mut a10, mut b10, mut a11, mut b11) = (z, z, z, z, z, z, z, z);
            // Eight values a step, each token's activations loaded where they are used: with a
            // whole 16-value run's activations live at once beside the eight sums, V8 spilled
            // sums to the stack on every pass.
            let mut i = i0;
            while i < i1 {
                // the two rows' values i..i + 8, as i16
                let (w0, w1) = if INT4 {
                    // (a row's 16-value run is 8 bytes: values 0-7 in the low nibbles, 8-15 in the high)
                    let p = qp.add(2 * (i / 16 * 16) + 16 * pair);
                    let (r0, r1) = (i16x8_load_extend_i8x8(p), i16x8_load_extend_i8x8(p.add(8)));
                    if i % 16 == 0 {
                        (i16x8_shr(i16x8_shl(r0, 12), 12), i16x8_shr(i16x8_shl(r1, 12), 12))
                    } else {
                        (i16x8_shr(r0, 4), i16x8_shr(r1, 4))
                    }
                } else {
                    let p = qp.add(4 * i + 16 * pair);
                    (i16x8_load_extend_i8x8(p), i16x8_load_extend_i8x8(p.add(8)))
                };
                let (h, l) = (v128_load(h0.add(i) as *const v128), v128_load(l0.add(i) as *const v128));
                a00 = i32x4_add(a00, i32x4_dot_i16x8(w0, h));
                b00 = i32x4_add(b00, i32x4_dot_i16x8(w0, l));
                a01 = i32x4_add(a01, i32x4_dot_i16x8(w1, h));
                b01 = i32x4_add(b01, i32x4_dot_i16x8(w1, l));
                let (h, l) = (v128_load(h1.add(i) as *const v128), v128_load(l1.add(i) as *const v128));
                a10 = i32x4_add(a10, i32x4_dot_i16x8(w0, h));
                b10 = i32x4_add(b10, i32x4_dot_i16x8(w0, l));
                a11 = i32x4_add(a11, i32x4_dot_i16x8(w1, h));
                b11 = i32x4_add(b11, i32x4_dot_i16x8(w1, l));
                i += 8;
            }
            (sums4(a00, a10, a01, a11), sums4(b00, b10, b01, b11))
        }

        /// One 16-value step of the four-row int4 kernels: values i..i + 16 of the block's rows r
        /// (8 bytes each: values 0-7 in the low nibbles, 8-15 in the high ones, sign-extended by
        /// shifts) into the named accumulators (a: hi, b: lo), with no arrays, which keeps every
        /// v128 in a register through V8's compiler. The low nibbles of all four rows, then their
        /// bytes loaded again for the high ones: with both halves' activations and weights live at
        /// once beside the eight sums, V8 spilled sums to the stack on every pass.
        macro_rules! step4_q4 {
            ($hp:expr, $lp:expr, $qp:expr, $i:expr, $(($a:ident, $b:ident, $r:expr)),*) => {{
                let (h, l) = (v128_load($hp.add($i) as *const v128), v128_load($lp.add($i) as *const v128));
                $(
                    let w = i16x8_shr(i16x8_shl(i16x8_load_extend_i8x8($qp.add(2 * $i + 8 * $r)), 12), 12);
                    $a = i32x4_add($a, i32x4_dot_i16x8(w, h));
                    $b = i32x4_add($b, i32x4_dot_i16x8(w, l));
                )*
                let (h, l) = (v128_load($hp.add($i + 8) as *const v128), v128_load($lp.add($i + 8) as *const v128));
                $(
                    let w = i16x8_shr(i16x8_load_extend_i8x8($qp.add(2 * $i + 8 * $r)), 4);
                    $a = i32x4_add($a, i32x4_dot_i16x8(w, h));
                    $b = i32x4_add($b, i32x4_dot_i16x8(w, l));
                )*
            }};
        }

        /// One 8-value step of the four-row int8 kernels: values i..i + 8 of the block's rows r
        /// (8 bytes each, 32 per step: one sequential stream, as `block_rows` stores them) into
        /// the named accumulators. Eight values, not sixteen: two activation vectors and one
        /// weight vector live at a time beside the eight sums, which fits V8's fifteen registers
        /// (a sixteen-value step spilled sums to the stack on every pass). Kept apart from
        /// `step4_q4`: one macro taking each width's weight load as a closure ran int4 decode at
        /// half its speed in V8.
        macro_rules! step4_q8 {
            ($hp:expr, $lp:expr, $qp:expr, $i:expr, $(($a:ident, $b:ident, $r:expr)),*) => {{
                let (h, l) = (v128_load($hp.add($i) as *const v128), v128_load($lp.add($i) as *const v128));
                $(
                    // v128.load8x8_s: 8 int8 sign-extended to i16 by the load itself
                    let w = i16x8_load_extend_i8x8($qp.add(4 * $i + 8 * $r));
                    $a = i32x4_add($a, i32x4_dot_i16x8(w, h));
                    $b = i32x4_add($b, i32x4_dot_i16x8(w, l));
                )*
            }};
        }

        /// groups4 in one pass over the block: each group's sums reduced in registers, the f32
        /// steps for the four rows as one vector (the scalar path took 8 lane extractions, 24
        /// scalar adds and 4 times the f32 work per group).
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        fn groups4_simd128(hi: &[i16], lo: &[i16], block: &[i8], group: usize, int4: bool, unit: &[f32], scale: [&[f32]; 4], ys: &mut [f32; 4]) {
            // one loop per weight width: with `int4` tested inside, V8 kept both loads' branches
            // in the loop and spilled the int8 sums (wasm decode ran at 0.75x the loop alone)
            if int4 {
                groups4_of::<true>(hi, lo, block, group, unit, scale, ys)
            } else {
                groups4_of::<false>(hi, lo, block, group, unit, scale, ys)
            }
        }

        #[inline(always)]
        fn groups4_of<const INT4: bool>(hi: &[i16], lo: &[i16], block: &[i8], group: usize, unit: &[f32], scale: [&[f32]; 4], ys: &mut [f32; 4]) {
            let ng = unit.len();
            let n = ng * group;
            assert!(hi.len() >= n && lo.len() >= n && block.len() >= if INT4 { 2 * n } else { 4 * n } && group % 16 == 0);
            assert!(scale.iter().all(|s| s.len() >= ng));
            let (hp, lp, qp) = (hi.as_ptr(), lo.as_ptr(), block.as_ptr());
            let mut i = 0;
            // SAFETY: every load reads inside hi[..n], lo[..n] and block[..4n] (int4: [..2n]),
            // ys is 4 f32, and g < ng <= every scale row's length.
            unsafe {
                let mut acc = v128_load(ys.as_ptr() as *const v128);
                for g in 0..ng {
                    let z = i32x4_splat(0);
                    let (mut a0, mut b0, mut a1, mut b1, mut a2, mut b2, mut a3, mut b3) = (z, z, z, z, z, z, z, z);
                    let end = i + group;
                    while i < end {
                        if INT4 {
                            step4_q4!(hp, lp, qp, i, (a0, b0, 0), (a1, b1, 1), (a2, b2, 2), (a3, b3, 3));
                            i += 16;
                        } else {
                            step4_q8!(hp, lp, qp, i, (a0, b0, 0), (a1, b1, 1), (a2, b2, 2), (a3, b3, 3));
                            i += 8;
                        }
                    }
                    let (a, b) = (f32x4_convert_i32x4(sums4(a0, a1, a2, a3)), f32x4_convert_i32x4(sums4(b0, b1, b2, b3)));
                    let v = f32x4_mul(f32x4_add(f32x4_mul(a, f32x4_splat(4096.0)), b), f32x4_splat(*unit.get_unchecked(g)));
                    let s = f32x4(*scale[0].get_unchecked(g), *scale[1].get_unchecked(g), *scale[2].get_unchecked(g), *scale[3].get_unchecked(g));
                    acc = f32x4_add(acc, f32x4_mul(v, s));
                }
                v128_store(ys.as_mut_ptr() as *mut v128, acc);
            }
        }

        /// dot4 over int4 packets: 32 bytes per 16 values, row r's 8 bytes at 8r hold values 0-7
        /// in their low nibbles and 8-15 in their high ones, sign-extended by shifts.
        #[inline(always)]
        fn dot4_q4_i32(hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
            let n = hi.len().min(lo.len()).min(block.len() * 2 / 4) / 16 * 16;
            let (hp, lp, qp) = (hi.as_ptr(), lo.as_ptr(), block.as_ptr());
            let z = i32x4_splat(0);
            let (mut a0, mut b0, mut a1, mut b1, mut a2, mut b2, mut a3, mut b3) = (z, z, z, z, z, z, z, z);
            let mut i = 0;
            // SAFETY: every load reads inside hi[..n], lo[..n] and block[..2n] (i + 16 <= n).
            unsafe {
                while i + 16 <= n {
                    step4_q4!(hp, lp, qp, i, (a0, b0, 0), (a1, b1, 1), (a2, b2, 2), (a3, b3, 3));
                    i += 16;
                }
            }
            [(sum(a0), sum(b0)), (sum(a1), sum(b1)), (sum(a2), sum(b2)), (sum(a3), sum(b3))]
        }

        // named accumulators, no arrays: keeps every v128 in a register through V8's compiler
        #[inline(always)]
        fn dot_i32(hi: &[i16], lo: &[i16], q: &[i8]) -> (i32, i32) {
            let n = q.len().min(hi.len()).min(lo.len());
            let (hp, lp) = (hi.as_ptr(), lo.as_ptr());
            let (mut a, mut b) = (i32x4_splat(0), i32x4_splat(0));
            let mut i = 0;
            // SAFETY: every load reads inside hi[..n], lo[..n] and q[..n] (i + 8 <= n).
            unsafe {
                while i + 8 <= n {
                    // v128.load8x8_s: 8 int8 sign-extended to i16 by the load itself
                    let w = i16x8_load_extend_i8x8(q.as_ptr().add(i));
                    a = i32x4_add(a, i32x4_dot_i16x8(w, v128_load(hp.add(i) as *const v128)));
                    b = i32x4_add(b, i32x4_dot_i16x8(w, v128_load(lp.add(i) as *const v128)));
                    i += 8;
                }
            }
            let (ta, tb) = dot_i32_scalar(&hi[i..n], &lo[i..n], &q[i..n]);
            (sum(a) + ta, sum(b) + tb)
        }

        /// Four rows of a block: one sequential stream of weights (four separate row streams ran
        /// at a third of the speed from DRAM: wasm has no prefetch), 32 bytes per 8 values.
        #[inline(always)]
        fn dot4_i32(hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
            let n = hi.len().min(lo.len()).min(block.len() / 4) / 16 * 16;
            let (hp, lp, qp) = (hi.as_ptr(), lo.as_ptr(), block.as_ptr());
            let z = i32x4_splat(0);
            let (mut a0, mut b0, mut a1, mut b1, mut a2, mut b2, mut a3, mut b3) = (z, z, z, z, z, z, z, z);
            let mut i = 0;
            // SAFETY: every load reads inside hi[..n], lo[..n] and block[..4n] (i + 8 <= n).
            unsafe {
                while i + 8 <= n {
                    step4_q8!(hp, lp, qp, i, (a0, b0, 0), (a1, b1, 1), (a2, b2, 2), (a3, b3, 3));
                    i += 8;
                }
            }
            [(sum(a0), sum(b0)), (sum(a1), sum(b1)), (sum(a2), sum(b2)), (sum(a3), sum(b3))]
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub mod x86 {
        use super::{dot_i32_scalar, Layout, TokenTile};
        use std::arch::x86_64::*;

        #[inline(always)]
        unsafe fn sum(v: __m256i) -> i32 {
            sum4(_mm_add_epi32(low(v), high(v)))
        }

        #[inline(always)]
        unsafe fn sum4(s: __m128i) -> i32 {
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
        }

        #[inline(always)]
        unsafe fn low(v: __m256i) -> __m128i {
            _mm256_castsi256_si128(v)
        }

        #[inline(always)]
        unsafe fn high(v: __m256i) -> __m128i {
            _mm256_extracti128_si256(v, 1)
        }

        /// 8 i16 in both halves (vbroadcasti128).
        #[inline(always)]
        unsafe fn load8_twice(p: *const i16) -> __m256i {
            _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i))
        }

        #[inline(always)]
        unsafe fn load16(p: *const i16) -> __m256i {
            _mm256_loadu_si256(p as *const __m256i)
        }

        /// 16 int8 sign-extended to i16 (vpmovsxbw ymm, m128).
        #[inline(always)]
        unsafe fn load_q(p: *const i8) -> __m256i {
            _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i))
        }

        // The kernel sets, by the instruction that multiplies i16 pairs and adds them into i32
        // sums (the same sums modulo 2^32 either way, so the same bits): AVX2's vpmaddwd then
        // vpaddd, or VNNI's vpdpwssd, one instruction (EVEX-encoded with AVX-512 VNNI + VL,
        // VEX-encoded with AVX-VNNI). VNNI needs Rust 1.89's intrinsics: build.rs sets
        // `monologue_vnni` where the compiler has them (Debian's 1.63 builds the AVX2 set alone).
        const AVX2: u8 = 0;
        const AVX512_VNNI: u8 = 1;
        const AVX_VNNI: u8 = 2;
        /// AVX-512 VNNI's kernels, and prefill's int8 products on AMX's tiles where
        /// `crate::amx::takes` them.
        const AVX512_VNNI_AMX: u8 = 3;
        /// A flag on any set: the weight stream's software prefetches go to L2 (`prefetcht1`), not
        /// non-temporally to L1 (`prefetchnta`). On AMD (Zen 1) NTA kept the stream from evicting
        /// the activations from L1 (d20 decode 30 -> 41 tok/s against no prefetch); on an Intel
        /// Xeon with AMX it ran int8 decode from memory at half of T1's speed (8.4 against 12-28 G
        /// weights/s, the int4 g32 table 12.5 against 21-26) and in L2 at 0.8x. `levels` sets
        /// it on Intel CPUs.
        const L2_PREFETCH: u8 = 0x10;

        /// The instruction set of a level, without the prefetch flag.
        const fn isa(level: u8) -> u8 {
            level & !L2_PREFETCH
        }

        /// Prefetches the weight stream of set L `ahead` bytes past p (see `L2_PREFETCH`); into
        /// L2 eight times as far ahead (2048 -> 16384 bytes). On the Xeon, against 8 KB: the 0.5B
        /// model's whole decode (the weights from memory) 1.11x at int8 and 1.07x at
        /// int4-g128-all, one thread; against 2 KB, int8 from memory 10.8 -> 12.0 G weights/s.
        #[inline(always)]
        unsafe fn prefetch<const L: u8>(p: *const i8, ahead: usize) {
            if L & L2_PREFETCH != 0 {
                _mm_prefetch(p.wrapping_add(8 * ahead), _MM_HINT_T1);
            } else {
                _mm_prefetch(p.wrapping_add(ahead), _MM_HINT_NTA);
            }
        }

        /// acc + the four u8 x i8 products of a's and b's bytes in each i32 lane: vpdpbusd. (AVX2
        /// has none; `lanes8_x86` sums its vpmaddubsw pairs itself. The fallback here gives the
        /// same sums wherever a pair's sum fits i16, as every pair there does.)
        #[inline(always)]
        unsafe fn dpb<const L: u8>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            #[cfg(monologue_vnni)]
            {
                if isa(L) == AVX512_VNNI {
                    return _mm256_dpbusd_epi32(acc, a, b);
                }
                if isa(L) == AVX_VNNI {
                    return _mm256_dpbusd_avx_epi32(acc, a, b);
                }
            }
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
        }

        /// acc + a[0] * b[0] + a[1] * b[1] per i32 lane, in the kernel set L's instructions.
        #[inline(always)]
        unsafe fn dp<const L: u8>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            #[cfg(monologue_vnni)]
            {
                if isa(L) == AVX512_VNNI {
                    return _mm256_dpwssd_epi32(acc, a, b);
                }
                if isa(L) == AVX_VNNI {
                    return _mm256_dpwssd_avx_epi32(acc, a, b);
                }
            }
            _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
        }

        /// The kernels of set L; every use is inside one of L's entry points (`entry!`), which
        /// enable its target features, so the always-inlined kernels compile with them.
        struct X86<const L: u8>;

        // Per kernel set: `rows` compiled as a whole with its features (the kernels inline into its
        // loops), and prefill's tile step as its own call (the loop gets every register).
        macro_rules! entry {
            ($rows:ident, $tile:ident, $level:expr, $features:literal) => {
                #[target_feature(enable = $features)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn $rows(x: &super::Fixed, t: usize, width: usize, group: usize, layout: Layout, bits: u32, q: &[i8], n: usize, first: usize, scale: &[f32], ys: &mut [f32]) {
                    super::rows(&X86::<{ $level }>, x, t, width, group, layout, bits, q, n, first, scale, ys)
                }
                #[target_feature(enable = $features)]
                #[inline(never)]
                #[allow(clippy::too_many_arguments)]
                unsafe fn $tile(x: [(&[i16], &[i16]); 2], tile: &[i8], int4: bool, c0: usize, group: usize, unit: [&[f32]; 2], scale: [&[f32]; 4], l: &mut super::Lanes) {
                    tile_x2::<{ $level }>(x, tile, int4, c0, group, unit, scale, l)
                }
            };
        }
        entry!(rows_avx2, tile_x2_avx2, AVX2, "avx2");
        entry!(rows_avx2_l2, tile_x2_avx2_l2, AVX2 | L2_PREFETCH, "avx2");
        #[cfg(monologue_vnni)]
        entry!(rows_avx512_vnni, tile_x2_avx512_vnni, AVX512_VNNI, "avx2,avx512f,avx512vl,avx512vnni");
        #[cfg(monologue_vnni)]
        entry!(rows_avx512_vnni_l2, tile_x2_avx512_vnni_l2, AVX512_VNNI | L2_PREFETCH, "avx2,avx512f,avx512vl,avx512vnni");
        #[cfg(monologue_vnni)]
        entry!(rows_avx_vnni, tile_x2_avx_vnni, AVX_VNNI, "avx2,avxvnni");
        #[cfg(monologue_vnni)]
        entry!(rows_avx_vnni_l2, tile_x2_avx_vnni_l2, AVX_VNNI | L2_PREFETCH, "avx2,avxvnni");

        /// A kernel set this CPU runs (see `Q8Input`): only made where it has the set's features.
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub struct KernelSet {
            level: u8,
        }

        /// Whether the CPU is Intel's (CPUID leaf 0's vendor string), for `L2_PREFETCH`.
        fn intel() -> bool {
            // (an unsafe fn before Rust 1.94)
            #[allow(unused_unsafe)]
            let v = unsafe { __cpuid(0) };
            (v.ebx, v.edx, v.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e) // "Genu" "ineI" "ntel"
        }

        /// The set `detect` picks: 0xff until the first call.
        static DETECTED: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0xff);

        impl KernelSet {
            /// Every kernel set this CPU and build run, plainest first (the tests check each).
            pub fn levels() -> Vec<KernelSet> {
                let mut all = Vec::new();
                if is_x86_feature_detected!("avx2") {
                    // (the flag does not change a result, so the tests need not run both)
                    let flag = if intel() { L2_PREFETCH } else { 0 };
                    all.push(KernelSet { level: AVX2 | flag });
                    #[cfg(monologue_vnni)]
                    {
                        if is_x86_feature_detected!("avxvnni") {
                            all.push(KernelSet { level: AVX_VNNI | flag });
                        }
                        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni") {
                            all.push(KernelSet { level: AVX512_VNNI | flag });
                            if crate::amx::available() {
                                all.push(KernelSet { level: AVX512_VNNI_AMX | flag });
                            }
                        }
                    }
                }
                all
            }

            /// The last of `levels`, or the set the environment names in MONOLOGUE_X86_KERNELS
            /// (`name`'s: "avx2", "avx512-vnni", ..; for benchmarks, several sets on one machine;
            /// a name this CPU lacks picks the last); decided once.
            pub fn detect() -> Option<KernelSet> {
                use core::sync::atomic::Ordering;
                let mut level = DETECTED.load(Ordering::Relaxed);
                if level == 0xff {
                    let all = KernelSet::levels();
                    let named = std::env::var("MONOLOGUE_X86_KERNELS").ok().and_then(|v| all.iter().find(|k| k.name() == v));
                    let pick = named.or(all.last());
                    level = pick.map_or(0xfe, |k| k.level);
                    DETECTED.store(level, Ordering::Relaxed);
                }
                if level == 0xfe { None } else { Some(KernelSet { level }) }
            }

            /// The set's name (`kernel_set`).
            pub fn name(&self) -> &'static str {
                match isa(self.level) {
                    AVX512_VNNI => "avx512-vnni",
                    AVX512_VNNI_AMX => "avx512-vnni+amx",
                    AVX_VNNI => "avx-vnni",
                    _ => "avx2",
                }
            }

            /// `super::rows` in this kernel set.
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn rows(&self, x: &super::Fixed, t: usize, width: usize, group: usize, layout: Layout, bits: u32, q: &[i8], n: usize, first: usize, scale: &[f32], ys: &mut [f32]) {
                let l2 = self.level & L2_PREFETCH != 0;
                // the AVX-512 VNNI entry point, with this set's prefetch
                #[cfg(monologue_vnni)]
                let avx512_vnni = if l2 { rows_avx512_vnni_l2 } else { rows_avx512_vnni };
                match isa(self.level) {
                    #[cfg(monologue_vnni)]
                    AVX512_VNNI_AMX if crate::amx::takes(t, width, group, layout, bits) => {
                        // whole 16-row groups of the blocks on the tiles, the rows after them as
                        // AVX-512 VNNI's
                        let (end, nb) = (first + ys.len() / t, layout.blocked_rows(n));
                        let tiled = first + (end.min(nb).max(first) - first) / 16 * 16;
                        let (head, tail) = ys.split_at_mut((tiled - first) * t);
                        if tiled > first {
                            crate::amx::prefill(x, t, width, group, layout, q, nb, first..tiled, scale, head);
                        }
                        if tiled < end {
                            avx512_vnni(x, t, width, group, layout, bits, q, n, tiled, scale, tail);
                        }
                    }
                    #[cfg(monologue_vnni)]
                    AVX512_VNNI | AVX512_VNNI_AMX => avx512_vnni(x, t, width, group, layout, bits, q, n, first, scale, ys),
                    #[cfg(monologue_vnni)]
                    AVX_VNNI if l2 => rows_avx_vnni_l2(x, t, width, group, layout, bits, q, n, first, scale, ys),
                    #[cfg(monologue_vnni)]
                    AVX_VNNI => rows_avx_vnni(x, t, width, group, layout, bits, q, n, first, scale, ys),
                    _ if l2 => rows_avx2_l2(x, t, width, group, layout, bits, q, n, first, scale, ys),
                    _ => rows_avx2(x, t, width, group, layout, bits, q, n, first, scale, ys),
                }
            }

            /// `super::planes_into`, compiled for AVX2 (every set has it): 2.5x faster than for
            /// the baseline SSE2.
            #[allow(clippy::too_many_arguments)]
            pub fn planes_into(&self, hi: &[i16], lo: &[i16], unit: &[f32], width: usize, group: usize, digits: &mut [u8], terms: &mut [super::Terms]) {
                #[target_feature(enable = "avx2")]
                unsafe fn planes_avx2(hi: &[i16], lo: &[i16], unit: &[f32], width: usize, group: usize, digits: &mut [u8], terms: &mut [super::Terms]) {
                    super::planes_into(hi, lo, unit, width, group, digits, terms)
                }
                // SAFETY: a KernelSet is only made where the CPU has AVX2
                unsafe { planes_avx2(hi, lo, unit, width, group, digits, terms) }
            }

            /// The plain AVX2 kernels, for the tests' direct calls (every set has them).
            #[cfg(test)]
            pub fn plain(&self) -> impl super::Kernels {
                X86::<AVX2>
            }
        }

        impl<const L: u8> super::Kernels for X86<L> {
            #[inline(always)]
            fn dot(&self, hi: &[i16], lo: &[i16], q: &[i8]) -> (i32, i32) {
                // SAFETY: an X86<L> is used only inside L's entry points (or `plain`'s callers,
                // which hold a KernelSet: the CPU has AVX2)
                unsafe { dot_i32::<L>(hi, lo, q) }
            }
            #[inline(always)]
            fn dot4(&self, hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
                unsafe { dot4_i32::<L>(hi, lo, block) }
            }
            #[inline(always)]
            fn dot4_q4(&self, hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
                unsafe { dot4_q4_i32::<L>(hi, lo, block) }
            }
            #[inline(always)]
            fn tile_x2(&self, x: [(&[i16], &[i16]); 2], tile: &[i8], int4: bool, c0: usize, group: usize, unit: [&[f32]; 2], scale: [&[f32]; 4], l: &mut super::Lanes) {
                unsafe {
                    #[cfg(monologue_vnni)]
                    const AVX512_VNNI_L2: u8 = AVX512_VNNI | L2_PREFETCH;
                    #[cfg(monologue_vnni)]
                    const AVX_VNNI_L2: u8 = AVX_VNNI | L2_PREFETCH;
                    const AVX2_L2: u8 = AVX2 | L2_PREFETCH;
                    match L {
                        #[cfg(monologue_vnni)]
                        AVX512_VNNI => tile_x2_avx512_vnni(x, tile, int4, c0, group, unit, scale, l),
                        #[cfg(monologue_vnni)]
                        AVX512_VNNI_L2 => tile_x2_avx512_vnni_l2(x, tile, int4, c0, group, unit, scale, l),
                        #[cfg(monologue_vnni)]
                        AVX_VNNI => tile_x2_avx_vnni(x, tile, int4, c0, group, unit, scale, l),
                        #[cfg(monologue_vnni)]
                        AVX_VNNI_L2 => tile_x2_avx_vnni_l2(x, tile, int4, c0, group, unit, scale, l),
                        AVX2_L2 => tile_x2_avx2_l2(x, tile, int4, c0, group, unit, scale, l),
                        _ => tile_x2_avx2(x, tile, int4, c0, group, unit, scale, l),
                    }
                }
            }
            #[inline(always)]
            fn groups4(&self, hi: &[i16], lo: &[i16], block: &[i8], group: usize, int4: bool, unit: &[f32], scale: [&[f32]; 4], ys: &mut [f32; 4]) {
                // the usual groups with their step count known: the group loop unrolled
                unsafe {
                    match (group, int4) {
                        (32, true) => groups4_x86::<L, 2, true>(hi, lo, block, group, unit, scale, ys),
                        (64, true) => groups4_x86::<L, 4, true>(hi, lo, block, group, unit, scale, ys),
                        (128, true) => groups4_x86::<L, 8, true>(hi, lo, block, group, unit, scale, ys),
                        (_, true) => groups4_x86::<L, 0, true>(hi, lo, block, group, unit, scale, ys),
                        (_, false) => groups4_x86::<L, 0, false>(hi, lo, block, group, unit, scale, ys),
                    }
                }
            }
            #[inline(always)]
            fn lanes8<const NT: usize>(&self, x: [TokenTile; NT], tile: &[i8], group: usize, scale: &[f32], ys: &mut [[f32; 8]]) {
                unsafe {
                    if group == 32 {
                        lanes8_x86::<L, NT, true>(x, tile, group, scale, ys)
                    } else {
                        lanes8_x86::<L, NT, false>(x, tile, group, scale, ys)
                    }
                }
            }
        }

        /// `Kernels::lanes8` in byte products (`super::Planes`). Each 32 bytes of the tile give two
        /// vectors (an AND; a shift and an AND) of four rows' stored values (q + 8) each, every
        /// row in a lane pair (`lanes8_place`), multiplied by each token's three broadcast digit
        /// octets of those columns, the two vectors in two chains; one horizontal add a group puts
        /// the rows' sums in lanes 0..8. Per group the planes' sums less their offsets are
        /// S = S2 * 65536 + S1 * 256 + S0, exactly: in i32 for groups of 32 (|S| < 32 * 7 * 2^23
        /// < 2^31, the sums wrapping on the way), otherwise as A * 4096 + B with A and B exact in
        /// f32, so the f32 of S is rounded once, as the definition's a * 4096 + b is.
        #[inline(always)]
        unsafe fn lanes8_x86<const L: u8, const NT: usize, const G32: bool>(x: [TokenTile; NT], tile: &[i8], group: usize, scale: &[f32], ys: &mut [[f32; 8]]) {
            let ng = x[0].terms.len();
            let n = ng * group;
            assert!(ys.len() >= NT && group % 32 == 0 && group <= 1024 && tile.len() >= 4 * n && scale.len() >= 8 * ng);
            assert!(x.iter().all(|x| x.digits.len() >= 3 * n && x.terms.len() == ng && x.hi.len() >= n && x.lo.len() >= n));
            let nibble = _mm256_set1_epi8(0x0f);
            let z = _mm256_setzero_si256();
            let dq: [*const i64; NT] = core::array::from_fn(|k| x[k].digits.as_ptr() as *const i64);
            // (intrinsics only in loops here: in a closure a generic function calls, such as
            // fold's or from_fn's, they lose the target features and are not inlined)
            let mut acc = [_mm256_setzero_ps(); NT];
            for k in 0..NT {
                acc[k] = _mm256_loadu_ps(ys[k].as_ptr());
            }
            let mut wp = tile.as_ptr();
            for g in 0..ng {
                // per token, digit plane p's sums in two chains (low and high nibbles)
                let mut s = [[[z; 2]; 3]; NT];
                // (32 columns a step, four loads unrolled: a loop of one load kept the sums in
                // memory for two tokens)
                for unit in 0..group / 32 {
                    // AVX2 sums the unit's i16 pair sums (vpmaddubsw) before one vpmaddwd: at most
                    // 4 * 2 * 255 * 15 < 2^15
                    let mut pairs = [[[z; 2]; 3]; NT];
                    for c in 0..4 {
                        if c % 2 == 0 {
                            prefetch::<L>(wp as *const i8, PREFETCH);
                        }
                        let v = _mm256_loadu_si256(wp as *const __m256i);
                        wp = wp.add(32);
                        let w = [_mm256_and_si256(v, nibble), _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble)];
                        // the octet of columns g * group + 32 unit + 8c, for both halves
                        let octet = (g * group + 32 * unit + 8 * c) / 8;
                        for k in 0..NT {
                            let at = dq[k].add(3 * octet);
                            let d0 = _mm256_set1_epi64x(core::ptr::read_unaligned(at));
                            let d1 = _mm256_set1_epi64x(core::ptr::read_unaligned(at.add(1)));
                            let d2 = _mm256_set1_epi64x(core::ptr::read_unaligned(at.add(2)));
                            for (h, w) in w.iter().enumerate() {
                                if isa(L) == AVX2 {
                                    let p = &mut pairs[k];
                                    p[0][h] = _mm256_add_epi16(p[0][h], _mm256_maddubs_epi16(d0, *w));
                                    p[1][h] = _mm256_add_epi16(p[1][h], _mm256_maddubs_epi16(d1, *w));
                                    p[2][h] = _mm256_add_epi16(p[2][h], _mm256_maddubs_epi16(*w, d2));
                                } else {
                                    s[k][0][h] = dpb::<L>(s[k][0][h], d0, *w);
                                    s[k][1][h] = dpb::<L>(s[k][1][h], d1, *w);
                                    s[k][2][h] = dpb::<L>(s[k][2][h], *w, d2);
                                }
                            }
                        }
                    }
                    if isa(L) == AVX2 {
                        let one = _mm256_set1_epi16(1);
                        for k in 0..NT {
                            let p = &pairs[k];
                            for h in 0..2 {
                                if G32 {
                                    for (s, p) in s[k].iter_mut().zip(p) {
                                        s[h] = _mm256_add_epi32(s[h], _mm256_madd_epi16(p[h], one));
                                    }
                                } else {
                                    // planes 0 and 1 in one sum, S0 + 256 * S1 (< 1024 * 65535 * 15
                                    // < 2^31): the units' sums in four registers, not six, so
                                    // AVX2's sixteen spill 3 stack moves a unit, not 15
                                    let s01 = _mm256_add_epi32(_mm256_madd_epi16(p[0][h], one), _mm256_madd_epi16(p[1][h], _mm256_set1_epi16(256)));
                                    s[k][0][h] = _mm256_add_epi32(s[k][0][h], s01);
                                    s[k][2][h] = _mm256_add_epi32(s[k][2][h], _mm256_madd_epi16(p[2][h], one));
                                }
                            }
                        }
                    }
                }
                let u = _mm256_loadu_ps(scale.as_ptr().add(8 * g));
                for k in 0..NT {
                    let terms = x[k].terms.get_unchecked(g);
                    // (a wide group's q goes into the combined sums, after the planes: placed
                    // before, it had LLVM sink two planes' products past the branch, via the stack)
                    let f = if G32 {
                        // S per lane in i32 (wrapping, exact once whole), then the halves' lane
                        // pairs to rows 0..8 (`lanes8_place`)
                        let mut half = [z; 2];
                        for h in 0..2 {
                            let (s0, s1, s2) = (s[k][0][h], s[k][1][h], s[k][2][h]);
                            half[h] = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(s2, 16), _mm256_slli_epi32(s1, 8)), s0);
                        }
                        let mut v = _mm256_sub_epi32(_mm256_hadd_epi32(half[0], half[1]), _mm256_set1_epi32(terms.total));
                        if terms.wide {
                            v = _mm256_add_epi32(v, wide_q(&x[k], tile, g, group));
                        }
                        _mm256_cvtepi32_ps(v)
                    } else {
                        // the halves' lane pairs to rows 0..8 (`lanes8_place`)
                        let s0 = _mm256_hadd_epi32(s[k][0][0], s[k][0][1]);
                        let s2 = _mm256_hadd_epi32(s[k][2][0], s[k][2][1]);
                        let [o0, o1, o2] = terms.offset;
                        let s2 = _mm256_sub_epi32(s2, _mm256_set1_epi32(o2));
                        let (a, mut b) = if isa(L) == AVX2 {
                            // s0 holds S0 + 256 * S1 (above): A = 16 * S2 + its top bits, B its
                            // low 12, |A| <= 16 * 1024 * 7 * 128 + 1024 * 7 * 65535 / 4096 < 2^24
                            let s01 = _mm256_sub_epi32(s0, _mm256_set1_epi32(o0.wrapping_add(o1 << 8)));
                            (_mm256_add_epi32(_mm256_slli_epi32(s2, 4), _mm256_srai_epi32(s01, 12)), _mm256_and_si256(s01, _mm256_set1_epi32(4095)))
                        } else {
                            let s1 = _mm256_hadd_epi32(s[k][1][0], s[k][1][1]);
                            let s0 = _mm256_sub_epi32(s0, _mm256_set1_epi32(o0));
                            let s1 = _mm256_sub_epi32(s1, _mm256_set1_epi32(o1));
                            // |A| <= 16 * 1024 * 7 * 128 + 1024 * 7 * 256 / 16 < 2^24, |B| < 2^21
                            (_mm256_add_epi32(_mm256_slli_epi32(s2, 4), _mm256_srai_epi32(s1, 4)), _mm256_add_epi32(_mm256_slli_epi32(_mm256_and_si256(s1, _mm256_set1_epi32(15)), 8), s0))
                        };
                        if terms.wide {
                            b = _mm256_add_epi32(b, wide_q(&x[k], tile, g, group));
                        }
                        _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(4096.0)), _mm256_cvtepi32_ps(b))
                    };
                    let f = _mm256_mul_ps(f, _mm256_set1_ps(terms.unit));
                    acc[k] = _mm256_add_ps(acc[k], _mm256_mul_ps(f, u));
                }
            }
            for (y, acc) in ys.iter_mut().zip(acc) {
                _mm256_storeu_ps(y.as_mut_ptr(), acc);
            }
        }

        /// Per row of the block, the sum of q over group g's columns at +2^23 in a wide group
        /// (`super::Terms`), where the digits hold 2^23 - 1: what the byte products miss.
        #[inline(always)]
        unsafe fn wide_q(x: &TokenTile, tile: &[i8], g: usize, group: usize) -> __m256i {
            let mut q = [0i32; 8];
            for j in g * group..(g + 1) * group {
                if x.hi[j] as i32 * 4096 + x.lo[j] as i32 == 1 << 23 {
                    for (r, q) in q.iter_mut().enumerate() {
                        *q += crate::kernels::lanes8_value(tile, r, j) as i32;
                    }
                }
            }
            _mm256_loadu_si256(q.as_ptr() as *const __m256i)
        }

        /// groups4 in one pass over the block: each group's eight i32 sums stay in registers
        /// (three horizontal adds, one permute to [a0 a1 a2 a3 | b0 b1 b2 b3]) and go through the
        /// f32 steps as one vector of the four rows.
        #[inline(always)]
        unsafe fn groups4_x86<const L: u8, const STEPS: usize, const INT4: bool>(hi: &[i16], lo: &[i16], block: &[i8], group: usize, unit: &[f32], scale: [&[f32]; 4], ys: &mut [f32; 4]) {
            let (steps, ng, int4) = (if STEPS > 0 { STEPS } else { group / 16 }, unit.len(), INT4);
            let n = ng * steps * 16;
            assert!(hi.len() >= n && lo.len() >= n && block.len() >= if int4 { 2 * n } else { 4 * n } && group % 16 == 0);
            assert!(scale.iter().all(|s| s.len() >= ng));
            let (hp, lp) = (hi.as_ptr(), lo.as_ptr());
            let order = _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7);
            let mut acc = _mm_loadu_ps(ys.as_ptr());
            let mut i = 0;
            for g in 0..ng {
                // VNNI: values 0-7 of each step in set 0, 8-15 in set 1 (one set: int4-g128 20%
                // slower); AVX2 one set (with two, spilled registers ran int4-g64 at half speed)
                let mut s = Sums4::new();
                let second = if isa(L) == AVX2 { 0 } else { 1 };
                for _ in 0..steps {
                    let (h0, l0) = (load8_twice(hp.add(i)), load8_twice(lp.add(i)));
                    let (h1, l1) = (load8_twice(hp.add(i + 8)), load8_twice(lp.add(i + 8)));
                    let (w01, x01, w23, x23) = if int4 {
                        let p = block.as_ptr().add(2 * i);
                        prefetch::<L>(p as *const i8, PREFETCH / 2);
                        let (u, v) = (load_q(p), load_q(p.add(16)));
                        (_mm256_srai_epi16(_mm256_slli_epi16(u, 12), 12), _mm256_srai_epi16(u, 4),
                         _mm256_srai_epi16(_mm256_slli_epi16(v, 12), 12), _mm256_srai_epi16(v, 4))
                    } else {
                        let p = block.as_ptr().add(4 * i);
                        prefetch::<L>(p as *const i8, PREFETCH);
                        (load_q(p), load_q(p.add(32)), load_q(p.add(16)), load_q(p.add(48)))
                    };
                    s.add::<L>(0, w01, w23, h0, l0);
                    s.add::<L>(second, x01, x23, h1, l1);
                    i += 16;
                }
                let [a01, b01, a23, b23] = s.total();
                let v = if INT4 && group <= 32 {
                    // a * 4096 + b in i32: |a * 4096 + b| <= 32 * 7 * 2^23 < 2^31 (weights.rs refuses
                    // the nibble -8), and its f32 rounding is (a as f32) * 4096 + b as f32 (both
                    // exact, one rounding); lanes s0 s2 . . | s1 s3 . . after two adds
                    let t = _mm256_hadd_epi32(_mm256_add_epi32(_mm256_slli_epi32(a01, 12), b01), _mm256_add_epi32(_mm256_slli_epi32(a23, 12), b23));
                    let t = _mm256_hadd_epi32(t, t);
                    _mm_cvtepi32_ps(_mm_unpacklo_epi32(low(t), high(t)))
                } else {
                    // lanes: row 0 (a, b), row 2 (a, b) | row 1 (a, b), row 3 (a, b), then by row
                    let t = _mm256_hadd_epi32(_mm256_hadd_epi32(a01, b01), _mm256_hadd_epi32(a23, b23));
                    let f = _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(t, order));
                    _mm_add_ps(_mm_mul_ps(_mm256_castps256_ps128(f), _mm_set1_ps(4096.0)), _mm256_extractf128_ps(f, 1))
                };
                let v = _mm_mul_ps(v, _mm_set1_ps(*unit.get_unchecked(g)));
                let s = _mm_setr_ps(*scale[0].get_unchecked(g), *scale[1].get_unchecked(g), *scale[2].get_unchecked(g), *scale[3].get_unchecked(g));
                acc = _mm_add_ps(acc, _mm_mul_ps(v, s));
            }
            _mm_storeu_ps(ys.as_mut_ptr(), acc);
        }

        /// `Kernels::tile_x2`: each 16 weights of two rows are loaded (and unpacked) once and
        /// multiplied by both tokens' activations; a piece's 32 sums are reduced by six horizontal
        /// adds, and the f32 arithmetic runs on all eight (row, token) lanes at once, in the lane
        /// order the adds leave: rows 0, 2 of tokens 0, 0, 1, 1 | rows 1, 3 of the same.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn tile_x2<const L: u8>(x: [(&[i16], &[i16]); 2], tile: &[i8], int4: bool, c0: usize, group: usize, unit: [&[f32]; 2], scale: [&[f32]; 4], l: &mut super::Lanes) {
            let w = x[0].0.len();
            assert!(x.iter().all(|(h, lo)| h.len() == w && lo.len() == w) && w % 16 == 0 && group % 16 == 0);
            assert!(tile.len() >= if int4 { 2 * w } else { 4 * w } && unit.iter().all(|u| u.len() >= (c0 + w) / group) && scale.iter().all(|s| s.len() >= (c0 + w) / group));
            let (h0, l0, h1, l1) = (x[0].0.as_ptr(), x[0].1.as_ptr(), x[1].0.as_ptr(), x[1].1.as_ptr());
            // lane i of the registers holds lane ORDER[i] of `Lanes`
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let back = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            let get = |v: &[f32; 8]| _mm256_permutevar8x32_ps(_mm256_loadu_ps(v.as_ptr()), order);
            let put = |v: __m256, to: &mut [f32; 8]| _mm256_storeu_ps(to.as_mut_ptr(), _mm256_permutevar8x32_ps(v, back));
            let mut y = get(&l.y);
            let mut s = c0;
            while s < c0 + w {
                let e = (c0 + w).min((s / group + 1) * group);
                let (mut t0, mut t1) = (Sums4::new(), Sums4::new());
                let mut i = s - c0;
                while i < e - c0 {
                    for half in 0..2 {
                        // rows 0-1 and 2-3 of this half's 8 values
                        let (w01, w23) = if int4 {
                            let p = tile.as_ptr().add(2 * i);
                            let (u, v) = (load_q(p), load_q(p.add(16)));
                            if half == 0 {
                                (_mm256_srai_epi16(_mm256_slli_epi16(u, 12), 12), _mm256_srai_epi16(_mm256_slli_epi16(v, 12), 12))
                            } else {
                                (_mm256_srai_epi16(u, 4), _mm256_srai_epi16(v, 4))
                            }
                        } else {
                            let p = tile.as_ptr().add(4 * i + 32 * half);
                            (load_q(p), load_q(p.add(16)))
                        };
                        let j = i + 8 * half;
                        // one set a token: two (16 sums) ran VNNI prefill 10% slower
                        t0.add::<L>(0, w01, w23, load8_twice(h0.add(j)), load8_twice(l0.add(j)));
                        t1.add::<L>(0, w01, w23, load8_twice(h1.add(j)), load8_twice(l1.add(j)));
                    }
                    i += 16;
                }
                let ([a01, b01, a23, b23], [c01, d01, c23, d23]) = (t0.total(), t1.total());
                let a = _mm256_hadd_epi32(_mm256_hadd_epi32(a01, a23), _mm256_hadd_epi32(c01, c23));
                let b = _mm256_hadd_epi32(_mm256_hadd_epi32(b01, b23), _mm256_hadd_epi32(d01, d23));
                let (mut fa, mut fb) = (_mm256_cvtepi32_ps(a), _mm256_cvtepi32_ps(b));
                if s % group != 0 {
                    // a group the last tile began (0 + x is x: a piece that begins its group skips this)
                    fa = _mm256_add_ps(get(&l.a), fa);
                    fb = _mm256_add_ps(get(&l.b), fb);
                }
                if e % group == 0 {
                    let g = s / group;
                    let (u0, u1) = (unit[0][g], unit[1][g]);
                    let u = _mm256_setr_ps(u0, u0, u1, u1, u0, u0, u1, u1);
                    let (s0, s1, s2, s3) = (scale[0][g], scale[1][g], scale[2][g], scale[3][g]);
                    let sc = _mm256_setr_ps(s0, s2, s0, s2, s1, s3, s1, s3);
                    // ((a * 4096 + b) * unit) * scale: separate multiplies and adds, as `rows`
                    let v = _mm256_add_ps(_mm256_mul_ps(fa, _mm256_set1_ps(4096.0)), fb);
                    y = _mm256_add_ps(y, _mm256_mul_ps(_mm256_mul_ps(v, u), sc));
                    fa = _mm256_setzero_ps();
                    fb = _mm256_setzero_ps();
                }
                if s % group != 0 || e % group != 0 {
                    put(fa, &mut l.a);
                    put(fb, &mut l.b);
                }
                s = e;
            }
            put(y, &mut l.y);
        }

        /// dot4 over int4 packets (`block_rows_q4`): 16 bytes are 8 values of rows r, r + 1 in
        /// their low nibbles and the next 8 in their high ones, so one load and three shifts give
        /// what dot4 loads twice.
        #[inline(always)]
        unsafe fn dot4_q4_i32<const L: u8>(hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
            let n = hi.len().min(lo.len()).min(block.len() * 2 / 4) / 16 * 16;
            let mut s = Sums4::new();
            let mut i = 0;
            while i + 16 <= n {
                let p = block.as_ptr().add(2 * i);
                prefetch::<L>(p as *const i8, PREFETCH / 2);
                let (h0, l0) = (load8_twice(hi.as_ptr().add(i)), load8_twice(lo.as_ptr().add(i)));
                let (h1, l1) = (load8_twice(hi.as_ptr().add(i + 8)), load8_twice(lo.as_ptr().add(i + 8)));
                let (u, v) = (load_q(p), load_q(p.add(16)));
                let low_nibbles = |w| _mm256_srai_epi16(_mm256_slli_epi16(w, 12), 12);
                s.add::<L>(0, low_nibbles(u), low_nibbles(v), h0, l0);
                s.add::<L>(1, _mm256_srai_epi16(u, 4), _mm256_srai_epi16(v, 4), h1, l1);
                i += 16;
            }
            s.rows()
        }

        #[inline(always)]
        unsafe fn dot_i32<const L: u8>(hi: &[i16], lo: &[i16], q: &[i8]) -> (i32, i32) {

            let n = q.len().min(hi.len()).min(lo.len());
            let (mut a, mut b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let mut i = 0;
            while i + 16 <= n {
                let w = load_q(q.as_ptr().add(i));
                a = dp::<L>(a, w, load16(hi.as_ptr().add(i)));
                b = dp::<L>(b, w, load16(lo.as_ptr().add(i)));
                i += 16;
            }
            let (ta, tb) = dot_i32_scalar(&hi[i..n], &lo[i..n], &q[i..n]);
            (sum(a) + ta, sum(b) + tb)
        }

        /// How far ahead of the four-row kernel weights are prefetched, non-temporally (into L2:
        /// eight times as far, `prefetch`): a decode
        /// step streams every weight once, and without this the stream evicted the activations
        /// (20 KB at K = 5120) from L1 (d20, one thread: 30 -> 41 tok/s; two: +7%).
        const PREFETCH: usize = 2048;

        /// Four rows of a block: one sequential stream of weights. 16 bytes of it are 8 values of
        /// two rows, so rows 0 and 1 sum in the low and high halves of a01/b01, rows 2 and 3 in
        /// a23/b23, against the activations loaded into both halves.
        #[inline(always)]
        unsafe fn dot4_i32<const L: u8>(hi: &[i16], lo: &[i16], block: &[i8]) -> [(i32, i32); 4] {
            let n = hi.len().min(lo.len()).min(block.len() / 4) / 16 * 16;
            let mut s = Sums4::new();
            let mut i = 0;
            while i + 16 <= n {
                let p = block.as_ptr().add(4 * i);
                prefetch::<L>(p as *const i8, PREFETCH);
                for half in 0..2 {
                    let (h, l) = (load8_twice(hi.as_ptr().add(i + 8 * half)), load8_twice(lo.as_ptr().add(i + 8 * half)));
                    s.add::<L>(half, load_q(p.add(32 * half)), load_q(p.add(32 * half + 16)), h, l);
                }
                i += 16;
            }
            s.rows()
        }

        /// The running (hi, lo) sums of a block's four rows, rows 0-1 in the halves of one vector
        /// and rows 2-3 in another, in two sets: a step's values 0-7 go to set 0, 8-15 to set 1, so
        /// each vpdpwssd waits on its accumulator half as long (one set: VNNI int8 rows from
        /// memory 25% slower than AVX2).
        struct Sums4 {
            a01: [__m256i; 2],
            b01: [__m256i; 2],
            a23: [__m256i; 2],
            b23: [__m256i; 2],
        }

        impl Sums4 {
            #[inline(always)]
            unsafe fn new() -> Sums4 {
                let z = _mm256_setzero_si256();
                Sums4 { a01: [z, z], b01: [z, z], a23: [z, z], b23: [z, z] }
            }
            /// Rows 0-1's 8 values `w01` and rows 2-3's `w23` times the activations (h, l) in set `at`.
            #[inline(always)]
            unsafe fn add<const L: u8>(&mut self, at: usize, w01: __m256i, w23: __m256i, h: __m256i, l: __m256i) {
                self.a01[at] = dp::<L>(self.a01[at], w01, h);
                self.b01[at] = dp::<L>(self.b01[at], w01, l);
                self.a23[at] = dp::<L>(self.a23[at], w23, h);
                self.b23[at] = dp::<L>(self.b23[at], w23, l);
            }
            /// [a01, b01, a23, b23], the two sets added.
            #[inline(always)]
            unsafe fn total(&self) -> [__m256i; 4] {
                let both = |v: &[__m256i; 2]| _mm256_add_epi32(v[0], v[1]);
                [both(&self.a01), both(&self.b01), both(&self.a23), both(&self.b23)]
            }
            #[inline(always)]
            unsafe fn rows(&self) -> [(i32, i32); 4] {
                let [a01, b01, a23, b23] = self.total();
                [
                    (sum4(low(a01)), sum4(low(b01))),
                    (sum4(high(a01)), sum4(high(b01))),
                    (sum4(low(a23)), sum4(low(b23))),
                    (sum4(high(a23)), sum4(high(b23))),
                ]
            }
        }
    }
}

/// Whether a (N, k_pad) int8 matrix with quantization groups of `group` is kept in a blocked
/// layout: the four-row kernels step 16 values at a time, so rows and groups hold whole steps.
pub fn blocked_layout(k_pad: usize, group: usize) -> bool {
    k_pad % 16 == 0 && group % 16 == 0
}

/// How a loaded int8 or int4 matrix holds its values (`weights::Tensor::Q8`), chosen once at load
/// (`layout_for`); `q_value` and `scale_index` find any value and scale in each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// Row-major, as in the weights file (int4: two values per byte).
    Rows,
    /// Blocks of four rows interleaved in 8-value units, in column tiles (`block_rows`; int4:
    /// `block_rows_q4`), the rows left over after them row-major int8; scales row-major.
    Blocks4,
    /// int4 on x86: blocks of eight rows for byte products (`block_rows_lanes8`, `lanes8_place`),
    /// the rows left over row-major int8; the blocks' scales by block (`scales_by_block`).
    Lanes8,
}

impl Layout {
    /// Rows in whole blocks (the first ones of the n); the rest are row-major int8 rows.
    pub fn blocked_rows(self, n: usize) -> usize {
        match self {
            Layout::Rows => 0,
            Layout::Blocks4 => n / 4 * 4,
            Layout::Lanes8 => n / 8 * 8,
        }
    }
}

/// The layout a (n, k_pad) matrix of `bits`-bit values in groups of `group` is loaded in: int4 in
/// eight-row blocks where this machine runs the x86 kernels and its groups fit whole 32-value
/// units inside a column tile, otherwise four-row blocks where `blocked_layout` allows.
pub fn layout_for(bits: u32, n: usize, k_pad: usize, group: usize) -> Layout {
    if !blocked_layout(k_pad, group) {
        return Layout::Rows;
    }
    #[cfg(target_arch = "x86_64")]
    if bits == 4 && lanes8_fits(n, k_pad, group) && fixed::x86::KernelSet::detect().is_some() {
        return Layout::Lanes8;
    }
    let _ = (bits, n);
    Layout::Blocks4
}

/// Whether `Layout::Lanes8` can hold a matrix: a block of eight rows at least, groups of whole
/// 32-value units that never straddle a column tile, and of at most 1024 values (where the x86
/// kernels' sums split exactly into two f32, `lanes8_x86`).
pub fn lanes8_fits(n: usize, k_pad: usize, group: usize) -> bool {
    n >= 8 && group % 32 == 0 && group <= 1024 && fixed::TILE % group == 0 && k_pad % group == 0
}

/// Puts row-major int8 rows (n rows of k_pad) in the blocked layout, in place. Each whole block of
/// four rows is interleaved in 8-byte units (row 0's values 0-7, row 1's 0-7, .., row 3's, then
/// row 0's 8-15, ..), so the four-row kernels read one sequential stream; rows wider than
/// `fixed::TILE` are cut into column tiles stored tile after tile (every block's first TILE
/// columns, then every block's next ..), in the order `fixed::rows` reads them. Leftover rows
/// (n % 4) stay row-major at the end.
pub fn block_rows(q: &mut [i8], n: usize, k_pad: usize) {
    if k_pad == 0 {
        return;
    }
    let blocked = n / 4 * 4 * k_pad;
    // one block at a time: a copy of the whole table would double the load's peak memory
    let mut rows = vec![0i8; 4 * k_pad];
    for block in q[..blocked].chunks_exact_mut(4 * k_pad) {
        rows.copy_from_slice(block);
        for (u, unit) in block.chunks_exact_mut(32).enumerate() {
            for r in 0..4 {
                unit[8 * r..8 * (r + 1)].copy_from_slice(&rows[r * k_pad + 8 * u..r * k_pad + 8 * (u + 1)]);
            }
        }
    }
    if k_pad > fixed::TILE {
        // a block's tile (columns c0..c0 + w) is 4 * w bytes at 4 * c0 in it; tile c0 of every
        // block goes to c0 * (blocked rows) on. (Wide tables only are copied for this.)
        let src = q[..blocked].to_vec();
        let nb = n / 4 * 4;
        for (b, block) in src.chunks_exact(4 * k_pad).enumerate() {
            for c0 in (0..k_pad).step_by(fixed::TILE) {
                let w = fixed::TILE.min(k_pad - c0);
                q[c0 * nb + 4 * b * w..c0 * nb + 4 * (b + 1) * w].copy_from_slice(&block[4 * c0..4 * (c0 + w)]);
            }
        }
    }
}

/// The values of packed int4 rows (two per byte, low nibble first: docs/formats.md), one per byte.
fn unpack_q4(packed: &[i8]) -> Vec<i8> {
    packed.iter().flat_map(|&b| [(b << 4) >> 4, b >> 4]).collect()
}

/// Puts row-major int4 rows (n rows of k_pad values, two per byte: docs/formats.md) in the int4
/// blocked layout the kernels read: the int8 blocked layout (`block_rows`) with each 64-byte run
/// of it (16 values of a block's four rows) folded to 32 bytes, byte i holding run byte i in its
/// low nibble and run byte i + 32 in its high one. Leftover rows (n % 4) follow as int8 rows.
pub fn block_rows_q4(packed: &[i8], n: usize, k_pad: usize) -> Vec<i8> {
    let mut q = unpack_q4(packed);
    block_rows(&mut q, n, k_pad);
    let nb = n / 4 * 4;
    let mut out: Vec<i8> = q[..nb * k_pad].chunks_exact(64).flat_map(|run| (0..32).map(move |i| (run[i] & 0x0f) | (run[i + 32] << 4))).collect();
    out.extend_from_slice(&q[nb * k_pad..]);
    out
}

/// Where row r's value j of a `Layout::Lanes8` block tile is: (byte, high nibble). Each 8 columns
/// 8c..8c + 8 take 32 bytes: the low nibbles hold rows 0, 1, 4, 5 and the high nibbles rows 2, 3,
/// 6, 7, each row in two i32 lanes 2p, 2p + 1 (its columns 8c..8c + 4, then 8c + 4..8c + 8), one
/// value a byte. An AND, or a shift and an AND, then leave four rows' values in byte-product form
/// (vpdpbusd) against one 64-bit broadcast of the octet's activation digits, and a horizontal
/// add of the two halves' sums puts rows 0..8 in lanes 0..8.
#[inline(always)]
pub fn lanes8_place(r: usize, j: usize) -> (usize, bool) {
    let pair = (r & 1) + 2 * (r >> 2);
    (j / 8 * 32 + 4 * (2 * pair + j % 8 / 4) + j % 4, (r >> 1) & 1 == 1)
}

/// Row r's value j of a `Layout::Lanes8` block tile (`lanes8_place`; stored plus 8).
#[inline(always)]
pub fn lanes8_value(tile: &[i8], r: usize, j: usize) -> i8 {
    let (at, high) = lanes8_place(r, j);
    let b = tile[at] as u8;
    (if high { b >> 4 } else { b & 0x0f }) as i8 - 8
}

/// Puts row-major int4 rows in `Layout::Lanes8`: blocks of eight rows, column tiles as
/// `block_rows` (tile c0 of every block, then the next tile), each block's tile in the bytes of
/// `lanes8_place` with every value stored plus 8 (nibbles 1..15: unsigned bytes once unpacked;
/// the kernels subtract 8 times the activations' sums). Leftover rows (n % 8) follow as int8.
pub fn block_rows_lanes8(packed: &[i8], n: usize, k_pad: usize) -> Vec<i8> {
    let (nb, row) = (n / 8 * 8, k_pad / 2);
    let mut out = Vec::with_capacity(nb * row + (n - nb) * k_pad);
    for c0 in (0..k_pad).step_by(fixed::TILE) {
        let c1 = (c0 + fixed::TILE).min(k_pad);
        for b in (0..nb).step_by(8) {
            for c in (c0..c1).step_by(8) {
                // row r's columns c..c + 8, nibble m column c + m, each + 8 (a signed nibble's
                // XOR with 8)
                let row_of = |r: usize| {
                    let at = (b + r) * row + c / 2;
                    u32::from_le_bytes([0, 1, 2, 3].map(|i| packed[at + i] as u8)) ^ 0x8888_8888
                };
                let x: [u32; 8] = core::array::from_fn(row_of);
                let nibble = |r: usize, m: usize| ((x[r] >> (4 * m)) & 0xf) as u8;
                let mut bytes = [0u8; 32];
                for r in 0..8 {
                    for m in 0..8 {
                        let (at, high) = lanes8_place(r, m);
                        bytes[at] |= if high { nibble(r, m) << 4 } else { nibble(r, m) };
                    }
                }
                out.extend(bytes.map(|v| v as i8));
            }
        }
    }
    out.extend(unpack_q4(&packed[nb * row..]));
    out
}

/// Where row r's scale of group g is, `groups` a row, in a matrix of n rows in `layout`: by block
/// for `Layout::Lanes8` (block b's eight scales of group g together), row-major otherwise.
#[inline]
pub fn scale_index(r: usize, g: usize, n: usize, groups: usize, layout: Layout) -> usize {
    if layout == Layout::Lanes8 && r < layout.blocked_rows(n) {
        (r / 8 * groups + g) * 8 + r % 8
    } else {
        r * groups + g
    }
}

/// Row-major scales (n rows of `groups`) put where `scale_index` says for `layout`.
pub fn scales_by_block(scale: &[f32], n: usize, groups: usize, layout: Layout) -> Vec<f32> {
    let mut out = vec![0f32; scale.len()];
    for r in 0..n {
        for g in 0..groups {
            out[scale_index(r, g, n, groups, layout)] = scale[r * groups + g];
        }
    }
    out
}

/// Whether packed int4 rows hold the value -8 (a nibble 0b1000). The quantizer writes -7..7 only,
/// and the int4 kernels rely on it: for groups of 32 they sum a * 4096 + b in i32, which 32
/// products of -8 and -2^23 would overflow.
pub fn q4_holds_minus8(packed: &[i8]) -> bool {
    packed.iter().any(|&b| b & 0x0f == 0x08 || (b as u8) >> 4 == 0x08)
}

/// Row r's value j of a loaded int8 or int4 matrix (`Tensor::Q8`, in `layout`).
pub fn q_value(q: &[i8], r: usize, j: usize, n: usize, k_pad: usize, bits: u32, layout: Layout) -> i8 {
    let nb = layout.blocked_rows(n);
    if bits != 4 {
        return q[q8_index(r, j, n, k_pad, layout != Layout::Rows)];
    }
    if layout == Layout::Rows {
        let b = q[(r * k_pad + j) / 2];
        return if j % 2 == 0 { (b << 4) >> 4 } else { b >> 4 };
    }
    if r >= nb {
        return q[nb * k_pad / 2 + (r - nb) * k_pad + j];
    }
    if layout == Layout::Lanes8 {
        let c0 = j / fixed::TILE * fixed::TILE;
        let w = fixed::TILE.min(k_pad - c0);
        return lanes8_value(&q[(c0 * nb + r / 8 * 8 * w) / 2..], r % 8, j - c0);
    }
    // the int8 blocked position, then its place in the folded 32-byte run
    let at = q8_index(r, j, n, k_pad, true);
    let b = q[at / 64 * 32 + at % 32];
    if at % 64 < 32 { (b << 4) >> 4 } else { b >> 4 }
}

/// Where row r's value j is in `q` (int8, blocked as `block_rows` leaves it, or row-major).
#[inline]
pub fn q8_index(r: usize, j: usize, n: usize, k_pad: usize, blocked: bool) -> usize {
    let nb = n / 4 * 4;
    if blocked && r < nb {
        let c0 = j / fixed::TILE * fixed::TILE;
        let (w, jl) = (fixed::TILE.min(k_pad - c0), j - c0);
        c0 * nb + (r / 4) * 4 * w + (jl / 8) * 32 + (r % 4) * 8 + jl % 8
    } else {
        r * k_pad + j
    }
}

/// The name of the int8 kernel set matmuls run here: "avx512-vnni", "avx-vnni" or "avx2" (x86,
/// picked at run time), "simd128" (wasm) or "scalar".
pub fn kernel_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = fixed::x86::KernelSet::detect() {
        return k.name();
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return "simd128";
    #[allow(unreachable_code)]
    "scalar"
}

/// The T input rows of an int8 matmul (T rows of the packed width, zero-padded), as fixed point,
/// with the fastest kernels this machine has.
pub struct Q8Input {
    width: usize,
    group: usize,
    x: fixed::Fixed,
    #[cfg(target_arch = "x86_64")]
    x86: Option<fixed::x86::KernelSet>,
}

impl Q8Input {
    /// `layout`: the matrix's, for the input form its kernels take.
    pub fn new(xs: &[f32], width: usize, group: usize, layout: Layout) -> Q8Input {
        #[cfg(target_arch = "x86_64")]
        let x86 = fixed::x86::KernelSet::detect();
        let (n, g) = (xs.len(), group.max(1));
        let runs = (n + g - 1) / g;
        let mut x = fixed::Fixed { hi: vec![0i16; n], lo: vec![0i16; n], unit: vec![0f32; runs], planes: None };
        let lanes8 = layout == Layout::Lanes8;
        let mut planes = fixed::Planes { digits: vec![0u8; if lanes8 { 3 * n } else { 0 }], terms: vec![fixed::Terms::default(); if lanes8 { runs } else { 0 }] };
        // A prompt's tokens over the cores, each part whole tokens of whole runs: serial, the
        // split and the planes were 3% of a two-thread int4-g32 prefill's samples on the 0.5B
        // model, with the other thread waiting.
        let t = n / width.max(1);
        let per = match tokens_per_part(t, width) {
            tokens if tokens < t && t * width == n && width % g == 0 => tokens * width,
            _ => n.max(1),
        };
        struct Part<'a> {
            first: usize,
            hi: &'a mut [i16],
            lo: &'a mut [i16],
            unit: &'a mut [f32],
            digits: &'a mut [u8],
            terms: &'a mut [fixed::Terms],
        }
        let mut work = Vec::new();
        let (mut hi, mut lo, mut unit) = (&mut x.hi[..], &mut x.lo[..], &mut x.unit[..]);
        let (mut digits, mut terms) = (&mut planes.digits[..], &mut planes.terms[..]);
        for first in (0..n).step_by(per) {
            let len = per.min(n - first);
            let r = (len + g - 1) / g;
            work.push(Part { first, hi: take_front(&mut hi, len), lo: take_front(&mut lo, len), unit: take_front(&mut unit, r), digits: take_front(&mut digits, 3 * len), terms: take_front(&mut terms, r) });
        }
        run_split(&mut work, 1, |_, p| {
            let p = &mut p[0];
            fixed::split_into(&xs[p.first..p.first + p.hi.len()], group, p.hi, p.lo, p.unit);
            if lanes8 {
                #[cfg(target_arch = "x86_64")]
                if let Some(k) = &x86 {
                    return k.planes_into(p.hi, p.lo, p.unit, width, group, p.digits, p.terms);
                }
                fixed::planes_into(p.hi, p.lo, p.unit, width, group, p.digits, p.terms);
            }
        });
        if lanes8 {
            x.planes = Some(planes);
        }
        Q8Input {
            width,
            group,
            x,
            #[cfg(target_arch = "x86_64")]
            x86,
        }
    }

    /// ys[(r - first) * t + i] = token i's row times weight row r, for the rows first.. of the n
    /// rows in `q` that ys holds (see `fixed::rows`).
    #[allow(clippy::too_many_arguments)]
    pub fn rows(&self, t: usize, layout: Layout, bits: u32, q: &[i8], n: usize, first: usize, scale: &[f32], ys: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = &self.x86 {
            return unsafe { k.rows(&self.x, t, self.width, self.group, layout, bits, q, n, first, scale, ys) };
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return fixed::rows(&fixed::simd128::Simd128, &self.x, t, self.width, self.group, layout, bits, q, n, first, scale, ys);
        #[allow(unreachable_code)]
        fixed::rows(&fixed::Scalar, &self.x, t, self.width, self.group, layout, bits, q, n, first, scale, ys)
    }
}

/// sum x[i] * w[i] in f32.
#[inline]
pub fn dot_f32(x: &[f32], w: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return unsafe { dot_f32_avx2(x, w) };
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        return dot_f32_simd128(x, w);
    }
    #[allow(unreachable_code)]
    {
        let mut acc = [0f32; 4];
        let n = x.len().min(w.len());
        let mut i = 0;
        while i + 4 <= n {
            for l in 0..4 {
                acc[l] += x[i + l] * w[i + l];
            }
            i += 4;
        }
        let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        while i < n {
            s += x[i] * w[i];
            i += 1;
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(x: &[f32], w: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(w.len());
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(wp.add(i)), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 8)), _mm256_loadu_ps(wp.add(i + 8)), a1);
        i += 16;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1));
    let mut total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    while i < n {
        total += *xp.add(i) * *wp.add(i);
        i += 1;
    }
    total
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn dot_f32_simd128(x: &[f32], w: &[f32]) -> f32 {
    use core::arch::wasm32::*;
    let n = x.len().min(w.len());
    let mut a0 = f32x4_splat(0.0);
    let mut a1 = f32x4_splat(0.0);
    let mut i = 0;
    // SAFETY: loads stay inside x[..n] and w[..n].
    unsafe {
        while i + 8 <= n {
            a0 = f32x4_add(a0, f32x4_mul(v128_load(x.as_ptr().add(i) as *const v128), v128_load(w.as_ptr().add(i) as *const v128)));
            a1 = f32x4_add(a1, f32x4_mul(v128_load(x.as_ptr().add(i + 4) as *const v128), v128_load(w.as_ptr().add(i + 4) as *const v128)));
            i += 8;
        }
    }
    let s = f32x4_add(a0, a1);
    let mut total = (f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s)) + (f32x4_extract_lane::<2>(s) + f32x4_extract_lane::<3>(s));
    while i < n {
        total += x[i] * w[i];
        i += 1;
    }
    total
}

// --- matmul -------------------------------------------------------------------------------------

/// Weights of a matmul: int8 rows with scales, or f32 rows.
#[derive(Clone, Copy)]
pub enum Mat<'a> {
    /// `bits` 8 or 4 and `layout`: how `q` and `scale` hold the values (`Tensor::Q8`)
    Q8 { n: usize, k_pad: usize, group: usize, bits: u32, layout: Layout, q: &'a [i8], scale: &'a [f32] },
    F32 { n: usize, k: usize, w: &'a [f32] },
}

impl<'a> Mat<'a> {
    pub fn of(t: &'a crate::weights::Tensor, rows: usize, cols: usize) -> Mat<'a> {
        match t {
            crate::weights::Tensor::Q8 { n, k_pad, group, bits, layout, q, scale, .. } => {
                Mat::Q8 { n: *n, k_pad: *k_pad, group: *group, bits: *bits, layout: *layout, q, scale }
            }
            crate::weights::Tensor::F32 { data } => Mat::F32 { n: rows, k: cols, w: data },
        }
    }
    fn rows(&self) -> usize {
        match self {
            Mat::Q8 { n, .. } | Mat::F32 { n, .. } => *n,
        }
    }
    fn width(&self) -> usize {
        match self {
            Mat::Q8 { k_pad, .. } => *k_pad,
            Mat::F32 { k, .. } => *k,
        }
    }
}

/// The first n elements of `s` (all of them where it is shorter), leaving it the rest.
fn take_front<'a, T>(s: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let n = n.min(s.len());
    let (front, rest) = core::mem::take(s).split_at_mut(n);
    *s = rest;
    front
}

/// Threads a large matmul is split over, looked up once: `available_parallelism` reads cgroup
/// files on every call, which cost more than a small model's whole decode step.
fn workers() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WORKERS: AtomicUsize = AtomicUsize::new(0);
    match WORKERS.load(Ordering::Relaxed) {
        0 => {
            let n = crate::parallel::worker_count().clamp(1, 8);
            WORKERS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// Work (multiply-adds) below which a matmul stays on one thread: spawning costs ~20 us.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Tokens per part where T tokens of `len` elements each go over the cores (a prompt's worth of
/// elements: the pool's hand-off costs microseconds), T itself where they stay on one core.
fn tokens_per_part(t: usize, len: usize) -> usize {
    let parts = if t * len >= PARALLEL_MIN_WORK / 16 { workers().min(t) } else { 1 };
    (t + parts.max(1) - 1) / parts.max(1)
}

/// y = epilogue(prologue(x) @ W.T) for T tokens. `prologue`: the eps of a weightless RMSNorm.
#[allow(clippy::too_many_arguments)]
pub fn matmul(x: &[f32], xv: View, t: usize, prologue: Option<f32>, w: Mat, out: &mut [f32], ov: View, steps: &[Step]) {
    matmul_gated(x, xv, t, prologue, None, w, out, ov, steps)
}

/// `matmul` whose product is 0, and not computed, for the tokens whose `gate` (one value per
/// token: data and view) is 0: the experts a mixture's router did not pick (ir.OPS["matmul"]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_gated(x: &[f32], xv: View, t: usize, prologue: Option<f32>, gate: Option<(&[f32], View)>, w: Mat, out: &mut [f32], ov: View, steps: &[Step]) {
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let [xs, ys, rows] = &mut *scratch;
        let kept: Option<Vec<usize>> = gate.map(|(g, gv)| (0..t).filter(|&i| gv.row(g, i)[0] != 0.0).collect());
        matmul_in(x, xv, t, prologue, kept.as_deref(), w, out, ov, steps, [xs, ys, rows]);
        for v in scratch.iter_mut().filter(|v| v.capacity() > SCRATCH_KEEP) {
            *v = Vec::new();
        }
    })
}

thread_local! {
    /// matmul's working vectors (its input rows, its [row][token] results, its token rows), kept
    /// from call to call: new zeroed ones for every call of a prefill were 3.5% of a two-thread
    /// llama-30m prefill, all of it memset on the calling core while the other waited. Every use
    /// writes an element before it reads it.
    static SCRATCH: core::cell::RefCell<[Vec<f32>; 3]> = const { core::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// The most a `SCRATCH` vector keeps between calls (f32s: 32 MiB); larger ones, such as a whole
/// prompt's lm_head rows, are freed after their call.
const SCRATCH_KEEP: usize = 8 << 20;

/// `v`'s first n elements, grown with zeros where it is shorter; what they hold is left over.
fn scratch(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// `kept`: the tokens whose product is computed (all where None); the others' are 0.
#[allow(clippy::too_many_arguments)]
fn matmul_in(x: &[f32], xv: View, t: usize, prologue: Option<f32>, kept: Option<&[usize]>, w: Mat, out: &mut [f32], ov: View, steps: &[Step], [xs, ys, token_rows]: [&mut Vec<f32>; 3]) {
    let width = w.width();
    let n = w.rows();
    let tk = kept.map_or(t, |k| k.len());
    // the kept input rows, normalized and zero-padded to the packed width
    let xs = scratch(xs, tk * width);
    for_each_row(xs, View { off: 0, stride: width, len: width }, tk, |j, row| {
        let i = kept.map_or(j, |k| k[j]);
        let (dst, pad) = row.split_at_mut(xv.len.min(width));
        dst.copy_from_slice(&xv.row(x, i)[..dst.len()]);
        pad.fill(0.0);
        if let Some(eps) = prologue {
            rms_norm_in_place(&mut row[..xv.len], eps, None);
        }
    });
    let xs = &*xs;
    // int8 weights read the rows in their dot products' form; f32 weights read xs
    let q8 = match w {
        Mat::Q8 { group, layout, .. } if tk > 0 => Some(Q8Input::new(xs, width, group, layout)),
        _ => None,
    };
    // results as [row][token], rows split over threads when it pays (every kernel writes each of
    // its elements: `fixed::rows`)
    let workers = workers();
    let rows = |first: usize, part: &mut [f32]| match (w, &q8) {
        // threads split at multiples of eight rows, so every part starts on a block
        (Mat::Q8 { n, bits, layout, q, scale, .. }, Some(input)) => input.rows(tk, layout, bits, q, n, first, scale, part),
        (Mat::F32 { k, w: wt, .. }, _) => {
            for (j, o) in part.chunks_mut(tk).enumerate() {
                let wr = &wt[(first + j) * k..(first + j + 1) * k];
                for (i, y) in o.iter_mut().enumerate() {
                    *y = dot_f32(&xs[i * width..(i + 1) * width], wr);
                }
            }
        }
        (Mat::Q8 { .. }, None) => unreachable!("int8 weights get a Q8Input where a row is computed"),
    };
    let product = |ys: &mut [f32]| {
        if tk == 0 {
        } else if workers > 1 && n * width * tk >= PARALLEL_MIN_WORK && n >= 2 * workers {
            let per = ((n + workers - 1) / workers + 7) / 8 * 8;
            run_split(ys, per * tk, |block, part| rows(block * per, part));
        } else {
            rows(0, ys);
        }
    };
    let ys = match kept {
        Some(kept) if tk < t => {
            // [row][kept token] first, then spread over [row][token] with the others' zeros
            let compact = scratch(token_rows, n * tk);
            product(compact);
            let ys = scratch(ys, n * t);
            ys.fill(0.0);
            for r in 0..n {
                for (j, &i) in kept.iter().enumerate() {
                    ys[r * t + i] = compact[r * tk + j];
                }
            }
            ys
        }
        _ => {
            let ys = scratch(ys, n * t);
            product(ys);
            ys
        }
    };
    // Row i is built apart and stored last, so a Step::Own (the residual this output replaces in
    // place) reads each of its elements once, before the store of row i overwrites it. Rows are
    // stored in order and the residual's row i never lies before the output's (the same place, or
    // t0 rows later in the output tail), so no earlier store touches a row still to be read.
    if t == 1 {
        // one token: ys is its row already (a 32000-entry lm_head row was copied twice more)
        let row = &mut ys[..ov.len];
        apply_steps_over(row, 0, steps, out);
        ov.row_mut(out, 0).copy_from_slice(row);
        return;
    }
    // ys to token rows and the epilogue, over the cores where the product was: serial, this part
    // was 6% of a one-thread prefill on llama-30m. Each part builds its rows apart, reading `out`
    // (the residual of Step::Own) as it was, and they are stored once every part is done: a
    // residual row may lie in another part's output rows.
    let len = ov.len;
    let per = tokens_per_part(t, len);
    let rows = scratch(token_rows, t * len);
    let own: &[f32] = out;
    run_split(rows, per * len, |part, rows| {
        // 16 tokens at a time: each of a row's reads is then one cache line of its 16 tokens,
        // where one token at a time read a line per element
        const TOKENS: usize = 16;
        let first = part * per;
        let count = rows.len() / len;
        for i0 in (0..count).step_by(TOKENS) {
            let i1 = (i0 + TOKENS).min(count);
            for r in 0..len {
                for (j, v) in ys[r * t + first + i0..r * t + first + i1].iter().enumerate() {
                    rows[(i0 + j) * len + r] = *v;
                }
            }
            for (j, row) in rows[i0 * len..i1 * len].chunks_exact_mut(len).enumerate() {
                apply_steps_over(row, first + i0 + j, steps, own);
            }
        }
    });
    let rows = &*rows;
    for_each_row(out, ov, t, |i, row| row.copy_from_slice(&rows[i * len..(i + 1) * len]));
}

/// f(index, part) for each `size`-element part of `data`, natively spread over a pool of
/// threads that lives as long as the calling thread (spawning threads for every matmul cost
/// ~20-50 us each, 80 times per token on a 20-layer model).
#[cfg(not(target_arch = "wasm32"))]
fn run_split<T: Send, F: Fn(usize, &mut [T]) + Sync>(data: &mut [T], size: usize, f: F) {
    pool::run_split(data, size, &f)
}

#[cfg(not(target_arch = "wasm32"))]
mod pool {
    use std::cell::RefCell;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
    use std::time::{Duration, Instant};

    type Job = Box<dyn FnOnce() + Send + 'static>;

    struct Pool {
        jobs: Vec<Sender<Job>>,
        done: Receiver<bool>,
    }

    thread_local! {
        static POOL: RefCell<Option<Pool>> = RefCell::new(None);
    }

    fn start(workers: usize) -> Pool {
        let (done_tx, done) = channel();
        let jobs = (0..workers)
            .map(|_| {
                let (tx, rx) = channel::<Job>();
                let done_tx = done_tx.clone();
                std::thread::spawn(move || {
                    // ends when the pool (the Sender) is dropped with its thread
                    while let Some(job) = next(&rx) {
                        let ok = catch_unwind(AssertUnwindSafe(job)).is_ok();
                        if done_tx.send(ok).is_err() {
                            break;
                        }
                    }
                });
                tx
            })
            .collect();
        Pool { jobs, done }
    }

    /// How long a thread polls for its next message before it sleeps. A decode step sends work
    /// every few hundred microseconds; waking a sleeping thread takes tens of them on a VM, which
    /// a 20-layer model paid 160 times per token (one side of every split idle meanwhile).
    const SPIN: Duration = Duration::from_micros(300);

    /// The next message, polled for SPIN, then waited for; None once the sender is gone.
    fn next<T>(rx: &Receiver<T>) -> Option<T> {
        let start = Instant::now();
        loop {
            match rx.try_recv() {
                Ok(v) => return Some(v),
                Err(TryRecvError::Disconnected) => return None,
                // yield, not spin: on a busy machine the thread we wait for may need this core
                Err(TryRecvError::Empty) if start.elapsed() < SPIN => std::thread::yield_now(),
                Err(TryRecvError::Empty) => return rx.recv().ok(),
            }
        }
    }

    pub fn run_split<T: Send>(data: &mut [T], size: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
        POOL.with(|cell| {
            let mut slot = cell.borrow_mut();
            let parts: Vec<(usize, &mut [T])> = data.chunks_mut(size).enumerate().collect();
            let extra = parts.len().saturating_sub(1);
            if slot.as_ref().map_or(true, |p| p.jobs.len() < extra) {
                *slot = Some(start(extra));
            }
            let pool = slot.as_ref().unwrap();
            let mut parts = parts.into_iter();
            let first = parts.next();
            let mut sent = 0;
            for (k, (i, part)) in parts.enumerate() {
                let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || f(i, part));
                // SAFETY: the job borrows `data` and `f`; this function does not return before
                // every job sent has reported back on `done` (below), so the borrows outlive it.
                let job: Job = unsafe { std::mem::transmute(job) };
                if pool.jobs[k].send(job).is_err() {
                    panic!("matmul worker thread is gone");
                }
                sent += 1;
            }
            let mine = first.map(|(i, part)| catch_unwind(AssertUnwindSafe(|| f(i, part))).is_ok()).unwrap_or(true);
            let mut all_ok = mine;
            for _ in 0..sent {
                all_ok &= next(&pool.done).unwrap_or(false);
            }
            if !all_ok {
                panic!("a matmul worker panicked");
            }
        })
    }
}

#[cfg(target_arch = "wasm32")]
fn run_split<T, F: Fn(usize, &mut [T])>(data: &mut [T], size: usize, f: F) {
    for (i, part) in data.chunks_mut(size).enumerate() {
        f(i, part);
    }
}

// --- the other kernels ----------------------------------------------------------------------------

/// Rows of an embedding table at `ids` (int8 rows times their scales, or f32 rows), then epilogue.
pub fn embedding(table: &crate::weights::Tensor, ids: &[u32], out: &mut [f32], ov: View, steps: &[Step]) {
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        let row = ov.row_mut(out, t);
        match table {
            crate::weights::Tensor::Q8 { n, k_pad, group, bits, layout, q, scale, .. } => {
                let groups = k_pad / group;
                for (j, v) in row.iter_mut().enumerate() {
                    *v = q_value(q, id, j, *n, *k_pad, *bits, *layout) as f32 * scale[scale_index(id, j / group, *n, groups, *layout)];
                }
            }
            crate::weights::Tensor::F32 { data } => row.copy_from_slice(&data[id * row.len()..(id + 1) * row.len()]),
        }
        apply_steps(row, t, steps);
    }
}

/// Rows [pos, pos + T) of a position table with `row` elements per position.
pub fn positions(table: &[f32], row: usize, pos: usize, t: usize, out: &mut [f32], ov: View) {
    for i in 0..t {
        ov.row_mut(out, i).copy_from_slice(&table[(pos + i) * row..(pos + i + 1) * row]);
    }
}

/// Half-split rotary embedding of (T, H, D) by per-token cos/sin rows of D/2, then epilogue.
#[allow(clippy::too_many_arguments)]
pub fn rope(x: &[f32], xv: View, t: usize, head_dim: usize, cos: &[f32], cv: View, sin: &[f32], sv: View, out: &mut [f32], ov: View, steps: &[Step]) {
    let d = head_dim / 2;
    for_each_row(out, ov, t, |i, yr| {
        let (xr, c, s) = (xv.row(x, i), cv.row(cos, i), sv.row(sin, i));
        for (xh, yh) in xr.chunks(head_dim).zip(yr.chunks_mut(head_dim)) {
            for j in 0..d {
                let (x1, x2) = (xh[j], xh[j + d]);
                yh[j] = x1 * c[j] + x2 * s[j];
                yh[j + d] = x1 * (-s[j]) + x2 * c[j];
            }
        }
        apply_steps(yr, i, steps);
    });
}

/// f(i, token i's row of `out` at `ov`) for the T tokens, over the cores when they are a prompt's
/// worth of elements. Each row is one token's own, so the order does not matter. A prompt's
/// norms, gates and ropes, and matmul's input rows and stores, ran on one core while the other
/// waited: in a two-thread llama-30m prefill, unary_row and its expf were 5.6% of the calling
/// thread's time, and the second thread was idle for 19% of its own.
fn for_each_row<F: Fn(usize, &mut [f32]) + Sync>(out: &mut [f32], ov: View, t: usize, f: F) {
    let (stride, per) = (ov.stride, tokens_per_part(t, ov.len));
    // a part is a run of whole strides from row 0's start, so rows must not overlap
    if per >= t || ov.len > stride {
        for i in 0..t {
            f(i, ov.row_mut(out, i));
        }
        return;
    }
    run_split(&mut out[ov.off..ov.off + (t - 1) * stride + ov.len], per * stride, |part, chunk| {
        let first = part * per;
        for i in first..t.min(first + per) {
            f(i, &mut chunk[(i - first) * stride..][..ov.len]);
        }
    });
}

/// Apply steps to a copy of x (the `elementwise` kernel; also a standalone norm).
/// The mean of each run of `width` elements of token t's row: out row j = mean(x row[j*width..][..width]).
pub fn row_mean(x: &[f32], xv: View, t: usize, width: usize, out: &mut [f32], ov: View) {
    for i in 0..t {
        let (src, dst) = (xv.row(x, i), ov.row_mut(out, i));
        for (j, d) in dst.iter_mut().enumerate() {
            *d = src[j * width..(j + 1) * width].iter().sum::<f32>() / width as f32;
        }
    }
}

/// The IR's `topk`: out[t, g * k + r] = the r-th largest of x[t, g * width ..][..width] (descending,
/// equal values lower index first), or its index as f32 when `indices`. k passes over the group, each
/// taking the first in (value desc, index asc) order after the last one taken: k and width are a
/// router's (8 of 64 experts), so there is nothing to sort.
#[allow(clippy::too_many_arguments)]
pub fn row_topk(x: &[f32], xv: View, t: usize, width: usize, k: usize, indices: bool, out: &mut [f32], ov: View) {
    for i in 0..t {
        let (src, dst) = (xv.row(x, i), ov.row_mut(out, i));
        for (run, res) in src.chunks_exact(width).zip(dst.chunks_exact_mut(k)) {
            let mut prev: Option<(f32, usize)> = None;
            for r in res.iter_mut() {
                let mut best: Option<(f32, usize)> = None;
                for (j, &v) in run.iter().enumerate() {
                    let after = prev.map_or(true, |(pv, pj)| v < pv || (v == pv && j > pj));
                    if after && best.map_or(true, |(bv, _)| v > bv) {
                        best = Some((v, j));
                    }
                }
                let (v, j) = best.expect("k <= width");
                *r = if indices { j as f32 } else { v };
                prev = best;
            }
        }
    }
}

/// The IR's `gather`: out[t, g * k + r] = x[t, g * width + index[t, g * k + r]]. The indices are a
/// topk's, in range; a bad one reads the group's last element rather than another group's.
#[allow(clippy::too_many_arguments)]
pub fn row_gather(x: &[f32], xv: View, index: &[f32], iv: View, t: usize, width: usize, k: usize, out: &mut [f32], ov: View) {
    for i in 0..t {
        let (src, ix, dst) = (xv.row(x, i), iv.row(index, i), ov.row_mut(out, i));
        for ((run, ir), res) in src.chunks_exact(width).zip(ix.chunks_exact(k)).zip(dst.chunks_exact_mut(k)) {
            for (r, &j) in res.iter_mut().zip(ir) {
                *r = run[(j as usize).min(width - 1)];
            }
        }
    }
}

/// The IR's `scatter`: each group of `width` zeros, then out[t, g * width + index[t, g * k + r]] =
/// src[t, g * k + r] (or `value` without src).
#[allow(clippy::too_many_arguments)]
pub fn row_scatter(index: &[f32], iv: View, src: Option<(&[f32], View)>, value: f32, t: usize, width: usize, k: usize,
                   out: &mut [f32], ov: View) {
    for i in 0..t {
        let (ix, dst) = (iv.row(index, i), ov.row_mut(out, i));
        for (g, (ir, res)) in ix.chunks_exact(k).zip(dst.chunks_exact_mut(width)).enumerate() {
            res.fill(0.0);
            for (r, &j) in ir.iter().enumerate() {
                res[(j as usize).min(width - 1)] = src.map_or(value, |(s, sv)| sv.row(s, i)[g * k + r]);
            }
        }
    }
}

pub fn elementwise(x: &[f32], xv: View, t: usize, out: &mut [f32], ov: View, steps: &[Step]) {
    for_each_row(out, ov, t, |i, row| {
        row.copy_from_slice(xv.row(x, i));
        apply_steps(row, i, steps);
    });
}

/// `elementwise` over its own input, which lies in `out` at xv (the memory plan's in-place row op):
/// row t is moved to its place (nothing moves when xv is ov) and the steps run there. Rows go in
/// order and an input row never lies before its output row (t0 rows later in the output tail), so
/// no input row is overwritten before it is read.
pub fn elementwise_in_place(xv: View, t: usize, out: &mut [f32], ov: View, steps: &[Step]) {
    for i in 0..t {
        let src = i * xv.stride + xv.off;
        out.copy_within(src..src + xv.len, i * ov.stride + ov.off);
        apply_steps(ov.row_mut(out, i), i, steps);
    }
}

/// The one data-moving copy (a permute, broadcast or inner slice that is not one block per token,
/// and each input of a concat): for every index i of `shape`, token t's
/// out[ov.off + t * ov.stride + i . dst] = x[xv.off + t * xv.stride + i . src].
/// The views' `len` is the span the walk touches (bounds-checked once per row); at most 8 dims.
pub fn strided_copy(x: &[f32], xv: View, t: usize, shape: &[usize], src: &[usize], dst: &[usize], out: &mut [f32], ov: View) {
    let rank = shape.len();
    let inner = shape[rank - 1];
    let (si, di) = (src[rank - 1], dst[rank - 1]);
    let outer: usize = shape[..rank - 1].iter().product();
    for i in 0..t {
        let (s, d) = (xv.row(x, i), ov.row_mut(out, i));
        let mut idx = [0usize; 8];
        let (mut so, mut dof) = (0usize, 0usize);
        for _ in 0..outer {
            if si == 1 && di == 1 {
                d[dof..dof + inner].copy_from_slice(&s[so..so + inner]);
            } else {
                for k in 0..inner {
                    d[dof + k * di] = s[so + k * si];
                }
            }
            // the next index of the outer dims, last fastest
            let mut a = rank - 1;
            while a > 0 {
                a -= 1;
                idx[a] += 1;
                so += src[a];
                dof += dst[a];
                if idx[a] < shape[a] {
                    break;
                }
                so -= src[a] * shape[a];
                dof -= dst[a] * shape[a];
                idx[a] = 0;
            }
        }
    }
}

/// y[t] = x[t - 1]: the row before position pos is `carried` (zeros at position 0, so a reset
/// context starts clean); the last row of x becomes the new carried row.
pub fn token_shift(x: &[f32], xv: View, t: usize, pos: usize, carried: &mut [f32], out: &mut [f32], ov: View) {
    if pos == 0 {
        carried.iter_mut().for_each(|v| *v = 0.0);
    }
    for i in 0..t {
        let prev: &[f32] = if i == 0 { carried } else { xv.row(x, i - 1) };
        ov.row_mut(out, i).copy_from_slice(prev);
    }
    if t > 0 {
        carried.copy_from_slice(xv.row(x, t - 1));
    }
}

/// One attention node's cache: `positions` rows of (n_kv_head, head_dim) keys and values.
pub struct KvCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub row: usize,
}

impl KvCache {
    pub fn new(positions: usize, n_kv_head: usize, head_dim: usize) -> KvCache {
        let row = n_kv_head * head_dim;
        KvCache { k: vec![0.0; positions * row], v: vec![0.0; positions * row], row }
    }
}

/// Attention shape constants.
#[derive(Clone, Copy)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// 0: full causal; w > 0: a query at p sees keys (p - w, p]
    pub window: usize,
    /// 0: none; c > 0: each score s becomes c * tanh(s / c) (Gemma 2), before the mask
    pub softcap: f32,
    /// empty: none; else ALiBi's slope m_h of each query head: the score of key j for the query at p
    /// gains m_h * (j - p) after the softcap (Bloom, MPT)
    pub alibi: &'static [f32],
    /// empty: none; else each query head's sink: one more logit in its softmax, of no value (GPT-OSS)
    pub sinks: &'static [f32],
}

/// A score's softcap, c * tanh(s / c): elementwise.softcap_steps' steps, in the runtime's functions.
#[inline]
fn softcap(s: f32, c: f32) -> f32 {
    crate::elementwise::mul(crate::elementwise::tanh(crate::elementwise::div(s, c)), c)
}

/// Causal attention of T new tokens at positions pos.. over the cache. The new keys and values
/// are copied into cache rows [pos, pos + T) first; `None`: the kernel that produced them wrote them
/// there already (the memory plan's KV-cache write). The caller guarantees pos + T <= the cache's
/// positions.
#[allow(clippy::too_many_arguments)]
pub fn attention(q: &[f32], qv: View, k: Option<(&[f32], View)>, v: Option<(&[f32], View)>, t: usize, pos: usize, cache: &mut KvCache, a: AttnShape, out: &mut [f32], ov: View) {
    let row = cache.row;
    for i in 0..t {
        if let Some((k, kv)) = k {
            cache.k[(pos + i) * row..(pos + i + 1) * row].copy_from_slice(kv.row(k, i));
        }
        if let Some((v, vv)) = v {
            cache.v[(pos + i) * row..(pos + i + 1) * row].copy_from_slice(vv.row(v, i));
        }
    }
    let (keys, values) = (&cache.k[..], &cache.v[..]);
    let d = a.head_dim;
    // (token, head) pairs over the cores, dealt round-robin (a token's work grows with its
    // position): serial, a prompt's quadratic part was 12% of a one-thread prefill on llama-30m
    // and held two threads to 1.55x one. Decode splits too, from a few dozen positions on (the
    // pool's hand-off costs microseconds): its heads at 130-190 positions on llama-30m kept the
    // second core idle for 7% of a token (two threads: 890 -> 985 tok/s, median, int4-g32).
    // Each part's heads are built apart and stored after: the same arithmetic per head, the same bits.
    let units = t * a.n_head;
    let workers = if t * (pos + t) * a.n_head * d >= PARALLEL_MIN_WORK / 16 { workers().min(units) } else { 1 };
    let per = (units + workers - 1) / workers;
    let mut ys = vec![0f32; workers * per * d];
    run_split(&mut ys, per * d, |part, heads| {
        let mut scores = vec![0f32; pos + t];
        for (s, y) in heads.chunks_exact_mut(d).enumerate() {
            let u = s * workers + part;
            if u < units {
                let (i, h) = (u / a.n_head, u % a.n_head);
                attend(&qv.row(q, i)[h * d..(h + 1) * d], pos + i, h, keys, values, row, a, &mut scores, y);
            }
        }
    });
    for u in 0..units {
        // unit u is slot u / workers of part u % workers (the inverse of u = s * workers + part)
        let (i, h, at) = (u / a.n_head, u % a.n_head, ((u % workers) * per + u / workers) * d);
        ov.row_mut(out, i)[h * d..(h + 1) * d].copy_from_slice(&ys[at..at + d]);
    }
}

/// Head h of one query token at position p (`qh`) over the cached keys and values (rows of
/// `row`), into `yh`; `scores` holds at least p + 1.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend(qh: &[f32], p: usize, h: usize, keys: &[f32], values: &[f32], row: usize, a: AttnShape, scores: &mut [f32], yh: &mut [f32]) {
    let d = a.head_dim;
    let kh = h / (a.n_head / a.n_kv_head);
    let lo = if a.window > 0 && p + 1 > a.window { p + 1 - a.window } else { 0 };
    // the keys the SIMD loop leaves
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let j = simd128_attention::scores(qh, keys, row, kh * d, lo, p, a.scale, scores);
    #[cfg(target_arch = "x86_64")]
    let j = if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, the function's requirements
        unsafe { scores_avx2(qh, keys, row, kh * d, lo, p, a.scale, scores) }
    } else {
        lo
    };
    #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))))]
    let j = lo;
    for j in j..=p {
        scores[j] = dot_f32(qh, &keys[j * row + kh * d..j * row + (kh + 1) * d]) * a.scale;
    }
    if a.softcap > 0.0 {
        scores[lo..=p].iter_mut().for_each(|s| *s = softcap(*s, a.softcap));
    }
    if let Some(&m) = a.alibi.get(h) {
        for (j, s) in (lo..=p).zip(&mut scores[lo..=p]) {
            *s += m * (j as f32 - p as f32);
        }
    }
    let sink = a.sinks.get(h).copied();
    let mut max = sink.unwrap_or(f32::NEG_INFINITY);
    for &s in &scores[lo..=p] {
        if s > max {
            max = s; // not f32::max: a libm call on wasm
        }
    }
    let mut sum = sink.map_or(0.0, |s| crate::math::expf(s - max));
    for s in &mut scores[lo..=p] {
        *s = crate::math::expf(*s - max);
        sum += *s;
    }
    for s in &mut scores[lo..=p] {
        *s /= sum;
    }
    yh.iter_mut().for_each(|y| *y = 0.0);
    // the columns the SIMD loop leaves
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let c0 = simd128_attention::weighted_sum(&scores[lo..=p], &values[lo * row + kh * d..], row, yh);
    #[cfg(target_arch = "x86_64")]
    let c0 = if is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, the function's one requirement
        unsafe { weighted_sum_avx(&scores[lo..=p], &values[lo * row + kh * d..], row, yh) }
    } else {
        0
    };
    #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))))]
    let c0 = 0;
    for j in lo..=p {
        let vr = &values[j * row + kh * d + c0..j * row + (kh + 1) * d];
        for (y, vv) in yh[c0..].iter_mut().zip(vr) {
            *y += scores[j] * vv;
        }
    }
}

/// scores[j] = dot_f32(q, key j) * scale for the keys lo..=p (key j at keys[j * row + off..]),
/// four keys at a time, each with dot_f32_avx2's arithmetic (two FMA chains over 16 values a step,
/// their sum, then ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)) of its lanes); returns the
/// first key left to the caller. (One key a call, with its horizontal sum through memory, scores
/// were 6-9% of a one-thread decode token on llama-30m at 190 positions.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_avx2(q: &[f32], keys: &[f32], row: usize, off: usize, lo: usize, p: usize, scale: f32, scores: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let d = q.len();
    let mut j = lo;
    if d % 16 != 0 {
        return j; // (dot_f32_avx2 adds a remainder one product at a time; the caller does those)
    }
    assert!(scores.len() > p && keys.len() >= p * row + off + d);
    // [a0 + a1, a2 + a3, b0 + b1, b2 + b3]: the pairs of two vectors' lanes
    let pairs = |a: __m128, b: __m128| _mm_add_ps(_mm_shuffle_ps::<0b10_00_10_00>(a, b), _mm_shuffle_ps::<0b11_01_11_01>(a, b));
    while j + 4 <= p + 1 {
        // (loads stay inside q[..d] and keys j..j + 4's [off, off + d), inside keys by the assert)
        let kp: [*const f32; 4] = [0, 1, 2, 3].map(|i| keys.as_ptr().add((j + i) * row + off));
        let z = _mm256_setzero_ps();
        let mut acc = [[z; 2]; 4];
        let mut i = 0;
        while i + 16 <= d {
            let (q0, q1) = (_mm256_loadu_ps(q.as_ptr().add(i)), _mm256_loadu_ps(q.as_ptr().add(i + 8)));
            for (a, k) in acc.iter_mut().zip(kp) {
                a[0] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k.add(i)), a[0]);
                a[1] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(k.add(i + 8)), a[1]);
            }
            i += 16;
        }
        let mut h = [_mm_setzero_ps(); 4];
        for (h, a) in h.iter_mut().zip(acc) {
            let v = _mm256_add_ps(a[0], a[1]);
            *h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v)); // l0 + l4, ..
        }
        let dots = _mm_mul_ps(pairs(pairs(h[0], h[1]), pairs(h[2], h[3])), _mm_set1_ps(scale));
        _mm_storeu_ps(scores.as_mut_ptr().add(j), dots);
        j += 4;
    }
    j
}

/// y[c] += p[j] * value j[c] for every key j in order (value j at values[j * row..]), 32 columns
/// of y in registers at a time, a product then a sum as the scalar loop (the same bits); returns
/// the first column left to the caller. (The scalar loop, in SSE2 with y loaded and stored for
/// every key, was 3% of a one-thread decode token on the 0.5B model at 190 positions.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn weighted_sum_avx(p: &[f32], values: &[f32], row: usize, y: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let d = y.len();
    let mut c0 = 0;
    assert!(!p.is_empty() && values.len() >= (p.len() - 1) * row + d);
    while c0 + 32 <= d {
        let yp = y[c0..].as_mut_ptr();
        // (loads and stores stay inside y[c0..c0 + 32] and each value row's [c0, c0 + 32), inside
        // values by the assert; plain loops, as in array::map's closure the intrinsics would lose
        // the target feature)
        let mut acc = [_mm256_setzero_ps(); 4];
        for (l, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(yp.add(8 * l));
        }
        for (j, pj) in p.iter().enumerate() {
            let (w, vp) = (_mm256_set1_ps(*pj), values.as_ptr().add(j * row + c0));
            for (l, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(w, _mm256_loadu_ps(vp.add(8 * l))));
            }
        }
        for (l, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(yp.add(8 * l), *a);
        }
        c0 += 32;
    }
    c0
}

/// Attention's two loops in SIMD128, with the scalar code's f32 operations in the same order, so
/// the bits do not change: they were 9% of a wasm decode token at 190 positions (llama-30m),
/// one key at a time through `dot_f32` with its horizontal sum, and a scalar weighted sum.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128_attention {
    use core::arch::wasm32::*;

    /// scores[j] = dot_f32(q, key j) * scale for the keys lo..=p (key j at keys[j * row + off..]),
    /// four keys at a time, each with dot_f32_simd128's arithmetic (lanes i % 8 < 4 and the rest
    /// summed apart, then (s0 + s1) + (s2 + s3)); returns the first key left to the caller.
    #[allow(clippy::too_many_arguments)]
    pub fn scores(q: &[f32], keys: &[f32], row: usize, off: usize, lo: usize, p: usize, scale: f32, scores: &mut [f32]) -> usize {
        let d = q.len();
        let mut j = lo;
        if d % 8 != 0 {
            return j;
        }
        while j + 4 <= p + 1 {
            let k = [0, 1, 2, 3].map(|i| &keys[(j + i) * row + off..(j + i) * row + off + d]);
            let z = f32x4_splat(0.0);
            let mut acc = [[z; 2]; 4];
            let mut i = 0;
            // SAFETY: every load reads inside q[..d] and the four keys' rows of d (i + 8 <= d).
            unsafe {
                while i + 8 <= d {
                    let (q0, q1) = (v128_load(q.as_ptr().add(i) as *const v128), v128_load(q.as_ptr().add(i + 4) as *const v128));
                    for (a, kr) in acc.iter_mut().zip(&k) {
                        a[0] = f32x4_add(a[0], f32x4_mul(q0, v128_load(kr.as_ptr().add(i) as *const v128)));
                        a[1] = f32x4_add(a[1], f32x4_mul(q1, v128_load(kr.as_ptr().add(i + 4) as *const v128)));
                    }
                    i += 8;
                }
            }
            let s = acc.map(|a| f32x4_add(a[0], a[1]));
            // [s0 + s1, s2 + s3] of two keys, then the two halves' sums of all four
            let pairs = |a: v128, b: v128| f32x4_add(i32x4_shuffle::<0, 2, 4, 6>(a, b), i32x4_shuffle::<1, 3, 5, 7>(a, b));
            let (ab, cd) = (pairs(s[0], s[1]), pairs(s[2], s[3]));
            let dots = f32x4_mul(pairs(ab, cd), f32x4_splat(scale));
            let out = &mut scores[j..j + 4];
            // SAFETY: out holds four f32
            unsafe { v128_store(out.as_mut_ptr() as *mut v128, dots) };
            j += 4;
        }
        j
    }

    /// y[c] += p[j] * value j[c] for every key j in order (value j at values[j * row..]), 32
    /// columns of y in registers at a time; returns the first column left to the caller.
    pub fn weighted_sum(p: &[f32], values: &[f32], row: usize, y: &mut [f32]) -> usize {
        let d = y.len();
        let mut c0 = 0;
        assert!(!p.is_empty() && values.len() >= (p.len() - 1) * row + d);
        while c0 + 32 <= d {
            let yp = y[c0..].as_mut_ptr();
            // SAFETY: loads and stores stay inside y[c0..c0 + 32] and each value row's
            // [c0, c0 + 32), inside values by the assert
            unsafe {
                let mut acc = [0, 1, 2, 3, 4, 5, 6, 7].map(|l| v128_load(yp.add(4 * l) as *const v128));
                for (j, pj) in p.iter().enumerate() {
                    let (w, vp) = (f32x4_splat(*pj), values.as_ptr().add(j * row + c0));
                    for (l, a) in acc.iter_mut().enumerate() {
                        *a = f32x4_add(*a, f32x4_mul(w, v128_load(vp.add(4 * l) as *const v128)));
                    }
                }
                for (l, a) in acc.iter().enumerate() {
                    v128_store(yp.add(4 * l) as *mut v128, *a);
                }
            }
            c0 += 32;
        }
        c0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fixed::Kernels;

    pub(super) fn blocked(q: &[i8], n: usize, k_pad: usize) -> Vec<i8> {
        let mut b = q.to_vec();
        block_rows(&mut b, n, k_pad);
        b
    }

    pub(super) fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    #[test]
    fn simd_dots_match_scalar() {
        let mut s = 1u64;
        for n in [0usize, 3, 7, 16, 31, 32, 33, 200, 1280] {
            let x: Vec<f32> = (0..n).map(|_| lcg(&mut s)).collect();
            let w: Vec<f32> = (0..n).map(|_| lcg(&mut s)).collect();
            let exact: f64 = x.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((dot_f32(&x, &w) as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()));
            // the fixed-point int8 dots: AVX2 (where the CPU has it) equals the scalar sums exactly
            let hi: Vec<i16> = (0..n).map(|_| (lcg(&mut s) * 2048.0) as i16).collect();
            let lo: Vec<i16> = (0..n).map(|_| (lcg(&mut s) * 2048.0) as i16).collect();
            let q: Vec<i8> = (0..4 * n).map(|_| (lcg(&mut s) * 128.0) as i8).collect();
            let want = |r: usize| fixed::dot_i32_scalar(&hi, &lo, &q[r * n..(r + 1) * n]);
            let block = blocked(&q, 4, n); // (blocked only when n is a multiple of 16)
            let four = [want(0), want(1), want(2), want(3)];
            #[cfg(target_arch = "x86_64")]
            let k = fixed::x86::KernelSet::detect().map(|k| k.plain());
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            let k = Some(fixed::simd128::Simd128);
            #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))))]
            let k = Some(fixed::Scalar);
            if let Some(k) = k {
                assert_eq!(k.dot(&hi, &lo, &q[..n]), want(0), "n={}", n);
                if n % 16 == 0 {
                    assert_eq!(k.dot4(&hi, &lo, &block), four, "n={}", n);
                    assert_eq!(fixed::Scalar.dot4(&hi, &lo, &block), four, "n={}", n);
                }
            }
        }
    }

    #[test]
    fn fixed_point_dot_is_as_precise_as_f32() {
        // the int8 dot: error within 2^-22 of max|x| * sum|q| (f32's own rounding of the
        // largest value is 2^-24 of it), in groups, across the TILE-value flush, with a tail
        let mut s = 7u64;
        for (n, group) in [(16usize, 16usize), (200, 200), (256, 128), (10000, 10000), (35, 35)] {
            let x: Vec<f32> = (0..n).map(|i| lcg(&mut s) * if i % 7 == 0 { 30.0 } else { 1.0 }).collect();
            let q: Vec<i8> = (0..n).map(|_| (lcg(&mut s) * 254.0) as i8).collect();
            for (g, run) in x.chunks(group).enumerate() {
                let (a, b) = (g * group, g * group + run.len());
                let f = fixed::split(run, run.len());
                let got = fixed::dot_row(&fixed::Scalar, &f, run.len(), run.len(), 0, &q[a..b], &[1.0]) as f64;
                let exact: f64 = run.iter().zip(&q[a..b]).map(|(x, q)| *x as f64 * *q as f64).sum();
                let m = run.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let bound = m * q[a..b].iter().map(|v| (*v as f64).abs()).sum::<f64>() / 4194304.0;
                assert!((got - exact).abs() <= bound, "n={} got {} exact {}", n, got, exact);
            }
        }
        let x: Vec<f32> = (0..304).map(|_| lcg(&mut s)).collect();
        let q: Vec<i8> = (0..4 * 304).map(|_| (lcg(&mut s) * 127.0) as i8).collect();
        let f = fixed::split(&x, 304);
        let four = fixed::Scalar.dot4(&f.hi, &f.lo, &blocked(&q, 4, 304));
        for (r, d) in four.iter().enumerate() {
            assert_eq!(*d, fixed::Scalar.dot(&f.hi, &f.lo, &q[r * 304..(r + 1) * 304]));
        }
        let f = fixed::split(&[0.0, 0.0, f32::NAN, 1.0], 2);
        assert_eq!(f.unit[0], 0.0);
        assert!(f.unit[1].is_nan());
    }

    #[test]
    fn grouped_matmul_matches_dequantized() {
        let mut s = 7u64;
        for t in [1usize, 3] {
        let (n, k, group) = (40, 128, 64);
        let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut s) * 127.0) as i8).collect();
        let scale: Vec<f32> = (0..n * 2).map(|_| lcg(&mut s).abs() * 0.01).collect();
        let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut s)).collect();
        let mut out = vec![0f32; t * n];
        let v = View { off: 0, stride: k, len: k };
        matmul(&x, v, t, None, Mat::Q8 { n, k_pad: k, group, bits: 8, layout: Layout::Rows, q: &q, scale: &scale }, &mut out, View { off: 0, stride: n, len: n }, &[]);
        for i in 0..t {
            for r in 0..n {
                let want: f64 = (0..k).map(|c| x[i * k + c] as f64 * q[r * k + c] as f64 * scale[r * 2 + c / group] as f64).sum();
                assert!((out[i * n + r] as f64 - want).abs() < 1e-4, "{} {}", out[i * n + r], want);
            }
        }
        }
    }

    #[test]
    fn threaded_matmul_matches_row_by_row() {
        // large enough for the thread pool (PARALLEL_MIN_WORK), decode and prefill shapes, twice;
        // 602 rows: the split rounds to whole blocks of four
        let mut s = 3u64;
        let (n, k) = (602, 512);
        let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut s) * 127.0) as i8).collect();
        let scale: Vec<f32> = (0..n).map(|_| lcg(&mut s).abs() * 0.01).collect();
        let blocked = blocked(&q, n, k);
        for t in [1usize, 2, 1] {
            let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut s)).collect();
            let (xv, ov) = (View { off: 0, stride: k, len: k }, View { off: 0, stride: n, len: n });
            let mut out = vec![0f32; t * n];
            matmul(&x, xv, t, None, Mat::Q8 { n, k_pad: k, group: k, bits: 8, layout: Layout::Rows, q: &q, scale: &scale }, &mut out, ov, &[]);
            for i in 0..t {
                let input = fixed::split(&x[i * k..(i + 1) * k], k);
                for r in 0..n {
                    let want = fixed::dot_row(&fixed::Scalar, &input, k, k, 0, &q[r * k..(r + 1) * k], &scale[r..r + 1]);
                    assert_eq!(out[i * n + r], want);
                }
            }
            let mut fast = vec![0f32; t * n];
            matmul(&x, xv, t, None, Mat::Q8 { n, k_pad: k, group: k, bits: 8, layout: Layout::Blocks4, q: &blocked, scale: &scale }, &mut fast, ov, &[]);
            assert_eq!(out, fast);
        }
    }

    /// A random (n, k) int8 matrix with groups of `group`: blocked, its values sit where q8_index
    /// says (rows 0..n, columns `cols`), and matmul of T tokens (each of `ts`) gives the same bits
    /// as row-major.
    fn check_blocked_layout(s: &mut u64, n: usize, k: usize, group: usize, cols: &[usize], ts: &[usize]) {
        let q: Vec<i8> = (0..n * k).map(|_| (lcg(s) * 127.0) as i8).collect();
        let scale: Vec<f32> = (0..n * k / group).map(|_| lcg(s).abs() * 0.01).collect();
        let blocked = blocked(&q, n, k);
        assert!(blocked_layout(k, group));
        for r in 0..n {
            for &j in cols {
                assert_eq!(blocked[q8_index(r, j, n, k, true)], q[r * k + j], "n={} k={} r={} j={}", n, k, r, j);
            }
        }
        for &t in ts {
            let x: Vec<f32> = (0..t * k).map(|_| lcg(s)).collect();
            let (xv, ov) = (View { off: 0, stride: k, len: k }, View { off: 0, stride: n, len: n });
            let mut plain = vec![0f32; t * n];
            matmul(&x, xv, t, None, Mat::Q8 { n, k_pad: k, group, bits: 8, layout: Layout::Rows, q: &q, scale: &scale }, &mut plain, ov, &[]);
            let mut fast = vec![0f32; t * n];
            matmul(&x, xv, t, None, Mat::Q8 { n, k_pad: k, group, bits: 8, layout: Layout::Blocks4, q: &blocked, scale: &scale }, &mut fast, ov, &[]);
            assert_eq!(plain, fast, "n={} k={} t={}", n, k, t);
        }
    }

    #[test]
    fn blocked_layout_gives_the_same_bits() {
        // 42 rows: ten blocks of four and two rows left row-major; groups of 32 in rows of 96
        check_blocked_layout(&mut 11, 42, 96, 32, &[0, 15, 16, 95], &[1, 3]);
        // one scale per row, and groups of a row no wider than a tile that do not divide TILE
        check_blocked_layout(&mut 12, 9, 1376, 1376, &[0, 15, 16, 1375], &[1, 3]);
        check_blocked_layout(&mut 12, 6, 1376, 688, &[0, 687, 688, 1375], &[1, 2]);
    }

    #[test]
    fn wide_rows_give_the_same_bits() {
        // rows wider than TILE, in column tiles: groups wider than a tile, and groups that
        // straddle tiles; the i32 sums go to f32 run by run, the same in both layouts
        let mut s = 13u64;
        for (n, k, group) in [(10usize, 4608usize, 4608usize), (8, 8192, 4096), (9, 4800, 2400)] {
            check_blocked_layout(&mut s, n, k, group, &[0, 15, 2047, 2048, 2063, 4095, 4096, k - 1], &[1, 2]);
        }
    }

    /// `fixed::rows` (ys as [row][token]) through every x86 kernel set this CPU runs, by name:
    /// `matmul` runs the best one only. (Other targets: none; their tests run their own set.)
    #[allow(clippy::too_many_arguments)]
    fn every_x86_set(input: &Q8Input, t: usize, k: usize, group: usize, bits: u32, w: &[i8], n: usize, scale: &[f32]) -> Vec<(&'static str, Vec<f32>)> {
        every_x86_set_in(Layout::Blocks4, input, t, k, group, bits, w, n, scale)
    }

    #[allow(clippy::too_many_arguments)]
    fn every_x86_set_in(layout: Layout, input: &Q8Input, t: usize, k: usize, group: usize, bits: u32, w: &[i8], n: usize, scale: &[f32]) -> Vec<(&'static str, Vec<f32>)> {
        #[cfg(target_arch = "x86_64")]
        return fixed::x86::KernelSet::levels().into_iter().map(|set| {
            let mut ys = vec![0f32; t * n];
            // SAFETY: levels() holds only the sets this CPU runs
            unsafe { set.rows(&input.x, t, k, group, layout, bits, w, n, 0, scale, &mut ys) };
            (set.name(), ys)
        }).collect();
        #[allow(unreachable_code)]
        {
            let _ = (layout, input, t, k, group, bits, w, n, scale);
            Vec::new()
        }
    }

    #[test]
    fn int4_blocks_give_the_int8_bits() {
        // int4 values in the int4 blocked layout: every value where q_value says, and the same
        // matmul bits as those values stored as int8, through the SIMD kernels and the scalar ones;
        // 4102 columns: a tile boundary, 1030 rows: blocks of four and two rows left over
        let mut s = 17u64;
        for (n, k, group) in [(1030usize, 64usize, 32usize), (6, 4160, 64), (9, 128, 128)] {
            let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut s) * 7.99) as i8).collect();
            let packed: Vec<i8> = q.chunks_exact(2).map(|p| (p[0] & 0x0f) | (p[1] << 4)).collect();
            let scale: Vec<f32> = (0..n * k / group).map(|_| lcg(&mut s).abs() * 0.01).collect();
            let q4 = block_rows_q4(&packed, n, k);
            assert_eq!(q4.len(), n / 4 * 4 * k / 2 + n % 4 * k);
            for r in [0, 1, 3, n / 2, n - 1] {
                for j in [0, 7, 8, 15, 16, 31, k / 2, k - 1] {
                    assert_eq!(q_value(&q4, r, j, n, k, 4, Layout::Blocks4), q[r * k + j], "r={} j={}", r, j);
                    assert_eq!(q_value(&packed, r, j, n, k, 4, Layout::Rows), q[r * k + j]);
                }
            }
            let q8 = blocked(&q, n, k);
            for t in [1usize, 3] {
                let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut s)).collect();
                let (xv, ov) = (View { off: 0, stride: k, len: k }, View { off: 0, stride: n, len: n });
                let mut want = vec![0f32; t * n];
                matmul(&x, xv, t, None, Mat::Q8 { n, k_pad: k, group, bits: 8, layout: Layout::Blocks4, q: &q8, scale: &scale }, &mut want, ov, &[]);
                let mut got = vec![0f32; t * n];
                matmul(&x, xv, t, None, Mat::Q8 { n, k_pad: k, group, bits: 4, layout: Layout::Blocks4, q: &q4, scale: &scale }, &mut got, ov, &[]);
                assert_eq!(want, got, "n={} k={} t={}", n, k, t);
                let input = Q8Input::new(&x, k, group, Layout::Blocks4);
                let mut scalar = vec![0f32; t * n];
                fixed::rows(&fixed::Scalar, &input.x, t, k, group, Layout::Blocks4, 4, &q4, n, 0, &scale, &mut scalar);
                for (name, ys) in every_x86_set(&input, t, k, group, 4, &q4, n, &scale) {
                    assert_eq!(scalar, ys, "{} n={} k={} t={}", name, n, k, t);
                }
                let by_row: Vec<f32> = (0..t * n).map(|at| scalar[(at % n) * t + at / n]).collect();
                assert_eq!(want, by_row, "scalar n={} k={} t={}", n, k, t);
            }
        }
    }

    #[test]
    fn lanes8_layout_gives_the_blocks4_bits() {
        // int4 in eight-row blocks (Layout::Lanes8) against the four-row blocks, bit for bit, in
        // decode and prefill: through the scalar definition (Kernels::lanes8), every x86 kernel
        // set, and `matmul` (threads split on eight-row blocks); groups of 32 to a whole tile, a tile
        // boundary, rows left over, T past a chunk; random values (groups whose largest value is
        // positive are negated for the x86 kernels' digits, `fixed::Planes`) and two extremes, the
        // largest sums, every weight +-7 with signs matching the activations': every activation at
        // +-2^23 of its group (`mixed`: both signs in every group, the kernels' `Terms::wide`) or
        // all at +2^23
        let mut s = 41u64;
        // (and the shapes AMX takes: 16-row groups, at least 8 tokens, 32-column steps for 32-wide
        // groups and 96-wide rows)
        let cases = [(21usize, 96usize, 32usize, 3usize), (1030, 256, 32, 3), (16, 4160, 64, 37), (13, 2048, 1024, 2), (8, 4096, 128, 5), (9, 64, 64, 1), (40, 96, 32, 20), (32, 4096, 128, 17)];
        assert!(!lanes8_fits(16, 2048, 2048));
        for (n, k, group, most) in cases {
            assert!(lanes8_fits(n, k, group));
            for (extreme, mixed) in [(false, false), (true, true), (true, false)] {
                let sign_x = |j: usize| if !mixed || (j / 3) % 2 == 0 { 1.0f32 } else { -1.0 };
                let sign = |r: usize, j: usize| if r % 2 == 0 { sign_x(j) } else { -sign_x(j) };
                let q: Vec<i8> = (0..n * k).map(|i| if extreme { sign(i / k, i % k) * 7.0 } else { lcg(&mut s) * 7.99 } as i8).collect();
                let packed: Vec<i8> = q.chunks_exact(2).map(|p| (p[0] & 0x0f) | (p[1] << 4)).collect();
                let groups = k / group;
                let scale: Vec<f32> = (0..n * groups).map(|_| lcg(&mut s).abs() * 0.01 + 1e-3).collect();
                let (q4, q8) = (block_rows_q4(&packed, n, k), block_rows_lanes8(&packed, n, k));
                let by_block = scales_by_block(&scale, n, groups, Layout::Lanes8);
                assert_eq!(q8.len(), n / 8 * 8 * k / 2 + n % 8 * k);
                for r in [0, 1, 7, 8, n / 2, n - 1].into_iter().filter(|r| *r < n) {
                    for j in [0, 1, 2, 3, 4, 5, 31, 32, 33, k / 2, k - 1] {
                        assert_eq!(q_value(&q8, r, j, n, k, 4, Layout::Lanes8), q[r * k + j], "n={} k={} r={} j={}", n, k, r, j);
                    }
                    for g in [0, groups - 1] {
                        assert_eq!(by_block[scale_index(r, g, n, groups, Layout::Lanes8)], scale[r * groups + g]);
                    }
                }
                let x: Vec<f32> = (0..most * k).map(|j| if extreme { sign_x(j % k) * 1.5 } else { lcg(&mut s) * if j % 13 == 0 { 40.0 } else { 1.0 } }).collect();
                let (xv, ov) = (View { off: 0, stride: k, len: k }, View { off: 0, stride: n, len: n });
                for t in [1, 2, most].into_iter().filter(|t| *t <= most) {
                    let what = format!("n={} k={} group={} t={} extreme={} mixed={}", n, k, group, t, extreme, mixed);
                    let mut want = vec![0f32; t * n];
                    matmul(&x[..t * k], xv, t, None, Mat::Q8 { n, k_pad: k, group, bits: 4, layout: Layout::Blocks4, q: &q4, scale: &scale }, &mut want, ov, &[]);
                    let mut got = vec![0f32; t * n];
                    matmul(&x[..t * k], xv, t, None, Mat::Q8 { n, k_pad: k, group, bits: 4, layout: Layout::Lanes8, q: &q8, scale: &by_block }, &mut got, ov, &[]);
                    assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "matmul {}", what);
                    let input = Q8Input::new(&x[..t * k], k, group, Layout::Lanes8);
                    let mut scalar = vec![0f32; t * n];
                    fixed::rows(&fixed::Scalar, &input.x, t, k, group, Layout::Lanes8, 4, &q8, n, 0, &by_block, &mut scalar);
                    let by_row: Vec<f32> = (0..t * n).map(|at| scalar[(at % n) * t + at / n]).collect();
                    assert!(want.iter().zip(&by_row).all(|(a, b)| a.to_bits() == b.to_bits()), "scalar {}", what);
                    for (name, ys) in every_x86_set_in(Layout::Lanes8, &input, t, k, group, 4, &q8, n, &by_block) {
                        assert!(ys.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits()), "{} {}", name, what);
                    }
                    if extreme && t == 1 {
                        for (r, y) in got.iter().enumerate() {
                            let want: f64 = scale[r * groups..(r + 1) * groups].iter().map(|v| *v as f64 * (group as f64 * 7.0 * 1.5)).sum();
                            assert!((*y as f64 * sign(r, 0) as f64 - want).abs() < 1e-5 * want, "r={} {} {} {}", r, y, want, what);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_fixed_point_split_rounds_halves_to_even_everywhere() {
        // x * s at an exact half (the group's max is 2^23, so s = 1): the SIMD body (8 values a
        // step) and the scalar tail must round it alike, to even, or a target without the SIMD
        // loops (aarch64 natively) gives other bits than x86 and wasm
        let x = [8388608.0f32, 2.5, -2.5, 3.5, -3.5, 0.5, -0.5, 1.5, 2.5, -2.5, 3.5, -3.5, 0.5, -0.5, 1.5];
        let f = fixed::split(&x, x.len());
        let v: Vec<i32> = f.hi.iter().zip(&f.lo).map(|(h, l)| *h as i32 * 4096 + *l as i32).collect();
        assert_eq!(&v[1..8], &[2, -2, 4, -4, 0, 0, 2]);
        assert_eq!(&v[8..], &v[1..8], "the tail rounds as the body");
        assert_eq!(v[0], 8388608);
    }

    #[test]
    fn whole_groups_match_the_scalar_path() {
        // decode's kernels for groups inside a tile (groups4) against the scalar one, bit for
        // bit: int8 and int4, groups of 16 to 128 in one or more tiles, one group per row of up to
        // a tile (one scale per row) or two, rows left over; random values, and the
        // extremes (every activation at +-2^23 of its group, every weight at +-7 or +-127 with
        // matching signs: the largest sums, a * 4096 + b up to 32 * 7 * 2^23 for int4-g32)
        let mut s = 29u64;
        for (n, k, group) in [(6usize, 16usize, 16usize), (9, 96, 32), (8, 2144, 32), (13, 320, 64), (4, 4352, 128), (8, 128, 128), (9, 512, 512), (6, 1376, 1376), (5, 1376, 688)] {
            for extreme in [false, true] {
                let x: Vec<f32> = (0..k).map(|j| if extreme { if (j / 3) % 2 == 0 { 1.5 } else { -1.5 } } else { lcg(&mut s) }).collect();
                let sign = |r: usize, j: usize| if ((j / 3) % 2 == 0) == (r % 2 == 0) { 1.0 } else { -1.0 };
                let scale: Vec<f32> = (0..n * k / group).map(|_| lcg(&mut s).abs() * 0.01 + 1e-3).collect();
                let (xv, ov) = (View { off: 0, stride: k, len: k }, View { off: 0, stride: n, len: n });
                for bits in [8u32, 4] {
                    let top = if bits == 4 { 7.0 } else { 127.0 };
                    let q: Vec<i8> = (0..n * k).map(|i| if extreme { sign(i / k, i % k) * top } else { lcg(&mut s) * (top + 0.99) } as i8).collect();
                    let w = if bits == 4 {
                        let packed: Vec<i8> = q.chunks_exact(2).map(|p| (p[0] & 0x0f) | (p[1] << 4)).collect();
                        block_rows_q4(&packed, n, k)
                    } else {
                        blocked(&q, n, k)
                    };
                    let mut fast = vec![0f32; n];
                    matmul(&x, xv, 1, None, Mat::Q8 { n, k_pad: k, group, bits, layout: Layout::Blocks4, q: &w, scale: &scale }, &mut fast, ov, &[]);
                    let input = Q8Input::new(&x, k, group, Layout::Blocks4);
                    let mut scalar = vec![0f32; n];
                    fixed::rows(&fixed::Scalar, &input.x, 1, k, group, Layout::Blocks4, bits, &w, n, 0, &scale, &mut scalar);
                    assert_eq!(fast, scalar, "n={} k={} group={} bits={} extreme={}", n, k, group, bits, extreme);
                    for (name, ys) in every_x86_set(&input, 1, k, group, bits, &w, n, &scale) {
                        assert_eq!(ys, scalar, "{} n={} k={} group={} bits={} extreme={}", name, n, k, group, bits, extreme);
                    }
                    if extreme {
                        // and the largest sums are right: every row is +-(group * top * 1.5 * sum of its scales)
                        for (r, y) in fast.iter().enumerate() {
                            let want: f64 = scale[r * k / group..(r + 1) * k / group].iter().map(|v| *v as f64 * (group as f64 * top as f64 * 1.5)).sum();
                            assert!((*y as f64 * sign(r, 0) as f64 - want).abs() < 1e-5 * want, "r={} {} {}", r, y, want);
                        }
                    }
                }
            }
        }
        assert!(!q4_holds_minus8(&[0x77, 0x19, -0x70]) && q4_holds_minus8(&[0x18]) && q4_holds_minus8(&[-0x80]));
    }

    #[test]
    fn prefill_gives_the_per_token_bits() {
        // T tokens at once (token chunks, two tokens per block pass, an odd one left) equal each
        // token alone through the scalar kernels, bit for bit: int8 and int4; groups of 16 to
        // wider than a tile and straddling tiles; leftover rows; T = 2..9 and past a chunk; and
        // the shapes AMX takes (16-row groups, 64-column steps; chunks of 32 tokens at 2048)
        let mut s = 23u64;
        let cases = [(14usize, 208usize, 16usize, 9usize), (9, 208, 208, 9), (20, 96, 32, 9), (12, 4160, 64, 37), (7, 4800, 2400, 5), (6, 4608, 4608, 3), (5, 48, 48, 400), (36, 4160, 64, 37), (20, 896, 896, 40), (24, 4608, 4608, 20), (16, 2048, 1024, 40)];
        for (n, k, group, most) in cases {
            let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut s) * 7.99) as i8).collect();
            let packed: Vec<i8> = q.chunks_exact(2).map(|p| (p[0] & 0x0f) | (p[1] << 4)).collect();
            let scale: Vec<f32> = (0..n * k / group).map(|_| lcg(&mut s).abs() * 0.01).collect();
            let (q8, q4) = (blocked(&q, n, k), block_rows_q4(&packed, n, k));
            let x: Vec<f32> = (0..most * k).map(|i| lcg(&mut s) * if i % 13 == 0 { 40.0 } else { 1.0 }).collect();
            let (xv, ov) = (View { off: 0, stride: k, len: k }, View { off: 0, stride: n, len: n });
            for (bits, w) in [(8u32, &q8), (4, &q4)] {
                // each token alone: decode's path, scalar kernels; ys as [row][token]
                let one: Vec<Vec<f32>> = (0..most).map(|i| {
                    let mut y = vec![0f32; n];
                    let input = Q8Input::new(&x[i * k..(i + 1) * k], k, group, Layout::Blocks4);
                    fixed::rows(&fixed::Scalar, &input.x, 1, k, group, Layout::Blocks4, bits, w, n, 0, &scale, &mut y);
                    y
                }).collect();
                let mat = Mat::Q8 { n, k_pad: k, group, bits, layout: Layout::Blocks4, q: w, scale: &scale };
                for t in (2..=9.min(most)).chain([most]) {
                    let mut all = vec![0f32; t * n];
                    matmul(&x[..t * k], xv, t, None, mat, &mut all, ov, &[]);
                    let input = Q8Input::new(&x[..t * k], k, group, Layout::Blocks4);
                    let mut scalar = vec![0f32; t * n];
                    fixed::rows(&fixed::Scalar, &input.x, t, k, group, Layout::Blocks4, bits, w, n, 0, &scale, &mut scalar);
                    for (name, ys) in every_x86_set(&input, t, k, group, bits, w, n, &scale) {
                        assert!(ys.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits()), "{} bits={} n={} k={} group={} t={}", name, bits, n, k, group, t);
                    }
                    for i in 0..t {
                        for r in 0..n {
                            let want = one[i][r].to_bits();
                            assert_eq!(all[i * n + r].to_bits(), want, "bits={} n={} k={} group={} t={} token {} row {}", bits, n, k, group, t, i, r);
                            assert_eq!(scalar[r * t + i].to_bits(), want, "scalar bits={} n={} k={} group={} t={} token {} row {}", bits, n, k, group, t, i, r);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn attention_gives_the_per_key_bits() {
        // attention's loops (SIMD128: four keys at a time, 32 columns in registers) against one
        // key at a time through dot_f32 and a plain weighted sum, bit for bit: head sizes with and
        // without a SIMD remainder, GQA, a window, key counts that are not multiples of four, and
        // prompts and a context long enough to go over the cores (natively)
        let mut s = 31u64;
        const SLOPES: [f32; 4] = [0.5, 0.25, 0.125, 0.0625];
        for (d, n_head, n_kv_head, window, pos, t, softcap, alibi) in [(64usize, 8usize, 4usize, 0usize, 37usize, 3usize, 0f32, false), (40, 4, 4, 0, 9, 3, 0.0, false), (96, 6, 2, 5, 20, 3, 0.0, false), (36, 2, 2, 0, 6, 3, 0.0, false), (8, 2, 1, 0, 0, 3, 0.0, false), (64, 8, 4, 0, 5, 71, 0.0, false), (32, 4, 2, 16, 0, 90, 0.0, false), (64, 8, 2, 0, 600, 1, 0.0, false), (64, 4, 2, 7, 30, 3, 2.5, true)] {
            let row = n_kv_head * d;
            let slopes: &'static [f32] = if alibi { &SLOPES[..n_head] } else { &[] };
            let a = AttnShape { n_head, n_kv_head, head_dim: d, scale: 1.0 / (d as f32).sqrt(), window, softcap, alibi: slopes, sinks: &[] };
            let mut cache = KvCache::new(pos + t, n_kv_head, d);
            cache.k.iter_mut().chain(cache.v.iter_mut()).for_each(|v| *v = lcg(&mut s) * 3.0);
            let q: Vec<f32> = (0..t * n_head * d).map(|_| lcg(&mut s) * 3.0).collect();
            let qv = View { off: 0, stride: n_head * d, len: n_head * d };
            let mut out = vec![0f32; t * n_head * d];
            attention(&q, qv, None, None, t, pos, &mut cache, a, &mut out, qv);
            let mut want = vec![0f32; t * n_head * d];
            for i in 0..t {
                let p = pos + i;
                let lo = if window > 0 && p + 1 > window { p + 1 - window } else { 0 };
                for h in 0..n_head {
                    let (qh, kh) = (&q[i * n_head * d + h * d..][..d], h / (n_head / n_kv_head));
                    let sc: Vec<f32> = (lo..=p).map(|j| dot_f32(qh, &cache.k[j * row + kh * d..][..d]) * a.scale).collect();
                    let sc: Vec<f32> = if softcap > 0.0 { sc.iter().map(|&v| super::softcap(v, softcap)).collect() } else { sc };
                    let sc: Vec<f32> = (lo..=p).zip(sc).map(|(j, v)| if alibi { v + slopes[h] * (j as f32 - p as f32) } else { v }).collect();
                    let max = sc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
                    let e: Vec<f32> = sc.iter().map(|v| crate::math::expf(v - max)).collect();
                    let sum = e.iter().fold(0f32, |acc, v| acc + v);
                    let y = &mut want[i * n_head * d + h * d..][..d];
                    for (j, ej) in (lo..=p).zip(&e) {
                        let pj = ej / sum;
                        for (c, yc) in y.iter_mut().enumerate() {
                            *yc += pj * cache.v[j * row + kh * d + c];
                        }
                    }
                }
            }
            assert_eq!(out, want, "d={} heads={}/{} window={} pos={} t={} softcap={} alibi={}", d, n_head, n_kv_head, window, pos, t, softcap, alibi);
        }
    }

    #[test]
    fn attention_single_key_returns_value() {
        let a = AttnShape { n_head: 2, n_kv_head: 1, head_dim: 4, scale: 0.5, window: 0, softcap: 0.0, alibi: &[], sinks: &[] };
        let mut cache = KvCache::new(8, 1, 4);
        let q = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let k = [0.3, 0.1, 0.2, 0.0];
        let v = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0f32; 8];
        let (v8, v4) = (View { off: 0, stride: 8, len: 8 }, View { off: 0, stride: 4, len: 4 });
        attention(&q, v8, Some((&k, v4)), Some((&v, v4)), 1, 0, &mut cache, a, &mut out, v8);
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
        // k already written into the cache row (by rope, say): the same result without the copy
        let mut again = KvCache::new(8, 1, 4);
        again.k[..4].copy_from_slice(&k);
        let mut out2 = [0f32; 8];
        attention(&q, v8, None, Some((&v, v4)), 1, 0, &mut again, a, &mut out2, v8);
        assert_eq!(out2, out);
    }

    #[test]
    fn in_place_residual_add_equals_a_separate_one() {
        // y = r + relu(x @ W.T) with y written over r itself (Step::Own), for T = 1 and 5 tokens, equals
        // the same epilogue reading r from another buffer; and the output tail's shifted read (the
        // residual's rows t0 later than the output's, in the same buffer) gives those rows; each
        // token's row equals that token alone (T = 37: rows gathered 16 tokens at a time, and a rest)
        let mut s = 11u64;
        let (n, k) = (24usize, 64usize);
        let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut s) * 127.0) as i8).collect();
        let scale: Vec<f32> = (0..n).map(|_| lcg(&mut s).abs() * 0.01).collect();
        let mat = Mat::Q8 { n, k_pad: k, group: k, bits: 8, layout: Layout::Rows, q: &q, scale: &scale };
        let (xv, ov) = (View { off: 0, stride: k, len: k }, View { off: 0, stride: n, len: n });
        for t in [1usize, 5, 37] {
            let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut s)).collect();
            let r: Vec<f32> = (0..t * n).map(|_| lcg(&mut s)).collect();
            let op = Operand { data: &r, view: ov, repeat: 1 };
            let mut want = vec![0f32; t * n];
            matmul(&x, xv, t, None, mat, &mut want, ov, &[Step::Unary(Unary::Relu), Step::Tensor(Binary::Add, op, false)]);
            let mut own = r.clone();
            matmul(&x, xv, t, None, mat, &mut own, ov, &[Step::Unary(Unary::Relu), Step::Own(Binary::Add, ov, false)]);
            assert_eq!(own, want);
            for i in 0..t {
                let alone = Operand { data: &r[i * n..(i + 1) * n], view: ov, repeat: 1 };
                let mut one = vec![0f32; n];
                matmul(&x[i * k..(i + 1) * k], xv, 1, None, mat, &mut one, ov, &[Step::Unary(Unary::Relu), Step::Tensor(Binary::Add, alone, false)]);
                assert_eq!(one, &want[i * n..(i + 1) * n], "t={} token {}", t, i);
            }
            let t0 = t - 1;
            let mut tail = r.clone();
            let shifted = View { off: t0 * n, stride: n, len: n };
            matmul(&x[t0 * k..], xv, 1, None, mat, &mut tail, ov, &[Step::Unary(Unary::Relu), Step::Own(Binary::Add, shifted, false)]);
            assert_eq!(&tail[..n], &want[t0 * n..]);
        }
    }

    #[test]
    fn matmul_scratch_holds_no_stale_values() {
        // a large matmul leaves its reused vectors full of values; a smaller one after it, with
        // padded input rows (50 values of 64, weights in the padding too) and blocked weights,
        // gives the bits it gives with empty scratch, by one token and by a prompt
        let mut s = 13u64;
        let (n, k) = (602usize, 512usize);
        let q: Vec<i8> = (0..n * k).map(|_| (lcg(&mut s) * 127.0) as i8).collect();
        let scale: Vec<f32> = (0..n).map(|_| lcg(&mut s).abs() * 0.01).collect();
        let x: Vec<f32> = (0..8 * k).map(|_| lcg(&mut s)).collect();
        let (n2, k2, len) = (40usize, 64usize, 50usize);
        let q2 = blocked(&(0..n2 * k2).map(|_| (lcg(&mut s) * 127.0) as i8).collect::<Vec<i8>>(), n2, k2);
        let scale2: Vec<f32> = (0..n2).map(|_| lcg(&mut s).abs() * 0.01).collect();
        let x2: Vec<f32> = (0..5 * len).map(|_| lcg(&mut s)).collect();
        let small = |t: usize| {
            let mut out = vec![0f32; t * n2];
            let mat = Mat::Q8 { n: n2, k_pad: k2, group: k2, bits: 8, layout: Layout::Blocks4, q: &q2, scale: &scale2 };
            matmul(&x2[..t * len], View { off: 0, stride: len, len }, t, None, mat, &mut out, View { off: 0, stride: n2, len: n2 }, &[]);
            out
        };
        SCRATCH.with(|cell| *cell.borrow_mut() = Default::default()); // (wasm32 has no threads to start afresh)
        let fresh = [small(1), small(5)];
        let mut out = vec![0f32; 8 * n];
        matmul(&x, View { off: 0, stride: k, len: k }, 8, None, Mat::Q8 { n, k_pad: k, group: k, bits: 8, layout: Layout::Rows, q: &q, scale: &scale }, &mut out, View { off: 0, stride: n, len: n }, &[]);
        assert_eq!([small(1), small(5)], fresh);
    }

    #[test]
    fn row_kernels_over_the_cores_match_one_row_at_a_time() {
        // a prompt's worth of rows (over the cores where there are two) against each row alone:
        // elementwise with a norm, a gate and an operand, and rope into rows at an offset (a
        // KV cache's rows from position 3)
        let mut s = 17u64;
        let (t, w, hd) = (64usize, 512usize, 64usize);
        let x: Vec<f32> = (0..t * w).map(|_| lcg(&mut s)).collect();
        let g: Vec<f32> = (0..t * w).map(|_| lcg(&mut s)).collect();
        let wt: Vec<f32> = (0..w).map(|_| lcg(&mut s)).collect();
        let v = View { off: 0, stride: w, len: w };
        let op = Operand { data: &g, view: v, repeat: 1 };
        let steps = [Step::RmsNorm { eps: 1e-5, width: w, weight: Some(&wt) }, Step::Unary(Unary::Silu), Step::Tensor(Binary::Mul, op, false)];
        let mut all = vec![0f32; t * w];
        elementwise(&x, v, t, &mut all, v, &steps);
        for i in 0..t {
            let mut one = vec![0f32; w];
            elementwise(&x[i * w..(i + 1) * w], v, 1, &mut one, v, &[steps[0], steps[1], Step::Tensor(Binary::Mul, Operand { data: &g[i * w..], view: v, repeat: 1 }, false)]);
            assert_eq!(one, &all[i * w..(i + 1) * w], "elementwise token {}", i);
        }
        let cos: Vec<f32> = (0..t * hd / 2).map(|_| lcg(&mut s)).collect();
        let sin: Vec<f32> = (0..t * hd / 2).map(|_| lcg(&mut s)).collect();
        let cv = View { off: 0, stride: hd / 2, len: hd / 2 };
        let mut cache = vec![0f32; (t + 3) * w];
        rope(&x, v, t, hd, &cos, cv, &sin, cv, &mut cache, View { off: 3 * w, stride: w, len: w }, &[]);
        assert!(cache[..3 * w].iter().all(|c| *c == 0.0));
        for i in 0..t {
            let mut one = vec![0f32; w];
            let c = View { off: i * hd / 2, stride: 0, len: hd / 2 };
            rope(&x[i * w..(i + 1) * w], v, 1, hd, &cos, c, &sin, c, &mut one, v, &[]);
            assert_eq!(one, &cache[(i + 3) * w..(i + 4) * w], "rope token {}", i);
        }
    }

    #[test]
    fn in_place_elementwise_equals_a_copy() {
        let mut s = 5u64;
        let (t, w) = (4usize, 6usize);
        let x: Vec<f32> = (0..t * w).map(|_| lcg(&mut s)).collect();
        let v = View { off: 0, stride: w, len: w };
        let steps = [Step::Scalar(Binary::Mul, 3.0, false), Step::RmsNorm { eps: 1e-5, width: 3, weight: None }];
        let mut want = vec![0f32; t * w];
        elementwise(&x, v, t, &mut want, v, &steps);
        let mut own = x.clone();
        elementwise_in_place(v, t, &mut own, v, &steps);
        assert_eq!(own, want);
        let mut tail = x.clone();  // the output tail: rows from t0 = 2 into rows from 0
        elementwise_in_place(View { off: 2 * w, ..v }, 2, &mut tail, v, &steps);
        assert_eq!(&tail[..2 * w], &want[2 * w..]);
    }
}

/// Decode's matrix-vector kernels alone, one thread, by CPU time (the machine may be shared):
/// `cargo test --release --lib decode_bench -- --ignored --nocapture`.
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod decode_bench {
    use super::*;

    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }

    /// This thread's CPU seconds (CLOCK_THREAD_CPUTIME_ID).
    fn cpu_seconds() -> f64 {
        let mut t = Timespec { sec: 0, nsec: 0 };
        unsafe { clock_gettime(3, &mut t) };
        t.sec as f64 + t.nsec as f64 * 1e-9
    }

    /// Seconds a call of `rows` takes through kernel set `set` (best of 5 by CPU time, each
    /// timing `reps` calls), with the input split once per call as the runtime does.
    #[allow(clippy::too_many_arguments)]
    fn time_rows(set: fixed::x86::KernelSet, x: &[f32], t: usize, k: usize, group: usize, (layout, bits, w): (Layout, u32, &[i8]), n: usize, scale: &[f32], reps: usize) -> f64 {
        let mut ys = vec![0f32; t * n];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = cpu_seconds();
            for _ in 0..reps {
                let input = Q8Input::new(x, k, group, layout);
                unsafe { set.rows(&input.x, t, k, group, layout, bits, w, n, 0, scale, &mut ys) };
            }
            best = best.min((cpu_seconds() - t0) / reps as f64);
        }
        best
    }

    /// Random n x k values in [-7, 7] in each loaded form: int8 in four-row blocks, int4 in
    /// four-row blocks, int4 in eight-row blocks (the scales' order does not change a timing).
    fn every_form(s: &mut u64, n: usize, k: usize) -> [(Layout, u32, Vec<i8>); 3] {
        let q: Vec<i8> = (0..n * k).map(|_| (tests::lcg(s) * 7.99) as i8).collect();
        let packed: Vec<i8> = q.chunks_exact(2).map(|p| (p[0] & 0x0f) | (p[1] << 4)).collect();
        [(Layout::Blocks4, 8, tests::blocked(&q, n, k)), (Layout::Blocks4, 4, block_rows_q4(&packed, n, k)), (Layout::Lanes8, 4, block_rows_lanes8(&packed, n, k))]
    }

    /// The form of `every_form` for (layout, bits).
    fn form(forms: &[(Layout, u32, Vec<i8>); 3], layout: Layout, bits: u32) -> (Layout, u32, &[i8]) {
        let (l, b, w) = forms.iter().find(|(l, b, _)| *l == layout && *b == bits).unwrap();
        (*l, *b, w)
    }

    #[test]
    #[ignore]
    fn decode_matvec_speed() {
        let mut s = 5u64;
        // a matrix that fits L2, one streamed from memory, and Qwen2.5-0.5B's tied output table;
        // each case through every kernel set this CPU runs, interleaved
        for (n, k) in [(256usize, 896usize), (16384, 4096), (151936, 896)] {
            let x: Vec<f32> = (0..k).map(|_| tests::lcg(&mut s)).collect();
            let forms = every_form(&mut s, n, k);
            let mut int8 = 0.0;
            let cases = [(Layout::Blocks4, 8u32, k), (Layout::Blocks4, 8, 32), (Layout::Blocks4, 4, 32), (Layout::Lanes8, 4, 32), (Layout::Blocks4, 4, 64), (Layout::Lanes8, 4, 64), (Layout::Blocks4, 4, 128), (Layout::Lanes8, 4, 128)];
            for (layout, bits, group) in cases {
                let scale: Vec<f32> = (0..n * k / group).map(|_| tests::lcg(&mut s).abs() * 0.01).collect();
                for set in fixed::x86::KernelSet::levels() {
                    let best = time_rows(set, &x, 1, k, group, form(&forms, layout, bits), n, &scale, (200_000_000 / (n * k)).max(3));
                    if group == k {
                        int8 = best;
                    }
                    let bytes = (n * k * bits as usize / 8 + n * k / group * 4) as f64;
                    println!("{:5} x {:4} int{} group {:4} {:7} {:11}: {:8.1} us  {:5.2} G weights/s  {:5.2} GB/s  {:4.2}x int8 per row",
                        n, k, bits, group, format!("{:?}", layout), set.name(), best * 1e6, (n * k) as f64 / best / 1e9, bytes / best / 1e9, int8 / best);
                }
            }
        }
    }

    /// Prefill's whole `matmul` (input split, every worker thread, the gather into token rows)
    /// against `rows` on one thread, 128 tokens, wall time:
    /// `cargo test --release --lib prefill_threads_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn prefill_threads_speed() {
        let mut s = 5u64;
        let t = 128;
        for (n, k) in [(4864usize, 896usize), (896, 4864), (1152, 896)] {
            let x: Vec<f32> = (0..t * k).map(|_| tests::lcg(&mut s)).collect();
            let forms = every_form(&mut s, n, k);
            let scale: Vec<f32> = (0..n).map(|_| tests::lcg(&mut s).abs() * 0.01).collect();
            let (xv, ov) = (View { off: 0, stride: k, len: k }, View { off: 0, stride: n, len: n });
            let mut out = vec![0f32; t * n];
            let int8 = form(&forms, Layout::Blocks4, 8);
            let mat = Mat::Q8 { n, k_pad: k, group: k, bits: 8, layout: Layout::Blocks4, q: int8.2, scale: &scale };
            let set = fixed::x86::KernelSet::detect().unwrap();
            let one = time_rows(set, &x, t, k, k, int8, n, &scale, 3);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t0 = std::time::Instant::now();
                for _ in 0..3 {
                    matmul(&x, xv, t, None, mat, &mut out, ov, &[]);
                }
                best = best.min(t0.elapsed().as_secs_f64() / 3.0);
            }
            println!("T={} {}x{}: rows 1 thread {:.1} us, matmul {} workers {:.1} us wall: {:.2}x", t, n, k, one * 1e6, workers(), best * 1e6, one / best);
        }
    }

    /// Prefill's matrix-matrix path (64 tokens) on Qwen2.5-0.5B's MLP shapes, every kernel set:
    /// `cargo test --release --lib prefill_matmul_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn prefill_matmul_speed() {
        let mut s = 5u64;
        let t = 64;
        for (n, k) in [(4864usize, 896usize), (896, 4864)] {
            let x: Vec<f32> = (0..t * k).map(|_| tests::lcg(&mut s)).collect();
            let forms = every_form(&mut s, n, k);
            for (layout, bits, group) in [(Layout::Blocks4, 8u32, k), (Layout::Blocks4, 4, 32), (Layout::Lanes8, 4, 32), (Layout::Blocks4, 4, 128), (Layout::Lanes8, 4, 128)] {
                let scale: Vec<f32> = (0..n * k / group).map(|_| tests::lcg(&mut s).abs() * 0.01).collect();
                for set in fixed::x86::KernelSet::levels() {
                    let best = time_rows(set, &x, t, k, group, form(&forms, layout, bits), n, &scale, 3);
                    println!("T={} {:5} x {:4} int{} group {:4} {:7} {:11}: {:8.1} us  {:5.2} G MAC/s", t, n, k, bits, group, format!("{:?}", layout), set.name(), best * 1e6, (n * k * t) as f64 / best / 1e9);
                }
            }
        }
    }
}
