//! exp and tanh of f32 for every target, in f64 arithmetic with a final rounding: the same bits
//! natively and in wasm whatever libm the platform links (glibc's expf differs from the one Rust
//! ships for wasm32, an older port that divides and calls scalbnf), within 0.51 ulp of the true
//! value, and several times faster in wasm (softmax's and SiLU's exps were 3% of a wasm decode
//! token on llama-30m, nanochat's logit softcap's tanh 10% on its GPT twin).
//!
//! expf is the table-driven design of ARM's optimized routines (also in musl and glibc): with
//! x * 32 / ln 2 = k + r, |r| <= 1/2, exp(x) = 2^(k / 32) * 2^(r / 32), the first factor built from
//! a table of 2^(i / 32) and k's bits, the second a cubic in r. The table is 2^(i / 32) rounded to
//! f64; the cubic was fitted (mpmath `chebyfit`) to 2^(r / 32) on [-1/2, 1/2]: relative error
//! 2^-32.7 before the rounding to f32.

/// The bits of 2^(i / 32) minus i << 47: adding k << 47 for k = 32 m + i gives 2^m * 2^(i / 32).
const TABLE: [u64; 32] = [
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
];
/// 32 / ln 2
const INV_LN2_32: f64 = 46.16624130844683;
/// 1.5 * 2^52: adding it rounds a value below 2^51 to an integer held in the low mantissa bits
const SHIFT: f64 = 6755399441055744.0;
/// 2^(r / 32) ~ 1 + r * (C1 + r * (C2 + r * C3))
const C1: f64 = 0.02166084939249829;
const C2: f64 = 0.00023459791806279678;
const C3: f64 = 1.6938584231590093e-06;

/// x rounded to an integer, halves to even (`f64::round_ties_even` is not in Rust 1.63), for
/// |x| < 2^51: adding SHIFT leaves the integer in the low mantissa bits.
#[inline(always)]
pub fn round_half_even(x: f64) -> f64 {
    (x + SHIFT) - SHIFT
}

/// exp(x) for |x| up to ~150 (the caller keeps it there), before rounding.
#[inline(always)]
fn exp_f64(x: f64) -> f64 {
    let z = INV_LN2_32 * x;
    let kd = z + SHIFT;
    let ki = kd.to_bits();
    let r = z - (kd - SHIFT);
    // (k's low 17 bits shifted into the exponent; the table entry's offset makes the sum right mod 2^64)
    let s = f64::from_bits(TABLE[(ki % 32) as usize].wrapping_add(ki << 47));
    s * (1.0 + r * (C1 + r * (C2 + r * C3)))
}

/// e^x of an f32.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    // one integer test on the common path: |x| >= 88, inf or NaN (the exponent and top mantissa bits)
    if (x.to_bits() >> 20) & 0x7ff >= 0x42b {
        if x.is_nan() {
            return x + x;
        }
        if x > 88.72283 {
            return f32::INFINITY; // past f32::MAX
        }
        if x < -103.97208 {
            return 0.0; // below half the smallest subnormal (and -inf, which exp_f64 cannot take)
        }
    }
    exp_f64(x as f64) as f32
}

/// tanh(x) ~ x + x^3 * P(x^2) for |x| < 0.55, P fitted (mpmath `chebyfit`) to (tanh(x) / x - 1) / x^2:
/// relative error 2^-33 before the rounding to f32. Highest power first.
const TANH_P: [f64; 6] = [0.0025263907105745136, -0.00852633305780133, 0.021818449128639904, -0.0539647004451583, 0.13333324200007313, -0.3333333329502591];

/// tanh of an f32: a polynomial near 0 (where 1 - 2 / (e^2x + 1) would cancel), that formula
/// with `exp_f64` up to |x| = 9.1, past which tanh rounds to +-1 in f32.
#[inline(always)]
pub fn tanhf(x: f32) -> f32 {
    if x.is_nan() {
        return x + x;
    }
    let a = x.abs();
    if a >= 9.1 {
        return 1f32.copysign(x);
    }
    let ad = a as f64;
    let t = if a < 0.55 {
        let z = ad * ad;
        let p = TANH_P.iter().fold(0.0, |acc, c| acc * z + c);
        ad + ad * z * p
    } else {
        1.0 - 2.0 / (exp_f64(2.0 * ad) + 1.0)
    };
    (t as f32).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// |got - want| in units of f32's spacing in want's binade (want: an f64 near the true value).
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want.abs();
        let spacing = if w < f32::MIN_POSITIVE as f64 { 2f64.powi(-149) } else { 2f64.powi(((w.to_bits() >> 52) as i32 & 0x7ff) - 1023 - 23) };
        (got as f64 - want).abs() / spacing
    }

    /// Every `step`th f32 bit pattern in [lo, hi] and the ends, both signs.
    fn sweep(lo: f32, hi: f32, step: usize) -> impl Iterator<Item = f32> {
        let (a, b) = (lo.to_bits(), hi.to_bits());
        (a..=b).step_by(step).chain([b]).map(f32::from_bits).flat_map(|v| [v, -v])
    }

    #[test]
    fn expf_is_within_half_an_ulp_and_a_little() {
        // against f64 exp (well within f32's rounding), over every range it takes: tiny,
        // ordinary, near overflow, into the subnormals
        let mut worst = 0f64;
        for x in sweep(1e-8, 103.9, 331) {
            if x > 88.72 {
                continue;
            }
            let u = ulps(expf(x), (x as f64).exp());
            worst = worst.max(u);
            assert!(u <= 0.51, "expf({:e}) = {:e}, exp = {:e}: {} ulps", x, expf(x), (x as f64).exp(), u);
        }
        assert!(worst > 0.45, "the sweep reached values that round: {}", worst);
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(-0.0), 1.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-104.0), 0.0);
        assert_eq!(expf(88.73), f32::INFINITY);
        assert_eq!(expf(f32::INFINITY), f32::INFINITY);
        assert!(expf(f32::NAN).is_nan());
        assert!(expf(88.72283).is_finite() && ulps(expf(88.72283), (88.72283f32 as f64).exp()) <= 0.51); // the largest finite result
        assert!(expf(-103.9) > 0.0 && expf(-103.9) < f32::MIN_POSITIVE);
    }

    #[test]
    fn tanhf_is_within_half_an_ulp_and_a_little() {
        for x in sweep(1e-30, 12.0, 997) {
            let u = ulps(tanhf(x), (x as f64).tanh());
            assert!(u <= 0.51, "tanhf({:e}) = {:e}, tanh = {:e}: {} ulps", x, tanhf(x), (x as f64).tanh(), u);
        }
        for x in [0.0f32, -0.0] {
            assert_eq!(tanhf(x).to_bits(), x.to_bits()); // the sign of zero kept
        }
        assert_eq!(tanhf(f32::INFINITY), 1.0);
        assert_eq!(tanhf(f32::NEG_INFINITY), -1.0);
        assert!(tanhf(f32::NAN).is_nan());
        // both sides of each branch point
        for x in [0.55f32, 9.1] {
            for v in [f32::from_bits(x.to_bits() - 1), x] {
                assert!(ulps(tanhf(v), (v as f64).tanh()) <= 0.51, "{}", v);
            }
        }
    }
}
