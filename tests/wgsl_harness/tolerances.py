"""Tolerances for WGSL kernels against the numpy references, in one place.

The references compute in float64 from the same int8 weights and f32 inputs, so every difference is
f32 rounding on the GPU side: accumulation order (tree / subgroup reductions, tiled K loops) over
K terms gives relative error ~ sqrt(K) * 2^-24 per output, well under 1e-5 for K <= 8192, and the
transcendental builtins (exp, tanh, inverseSqrt) have implementation-defined accuracy (a few ulp on
lavapipe and SwiftShader; WGSL allows more). Hence:
"""

# int8 matmuls / norms / rope: results are O(1)..O(100); atol covers cancellation near zero.
MATRIX = dict(rtol=2e-5, atol=2e-5)
# elementwise with exp/tanh/erf (activations, softcap): builtin accuracy plus the erf approximation
# (|error| < 1.5e-7 absolute) used for exact gelu.
ELEMENTWISE = dict(rtol=5e-5, atol=5e-5)
# attention: softmax exp() and an online-softmax rescale chain per key tile add a few ulp each.
ATTENTION = dict(rtol=5e-5, atol=5e-5)
# whole model vs PyTorch on R_q weights: torch's own f32 rounding (different accumulation order, its
# tanh/exp) adds to ours through 2 layers and a softcap. Logits are O(1..15); measured max abs error
# on lavapipe 2.2e-6 for the 2-layer test model, so 2e-5 leaves room for other implementations'
# transcendentals while still catching any real semantic slip (those are >= 1e-3).
MODEL = dict(rtol=2e-5, atol=2e-5)
