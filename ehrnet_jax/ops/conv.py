"""The plain 2-D convolution (NHWC, HWIO) and the windows a convolution reads."""

from typing import Iterator

import jax
from jax import lax
import jax.numpy as jnp

from ehrnet_jax.ops.written_gradient import Padding


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
         groups: int = 1) -> jax.Array:
  """XLA's convolution: x (B, H, W, C_in), kernel (k, k, C_in / groups, C_out)."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups)


def strided_windows(x: jax.Array, kernel_size: int, stride: int, out_h: int,
                    out_w: int) -> Iterator[jax.Array]:
  """The k*k strided (B, out_h, out_w, C) windows of the padded `x`, taps in raster order."""
  for dy in range(kernel_size):
    for dx in range(kernel_size):
      yield lax.slice(
          x, (0, dy, dx, 0),
          (x.shape[0], dy + (out_h - 1) * stride + 1, dx + (out_w - 1) * stride + 1, x.shape[3]),
          (1, stride, stride, 1))


def conv_windows(x: jax.Array, kernel_size: int, stride: int,
                 padding: Padding) -> Iterator[jax.Array]:
  """The k*k windows a k x k convolution of this stride and padding reads from `x`, each
  (B, H', W', C), taps in raster order."""
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  out_h = (x.shape[1] - kernel_size) // stride + 1
  out_w = (x.shape[2] - kernel_size) // stride + 1
  return strided_windows(x, kernel_size, stride, out_h, out_w)
