"""`ops.late_kernel_gradient`: the same convolution and gradients, without the transposed copies
kept through the forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.ops.late_kernel_gradient import conv_late_kernel_gradient
from support.ops_testing import compiled_for_both, temporaries, xla_conv
from support.tolerances import assert_close_to_rounding


@pytest.mark.parametrize("stride,padding", [(1, ((1, 1), (1, 1))), (2, ((1, 1), (1, 1))),
                                            (2, ((0, 1), (0, 1)))])
def test_conv_late_kernel_gradient_is_the_convolution_and_its_gradients(stride, padding):
  rng = np.random.default_rng(stride)
  x = jnp.asarray(rng.standard_normal((2, 9, 8, 6)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 6, 5)), jnp.float32)
  plain = lambda x, k: xla_conv(x, k, stride, padding)
  late = lambda x, k: conv_late_kernel_gradient(x, k, stride, padding)
  (y, grads), (y_late, grads_late) = (
      jax.jit(jax.value_and_grad(lambda x, k, f=f: jnp.sum(jnp.sin(f(x, k))), argnums=(0, 1)))(
          x, kernel) for f in (plain, late))
  # x / 1 is x, but the two programs are compiled apart: equal up to rounding.
  assert_close_to_rounding(y_late, y)
  for got, want in zip(grads_late, grads):
    assert_close_to_rounding(got, want)


def _conv_chain(kernels, x, late):
  """3x3 conv-ReLU layers, their kernel gradients from `conv_late_kernel_gradient` if `late`."""
  conv = conv_late_kernel_gradient if late else xla_conv
  for kernel in kernels:
    x = jax.nn.relu(conv(x, kernel, 1, ((1, 1), (1, 1))))
  return jnp.sum(jnp.sin(x))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU scheduling effect")
def test_late_kernel_gradients_keep_no_transposed_copies_through_the_forward_pass():
  rng = np.random.default_rng(2)
  kernels = [jnp.asarray(0.2 * rng.standard_normal((3, 3, 32, 32)), jnp.float32)
             for _ in range(6)]
  x = jnp.asarray(rng.standard_normal((2, 32, 32, 32)), jnp.float32)
  # Autodiff's kernel gradients have XLA:CPU copy each layer's input to (C, H, W, B) as soon as it
  # exists and keep the copies through the forward pass (JAX 0.10.2: 3.4 vs 2.1 MiB).
  temps = temporaries(compiled_for_both(jax.grad, _conv_chain, kernels, x))
  assert temps[True] < 0.8 * temps[False], temps
