//! Prefill's int8 matrix products on Intel AMX, with the fixed-point contract's bits.
//!
//! One `tdpbssd` / `tdpbusd` multiplies a 16 x 64 byte tile by a 64 x 16 one into 16 x 16 i32
//! sums: 16,384 byte products, where one 256-bit `vpdpwssd` makes 16 word products. The contract
//! (`kernels::fixed`) needs each (row, token)'s exact i32 sums a = sum hi * q and b = sum lo * q
//! over every piece of a row; hi and lo (12 bits and a sign each) are two bytes apiece,
//! hi = hh * 256 + hl with hl in 0..=255 and hh in -8..=8, so
//!
//!   a = 256 * sum hh * q + sum hl * q,   b = 256 * sum lh * q + sum ll * q
//!
//! four tile products, each sum exact (a piece's sums stay below 2^29, `fixed::TILE`). From those
//! sums on, the f32 arithmetic is `fixed::prefill`'s, op for op, in the same order: the same bits
//! as every other kernel set (the kernel tests compare each set with the scalar one).
//!
//! Tiles: C0..C3 the four sums of 16 tokens x 16 rows, tmm4 the weights (16 rows x K columns in
//! the four-byte form AMX takes, rebuilt per token chunk from int8 `Layout::Blocks4` or int4
//! `Layout::Lanes8`), tmm5 and tmm6 the activation byte planes of 16 tokens x K columns; K = 64,
//! or 32 where the quantization groups are 32 wide (each group's sums are its own).
use crate::kernels::fixed::{pieces, Fixed, TILE};
use crate::kernels::Layout;
use core::arch::asm;
use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

/// Tokens below which prefill keeps the VNNI kernels (a tile holds 16; fewer are zero-padded).
pub const MIN_TOKENS: usize = 8;

/// Whether `prefill` takes a matmul of this shape: int8 in four-row blocks or int4 in eight-row
/// ones, rows and quantization groups in whole 32-column steps, and enough tokens.
pub fn takes(t: usize, width: usize, group: usize, layout: Layout, bits: u32) -> bool {
    let form = matches!((layout, bits), (Layout::Blocks4, 8) | (Layout::Lanes8, 4));
    form && t >= MIN_TOKENS && width % 32 == 0 && group % 32 == 0
}

/// The columns one tile product takes (the tiles' depth): 64, or 32 where a group or a row is an
/// odd number of 32s.
fn depth(width: usize, group: usize) -> usize {
    if width % 64 == 0 && group % 64 == 0 { 64 } else { 32 }
}

/// Whether this CPU and OS run AMX-INT8 with the AVX-512 the rest of `prefill` uses; asked once.
/// Linux gives a process the tile registers' state only when it asks (arch_prctl).
pub fn available() -> bool {
    static STATE: AtomicU8 = AtomicU8::new(0); // 0 not asked, 1 yes, 2 no
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let yes = ask();
            STATE.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
            yes
        }
    }
}

fn ask() -> bool {
    let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni");
    // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8 (an unsafe fn before Rust 1.94)
    #[allow(unused_unsafe)]
    let edx = unsafe { __cpuid_count(7, 0) }.edx;
    avx512 && edx & (3 << 24) == 3 << 24 && os_grants_tiles()
}

#[cfg(target_os = "linux")]
fn os_grants_tiles() -> bool {
    extern "C" {
        fn syscall(number: core::ffi::c_long, ...) -> core::ffi::c_long;
    }
    const SYS_ARCH_PRCTL: core::ffi::c_long = 158;
    const ARCH_REQ_XCOMP_PERM: core::ffi::c_long = 0x1023;
    const XFEATURE_XTILEDATA: core::ffi::c_long = 18;
    // SAFETY: arch_prctl with an integer request: no memory is passed
    unsafe { syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn os_grants_tiles() -> bool {
    false
}

/// The tile configuration (palette 1) for products `depth` columns deep: C0..C3 16 x 16 i32, the
/// weights depth / 4 rows of 16 four-byte columns, the activations 16 rows of `depth` bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

fn config(depth: usize) -> TileConfig {
    let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    for (t, (colsb, rows)) in [(64, 16), (64, 16), (64, 16), (64, 16), (64, depth / 4), (depth, 16), (depth, 16)].into_iter().enumerate() {
        c.colsb[t] = colsb as u16;
        c.rows[t] = rows as u8;
    }
    c
}

// The tile instructions, by tile number (the tmm registers are not operands the compiler knows,
// so each is named in the template; asm blocks keep their order).
macro_rules! tile_load {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s} * 1]"), p = in(reg) $p, s = in(reg) $stride, options(nostack, readonly))
    };
}
macro_rules! tile_store {
    ($t:literal, $p:expr) => {
        asm!(concat!("tilestored [{p} + {s} * 1], tmm", $t), p = in(reg) $p, s = in(reg) 64usize, options(nostack))
    };
}

/// The bytes of hi and lo (i16) as the four planes the tiles multiply, for `m` tokens of `width`
/// columns: planes[p][token][column] with p = hh, hl, lh, ll (rows of `mp` tokens per plane; the
/// tokens past m stay zero).
#[inline(always)]
unsafe fn build_planes(hi: &[i16], lo: &[i16], m: usize, mp: usize, width: usize, planes: &mut [u8]) {
    let plane = mp * width;
    for i in 0..m {
        for c in (0..width).step_by(32) {
            let at = i * width + c;
            for (src, p) in [(hi, 0), (lo, 2)] {
                let v = _mm512_loadu_si512(src.as_ptr().add(at) as *const _);
                let out = planes.as_mut_ptr().add(p * plane + at);
                _mm256_storeu_si256(out as *mut __m256i, _mm512_cvtepi16_epi8(_mm512_srai_epi16::<8>(v)));
                _mm256_storeu_si256(out.add(plane) as *mut __m256i, _mm512_cvtepi16_epi8(v));
            }
        }
    }
}

/// The weights of 16 rows over `w` columns in AMX's four-byte form: row k of `out` (64 bytes)
/// holds columns 4k..4k + 4 of rows 0..16 in turn, so the tile of columns c.. starts at 16 * c.
/// From int8 `Layout::Blocks4` (four blocks, their tiles at `blocks`): a block's 8-column unit is
/// row 0's 8 bytes, then rows 1, 2, 3's, so each output row is a dword shuffle of the same unit
/// of two block pairs.
#[inline(always)]
unsafe fn weights_blocks4(blocks: [*const i8; 4], w: usize, out: &mut [i8]) {
    let index = |h: i32| _mm512_setr_epi32(h, 2 + h, 4 + h, 6 + h, 8 + h, 10 + h, 12 + h, 14 + h, 16 + h, 18 + h, 20 + h, 22 + h, 24 + h, 26 + h, 28 + h, 30 + h);
    let (even, odd) = (index(0), index(1));
    let unit = |b: usize, u: usize| _mm256_loadu_si256(blocks[b].add(32 * u) as *const __m256i);
    for u in 0..w / 8 {
        let z0 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(unit(0, u)), unit(1, u));
        let z1 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(unit(2, u)), unit(3, u));
        let p = out.as_mut_ptr().add(128 * u);
        _mm512_storeu_si512(p as *mut _, _mm512_permutex2var_epi32(z0, even, z1));
        _mm512_storeu_si512(p.add(64) as *mut _, _mm512_permutex2var_epi32(z0, odd, z1));
    }
}

/// A value on its own cache lines (tile rows load a line each).
#[repr(C, align(64))]
struct Lines<T>(T);

/// `n` zero bytes on whole cache lines (n a multiple of 64).
fn lines(n: usize) -> Vec<Lines<[u8; 64]>> {
    (0..n / 64).map(|_| Lines([0u8; 64])).collect()
}

/// The bytes of `lines`, as u8 or i8.
fn bytes_of<T>(lines: &mut [Lines<[u8; 64]>]) -> &mut [T] {
    assert!(core::mem::size_of::<T>() == 1);
    // SAFETY: T is a one-byte integer type, and the lines are 64 contiguous bytes each
    unsafe { core::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut T, 64 * lines.len()) }
}

/// `weights_blocks4` from int4 `Layout::Lanes8` (two blocks, their tiles at `blocks`): a block's
/// 8-column unit is 32 bytes, row r's columns 4h..4h + 4 in dword 2 * pair(r) + h (pair(r) = (r &
/// 1) + 2 * (r >> 2)), rows 2, 3, 6, 7 in the high nibbles, stored plus 8 (`lanes8_place`).
#[inline(always)]
unsafe fn weights_lanes8(blocks: [*const i8; 2], w: usize, out: &mut [i8]) {
    let index = |h: i32| {
        let mut idx = [0i32; 16];
        for (n, v) in idx.iter_mut().enumerate() {
            let r = (n % 8) as i32;
            *v = 16 * ((r >> 1) & 1) + 8 * (n as i32 / 8) + 2 * ((r & 1) + 2 * (r >> 2)) + h;
        }
        _mm512_loadu_si512(idx.as_ptr() as *const _)
    };
    let (even, odd) = (index(0), index(1));
    let (nibble, eight) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(8));
    for u in 0..w / 8 {
        let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_loadu_si256(blocks[0].add(32 * u) as *const __m256i)), _mm256_loadu_si256(blocks[1].add(32 * u) as *const __m256i));
        let low = _mm512_sub_epi8(_mm512_and_si512(z, nibble), eight);
        let high = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16::<4>(z), nibble), eight);
        let p = out.as_mut_ptr().add(128 * u);
        _mm512_storeu_si512(p as *mut _, _mm512_permutex2var_epi32(low, even, high));
        _mm512_storeu_si512(p.add(64) as *mut _, _mm512_permutex2var_epi32(low, odd, high));
    }
}

/// Prefill tokens per chunk: the four planes of a chunk (4 bytes a column and token) stay in L2
/// while each 16-row group of weights passes; whole tiles of 16 tokens, 16 to 128.
fn chunk_tokens(width: usize) -> usize {
    ((256 << 10) / (4 * width) / 16 * 16).clamp(16, 128)
}

/// `fixed::rows`' result for the rows `rows` (a multiple of 16 of them, in whole blocks) of an
/// int8 `Layout::Blocks4` or int4 `Layout::Lanes8` matrix (`q`: its blocked part, nb rows),
/// `takes` holding: ys[(r - rows.start) * t + i] = token i's row of x times row r.
///
/// # Safety
/// `available()` must hold.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn prefill(x: &Fixed, t: usize, width: usize, group: usize, layout: Layout, q: &[i8], nb: usize, rows: core::ops::Range<usize>, scale: &[f32], ys: &mut [f32]) {
    debug_assert!(rows.len() % 16 == 0 && rows.end <= nb && width % 32 == 0 && group % 32 == 0);
    let (groups, depth, lanes8) = (width / group, depth(width, group), layout == Layout::Lanes8);
    let chunk = chunk_tokens(width);
    // tile rows on cache lines: a row that straddles two took twice the loads (1.6x the time)
    let (mut planes_lines, mut weights_lines) = (lines(4 * chunk * width), lines(16 * TILE.min(width)));
    let planes: &mut [u8] = bytes_of(&mut planes_lines);
    let weights: &mut [i8] = bytes_of(&mut weights_lines);
    let mut sums = Lines([[0i32; 256]; 4]);
    let sums = &mut sums.0;
    let (mut y, mut la, mut lb) = (vec![_mm512_setzero_ps(); chunk], vec![_mm512_setzero_ps(); chunk], vec![_mm512_setzero_ps(); chunk]);
    let mut row_scales = vec![_mm512_setzero_ps(); groups];
    let config = config(depth);
    asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack, readonly));
    for t0 in (0..t).step_by(chunk) {
        let m = chunk.min(t - t0);
        let mp = (m + 15) / 16 * 16;
        if mp > m {
            planes.iter_mut().for_each(|b| *b = 0);
        }
        build_planes(&x.hi[t0 * width..(t0 + m) * width], &x.lo[t0 * width..(t0 + m) * width], m, mp, width, planes);
        let plane = mp * width;
        for r in rows.clone().step_by(16) {
            for (g, s) in row_scales.iter_mut().enumerate() {
                let mut column = [0f32; 16];
                for (j, c) in column.iter_mut().enumerate() {
                    // row-major, or by eight-row block (`scales_by_block`)
                    *c = if lanes8 { scale[8 * groups * ((r + j) / 8) + 8 * g + j % 8] } else { scale[(r + j) * groups + g] };
                }
                *s = _mm512_loadu_ps(column.as_ptr());
            }
            for v in [&mut y, &mut la, &mut lb] {
                v[..mp].iter_mut().for_each(|v| *v = _mm512_setzero_ps());
            }
            for c0 in (0..width).step_by(TILE) {
                let c1 = (c0 + TILE).min(width);
                let w = c1 - c0;
                if lanes8 {
                    let tile = |b: usize| q.as_ptr().add((c0 * nb + (r + 8 * b) * w) / 2);
                    weights_lanes8([tile(0), tile(1)], w, weights);
                } else {
                    let tile = |b: usize| q.as_ptr().add(c0 * nb + (r + 4 * b) * w);
                    weights_blocks4([tile(0), tile(1), tile(2), tile(3)], w, weights);
                }
                for tt in 0..mp / 16 {
                    for (s, e) in pieces(c0, c1, group) {
                        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                        for k in (s..e).step_by(depth) {
                            let a = planes.as_ptr().add(16 * tt * width + k);
                            tile_load!("4", weights.as_ptr().add(16 * (k - c0)), 64usize);
                            tile_load!("5", a, width);
                            tile_load!("6", a.add(plane), width);
                            asm!("tdpbssd tmm0, tmm5, tmm4", "tdpbusd tmm1, tmm6, tmm4", options(nostack, nomem));
                            tile_load!("5", a.add(2 * plane), width);
                            tile_load!("6", a.add(3 * plane), width);
                            asm!("tdpbssd tmm2, tmm5, tmm4", "tdpbusd tmm3, tmm6, tmm4", options(nostack, nomem));
                        }
                        tile_store!("0", sums[0].as_mut_ptr());
                        tile_store!("1", sums[1].as_mut_ptr());
                        tile_store!("2", sums[2].as_mut_ptr());
                        tile_store!("3", sums[3].as_mut_ptr());
                        let (g, ends) = (s / group, e % group == 0);
                        // a whole group's sums need no running f32 sums (0 + x is x: an integer's
                        // f32 is never -0)
                        let whole = ends && s % group == 0;
                        for j in 0..16.min(m - 16 * tt) {
                            let i = 16 * tt + j;
                            let sum = |p: usize| _mm512_loadu_si512(sums[p].as_ptr().add(16 * j) as *const _);
                            let a = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32::<8>(sum(0)), sum(1)));
                            let b = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32::<8>(sum(2)), sum(3)));
                            let (a, b) = if whole { (a, b) } else { (_mm512_add_ps(la[i], a), _mm512_add_ps(lb[i], b)) };
                            if ends {
                                // (a * 4096 + b) * unit * scale, as `fixed::prefill` rounds it
                                let unit = _mm512_set1_ps(x.unit[(t0 + i) * groups + g]);
                                let v = _mm512_mul_ps(_mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(a, _mm512_set1_ps(4096.0)), b), unit), row_scales[g]);
                                y[i] = _mm512_add_ps(y[i], v);
                                la[i] = _mm512_setzero_ps();
                                lb[i] = _mm512_setzero_ps();
                            } else {
                                la[i] = a;
                                lb[i] = b;
                            }
                        }
                    }
                }
            }
            let mut out = [0f32; 16];
            for (i, v) in y[..m].iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr(), *v);
                for (j, o) in out.iter().enumerate() {
                    ys[(r + j - rows.start) * t + t0 + i] = *o;
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}
