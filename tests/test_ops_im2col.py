"""`ops.im2col`: the convolution as one product of its windows equals XLA's convolution and
its autodiff gradients."""

import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.models.efficientnet import reference_padding
from ehrnet_jax.ops.im2col import conv_im2col
from support.ops_testing import assert_vjp_equal, xla_conv


@pytest.mark.parametrize("kernel_size,stride,padding,shape", [
    (3, 2, reference_padding(3, 2), (2, 10, 8, 3)),   # the stem
    (3, 2, reference_padding(3, 2), (1, 9, 11, 3)),   # odd sizes
    (3, 1, ((1, 1), (1, 1)), (2, 6, 7, 2)),
    (5, 2, ((2, 2), (0, 3)), (1, 10, 10, 4))])
def test_conv_im2col_equals_the_convolution_with_its_gradients(kernel_size, stride, padding,
                                                               shape):
  rng = np.random.default_rng(kernel_size * stride)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, shape[-1], 5)), jnp.float32)
  plain = lambda x, k: xla_conv(x, k, stride, padding)
  assert_vjp_equal(lambda x, k: conv_im2col(x, k, stride, padding), plain, (x, kernel))
