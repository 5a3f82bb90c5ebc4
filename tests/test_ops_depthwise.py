"""`ops.depthwise`: the shifted-slices depthwise convolution and its written gradient equal
autodiff of XLA's grouped convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.models.efficientnet import reference_padding
from ehrnet_jax.ops.depthwise import depthwise_conv_shifted
from support.ops_testing import assert_vjp_equal, grouped_conv


# Every depthwise configuration of the backbone: k3/k5, stride 1/2, the reference's asymmetric
# padding (k3 s2: (0, 1); k5 s2: (1, 2)) and symmetric ones, on even and odd sizes.
DEPTHWISE_CASES = [
    (3, 1, reference_padding(3, 1), (2, 8, 8, 5)),
    (3, 2, reference_padding(3, 2), (2, 8, 8, 6)),
    (5, 1, reference_padding(5, 1), (2, 9, 7, 4)),
    (5, 2, reference_padding(5, 2), (2, 12, 10, 3)),
    (3, 2, reference_padding(3, 2), (1, 9, 11, 4)),  # odd sizes: uncovered last row/column
    (5, 2, reference_padding(5, 2), (1, 11, 9, 2)),
    (3, 2, ((1, 1), (1, 1)), (2, 8, 7, 3)),
    (5, 2, ((2, 2), (0, 3)), (1, 10, 10, 3)),
]


@pytest.mark.parametrize("kernel_size,stride,padding,shape", DEPTHWISE_CASES)
def test_depthwise_shifted_vjp_matchesgrouped_conv(kernel_size, stride, padding, shape):
  rng = np.random.default_rng(kernel_size * 10 + stride)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 1, shape[-1])),
                       jnp.float32)
  assert_vjp_equal(lambda x, k: depthwise_conv_shifted(x, k, stride, padding),
                    lambda x, k: grouped_conv(x, k, stride, padding), (x, kernel))


def test_depthwise_shifted_grad_under_jit_and_in_a_network():
  """Composed with other ops (BN-like normalisation, swish) and jitted, as in MBConv."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 8)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 8)), jnp.float32)

  def net(conv):
    def f(x, k):
      y = conv(jax.nn.swish(x), k, 2, reference_padding(3, 2))
      y = (y - y.mean((0, 1, 2))) * jax.lax.rsqrt(y.var((0, 1, 2)) + 1e-5)
      return jnp.sum(jnp.sin(y))
    return jax.jit(jax.grad(f, argnums=(0, 1)))

  for got, want in zip(net(depthwise_conv_shifted)(x, kernel), net(grouped_conv)(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
