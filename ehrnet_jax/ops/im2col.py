"""Dense convolution of few input channels as one matrix product (XLA:CPU training)."""

import jax
import jax.numpy as jnp

from ehrnet_jax.ops.conv import conv_windows
from ehrnet_jax.ops.written_gradient import Padding

# Dense convolutions with at most this many input channels train as `conv_im2col` on CPU.
IM2COL_MAX_INPUTS = 4


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """Dense convolution as one matrix product of the k*k strided windows of `x`, concatenated
  (B, H', W', k*k*C_in), with the kernel reshaped to (k*k*C_in, C_out).

  For convolutions of very few input channels (the stem's 3x3 stride-2 conv on RGB) in training:
  XLA:CPU's training programs give convolutions to YNNPACK, which runs this one at ~5 GFLOP/s
  (80 ms of the H-4 frozen-backbone step); the product takes half that (step 1.41 -> 1.32 s).
  Same numbers as `conv.conv` up to float rounding; autodiff makes the kernel gradient the
  transposed product.
  """
  windows = jnp.concatenate(list(conv_windows(x, kernel.shape[0], stride, padding)), axis=-1)
  return jnp.dot(windows, kernel.reshape(-1, kernel.shape[-1]),
                 preferred_element_type=jnp.float32).astype(x.dtype)
