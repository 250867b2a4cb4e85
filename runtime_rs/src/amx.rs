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
//! Tiles: C0..C3 the four sums of 16 tokens x 16 rows, tmm4 the weights (16 rows x 64 columns in
//! the four-byte form AMX takes, rebuilt from `Layout::Blocks4` per token chunk), tmm5 and tmm6
//! the activation byte planes of 16 tokens x 64 columns.
use crate::kernels::fixed::{pieces, Fixed, TILE};
use core::arch::asm;
use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

/// Tokens below which prefill keeps the VNNI kernels (a tile holds 16; fewer are zero-padded).
pub const MIN_TOKENS: usize = 8;

/// Whether `prefill` takes a matmul of this shape: int8 in four-row blocks, rows and quantization
/// groups in whole 64-column steps (the tiles' depth), and enough tokens.
pub fn takes(t: usize, width: usize, group: usize, blocks4: bool, bits: u32) -> bool {
    blocks4 && bits == 8 && t >= MIN_TOKENS && width % 64 == 0 && group % 64 == 0
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

/// The tile configuration (palette 1): all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0], rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0] };

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

/// The weights of 16 rows (four `Layout::Blocks4` blocks, their tiles at `blocks`) over `w`
/// columns in AMX's four-byte form: row 4k + h of `out` (64 bytes) holds columns 4k..4k + 4 of
/// rows 0..16 in turn, so the tile at 1024 * j holds columns 64j..64j + 64. A block's 8-column
/// unit is row 0's 8 bytes, then rows 1, 2, 3's: each output row is a dword shuffle of the same
/// unit of two block pairs.
#[inline(always)]
unsafe fn build_weights(blocks: [*const i8; 4], w: usize, out: &mut [i8]) {
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

/// Prefill tokens per chunk: the four planes of a chunk (4 bytes a column and token) stay in L2
/// while each 16-row group of weights passes; whole tiles of 16 tokens, 16 to 128.
fn chunk_tokens(width: usize) -> usize {
    ((256 << 10) / (4 * width) / 16 * 16).clamp(16, 128)
}

/// `fixed::prefill`'s result for the rows `rows` (a multiple of 16 of them, in whole blocks) of
/// an int8 `Layout::Blocks4` matrix (`q`: its blocked part, nb rows), `takes` holding: ys[(r -
/// rows.start) * t + i] = token i's row of x times row r.
///
/// # Safety
/// `available()` must hold.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn prefill(x: &Fixed, t: usize, width: usize, group: usize, q: &[i8], nb: usize, rows: core::ops::Range<usize>, scale: &[f32], ys: &mut [f32]) {
    debug_assert!(rows.len() % 16 == 0 && rows.end <= nb && width % 64 == 0 && group % 64 == 0);
    let groups = width / group;
    let chunk = chunk_tokens(width);
    let mut planes = vec![0u8; 4 * chunk * width];
    let mut weights = vec![0i8; 16 * TILE.min(width)];
    let mut sums = [[0i32; 256]; 4];
    let (mut y, mut la, mut lb) = (vec![_mm512_setzero_ps(); chunk], vec![_mm512_setzero_ps(); chunk], vec![_mm512_setzero_ps(); chunk]);
    let mut row_scales = vec![_mm512_setzero_ps(); groups];
    asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
    for t0 in (0..t).step_by(chunk) {
        let m = chunk.min(t - t0);
        let mp = (m + 15) / 16 * 16;
        if mp > m {
            planes.iter_mut().for_each(|b| *b = 0);
        }
        build_planes(&x.hi[t0 * width..(t0 + m) * width], &x.lo[t0 * width..(t0 + m) * width], m, mp, width, &mut planes);
        let plane = mp * width;
        for r in rows.clone().step_by(16) {
            for (g, s) in row_scales.iter_mut().enumerate() {
                let mut column = [0f32; 16];
                for (j, c) in column.iter_mut().enumerate() {
                    *c = scale[(r + j) * groups + g];
                }
                *s = _mm512_loadu_ps(column.as_ptr());
            }
            for v in [&mut y, &mut la, &mut lb] {
                v[..mp].iter_mut().for_each(|v| *v = _mm512_setzero_ps());
            }
            for c0 in (0..width).step_by(TILE) {
                let c1 = (c0 + TILE).min(width);
                let w = c1 - c0;
                let tile = |b: usize| q.as_ptr().add(c0 * nb + (r + 4 * b) * w);
                build_weights([tile(0), tile(1), tile(2), tile(3)], w, &mut weights);
                for tt in 0..mp / 16 {
                    for (s, e) in pieces(c0, c1, group) {
                        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                        for k in (s..e).step_by(64) {
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
                        for j in 0..16.min(m - 16 * tt) {
                            let i = 16 * tt + j;
                            let sum = |p: usize| _mm512_loadu_si512(sums[p].as_ptr().add(16 * j) as *const _);
                            let a = _mm512_add_epi32(_mm512_slli_epi32::<8>(sum(0)), sum(1));
                            let b = _mm512_add_epi32(_mm512_slli_epi32::<8>(sum(2)), sum(3));
                            la[i] = _mm512_add_ps(la[i], _mm512_cvtepi32_ps(a));
                            lb[i] = _mm512_add_ps(lb[i], _mm512_cvtepi32_ps(b));
                            if ends {
                                // (a * 4096 + b) * unit * scale, as `fixed::prefill` rounds it
                                let unit = _mm512_set1_ps(x.unit[(t0 + i) * groups + g]);
                                let v = _mm512_mul_ps(_mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(la[i], _mm512_set1_ps(4096.0)), lb[i]), unit), row_scales[g]);
                                y[i] = _mm512_add_ps(y[i], v);
                                la[i] = _mm512_setzero_ps();
                                lb[i] = _mm512_setzero_ps();
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
