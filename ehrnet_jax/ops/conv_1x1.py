"""1x1 convolution whose forward and gradients are matrix products."""

import functools

import jax
import jax.numpy as jnp

from ehrnet_jax.ops.conv import conv

FORWARDS = ("conv", "product")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_1x1(x: jax.Array, kernel: jax.Array, forward: str = "conv") -> jax.Array:
  """1x1 convolution (stride 1, no padding; kernel (1, 1, C_in, C_out)) that trains as matrix
  products.

  Under differentiation the forward and both gradients are matrix products of the (B*H*W, C)
  activations: XLA:CPU runs the 1x1 convolution up to 6x slower than the same product when
  C_in > C_out, autodiff's kernel gradient (a convolution with an input-sized window, plus
  transposes) up to 18x slower than `x^T g`, and its input gradient up to 6x slower than `g W^T`
  (docs/benchmarks/training.md). Undifferentiated, `forward` says what runs: "conv" (XLA's
  convolution) or "product" (the matrix product, also faster undifferentiated on CPU: a frozen
  backbone's forward in training).
  """
  if forward not in FORWARDS:
    raise ValueError(f"unknown 1x1 convolution forward {forward!r}; expected one of {FORWARDS}")
  if forward == "product":
    return _product_1x1(x, kernel)
  return conv(x, kernel, 1, ((0, 0), (0, 0)))


def _product_1x1(x, kernel):
  rows = x.reshape(-1, x.shape[-1])
  y = jnp.dot(rows, kernel[0, 0], preferred_element_type=jnp.float32).astype(x.dtype)
  return y.reshape(x.shape[:-1] + kernel.shape[-1:])


def _conv_1x1_fwd(x, kernel, forward):
  del forward  # differentiated: always the product
  return _product_1x1(x, kernel), (x, kernel)


def _conv_1x1_bwd(forward, residuals, g):
  del forward
  x, kernel = residuals
  rows, g_rows = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  dx = jnp.dot(g_rows, kernel[0, 0].T, preferred_element_type=jnp.float32).astype(x.dtype)
  d_kernel = jnp.dot(rows.T, g_rows, preferred_element_type=jnp.float32)
  return dx.reshape(x.shape), d_kernel.reshape(kernel.shape).astype(kernel.dtype)


conv_1x1.defvjp(_conv_1x1_fwd, _conv_1x1_bwd)
