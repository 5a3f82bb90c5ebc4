"""Dense convolution whose kernel gradient reads its input only in the backward pass."""

import jax

from ehrnet_jax.ops.conv import conv
from ehrnet_jax.ops.opaque import opaque_one
from ehrnet_jax.ops.written_gradient import Padding, with_written_gradient


def _late_kernel_gradient_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  dx, = jax.vjp(lambda x: conv(x, kernel, stride, padding), x)[1](g)
  x_late = x / opaque_one(g)
  dk, = jax.vjp(lambda k: conv(x_late, k, stride, padding), kernel)[1](g)
  return dx, dk


_late_kernel_gradient_vjp = with_written_gradient(conv, _late_kernel_gradient_bwd)


def conv_late_kernel_gradient(x: jax.Array, kernel: jax.Array, stride: int,
                              padding: Padding) -> jax.Array:
  """`conv.conv` (dense) whose kernel gradient reads its input only once the output gradient
  exists.

  For training on CPU. XLA:CPU computes a convolution's kernel gradient from copies of its input
  and output gradient transposed to (C, H, W, B), and its scheduler makes the input's copy as soon
  as the input exists, in the forward pass, so every layer's copy is kept alive next to its input
  until the backward pass reaches it (H0 trained: ~300 such copies, 0.44 GB of the step's peak).
  Here the kernel gradient reads `x / 1` with a one computed from the output gradient (see
  `opaque_one`): the same numbers, but the copy can only be made in the backward pass, just
  before it is used. The input gradient is autodiff's.
  """
  return _late_kernel_gradient_vjp(x, kernel, stride, padding)
