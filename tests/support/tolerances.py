"""Tolerances for comparing float32 results of separately compiled programs, with their reasons.

Two programs that compute the same math (a hand-written form and autodiff of the plain
primitives, the pose model and the classifier over one backbone, JAX and onnxruntime) order,
fuse and vectorise their sums differently, and differently on each CPU (AVX-512 vs AVX2 change
the last bits): they agree up to rounding, never bit for bit. Exact equality is asserted only
where it is guaranteed (the same program run twice, integers, copies, NumPy).
"""

import numpy as np

# Sums of tens to hundreds of float32 terms differ by ~1e-6 of their magnitude between programs;
# a wrong gradient or a wrongly loaded weight is off by O(1) of it.
ROUNDING = 1e-5

# JAX against onnxruntime through the whole network (~100 layers): measured up to 1.8e-5 of the
# largest output (bundled random H-4 weights, outputs up to ~15); each runtime picks its own
# kernels per CPU, so 5x that. A wrong graph is off by O(1).
EXPORT = 1e-4


def scaled_atol(want, fraction: float) -> float:
  """An absolute tolerance of `fraction` of the largest |want| (at least of 1)."""
  return fraction * max(1.0, float(np.max(np.abs(want))))


def assert_close_to_rounding(got, want) -> None:
  """`got` equals `want` up to float32 rounding between two compiled programs (`ROUNDING` of
  the largest |want|, at least 1)."""
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                             atol=scaled_atol(want, ROUNDING))
