"""Depthwise convolution as shifted slices, with its gradient written out (XLA:CPU)."""

import jax
from jax import lax
import jax.numpy as jnp

from ehrnet_jax.ops.conv import conv_windows
from ehrnet_jax.ops.reductions import channel_sums
from ehrnet_jax.ops.written_gradient import Padding, with_written_gradient


def _depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int,
                       padding: Padding) -> jax.Array:
  k = kernel.shape[0]
  out = None
  for tap, window in enumerate(conv_windows(x, k, stride, padding)):
    term = window * kernel[tap // k, tap % k, 0]
    out = term if out is None else out + term
  return out


def _depthwise_shifted_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  # Input gradient: the depthwise conv of the (stride-dilated) output gradient with the flipped
  # kernel, padded so that it comes out at the input's size.
  pads = [(0, 0, 0)]
  for axis in (1, 2):
    low, high = padding[axis - 1]
    rest = (x.shape[axis] + low + high - k) % stride
    pads.append((k - 1 - low, k - 1 - high + rest, stride - 1))
  g_dilated = lax.pad(g, jnp.zeros((), g.dtype), pads + [(0, 0, 0)])
  dx = _depthwise_shifted(g_dilated, kernel[::-1, ::-1], 1, ((0, 0), (0, 0)))
  # Kernel gradient: per tap, the sum over (B, H', W') of window * g, all k*k taps in one pass
  # over x and g (`channel_sums`).
  windows = conv_windows(x, k, stride, padding)                      # each shaped like g
  dk = jnp.stack(channel_sums(*((w * g).astype(jnp.float32) for w in windows)))  # (k*k, C)
  return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_shifted_vjp = with_written_gradient(_depthwise_shifted, _depthwise_shifted_bwd)


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int,
                           padding: Padding) -> jax.Array:
  """Depthwise convolution as a sum of k*k strided slices times per-channel weights.

  x: (B, H, W, C); kernel: (k, k, 1, C). Same result as a grouped convolution; XLA fuses it into
  one loop, which on CPU runs 20-80x faster than its grouped-convolution kernel.

  Its gradient is written out (`_depthwise_shifted_bwd`) rather than left to autodiff, which
  would keep each of the k*k windows as a separate residual (k*k copies of the activations,
  each recomputing the fused producers) and reduce the kernel gradient tap by tap with XLA:CPU's
  slow column reductions: 2-3x less CPU time for the layer's forward + backward
  (docs/benchmarks/training.md).
  """
  return _depthwise_shifted_vjp(x, kernel, stride, padding)
