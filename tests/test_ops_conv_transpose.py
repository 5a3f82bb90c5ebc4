"""`ops.conv_transpose`: the sub-pixel form and the written kernel gradient equal the primitive
and autodiff of it."""

from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.ops.conv_transpose import _subpixel_conv_transpose, conv_transpose
from support.ops_testing import assert_vjp_equal


@pytest.mark.parametrize("kernel_size,stride,padding,shape", [
    (4, 2, ((2, 2), (2, 2)), (2, 6, 5, 7)),   # the head's deconv (torch padding 1)
    (4, 2, ((1, 3), (3, 1)), (1, 4, 4, 3)),
    (3, 2, ((1, 2), (2, 1)), (2, 5, 6, 4)),
    (3, 1, ((1, 1), (1, 1)), (1, 5, 5, 3)),
])
def test_conv_transpose_vjp_matches_autodiff(kernel_size, stride, padding, shape):
  rng = np.random.default_rng(kernel_size + stride)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 5, shape[-1])), jnp.float32)
  plain = lambda x, k: lax.conv_transpose(x, k, (stride, stride), padding,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          transpose_kernel=True)
  for form in ("subpixel", "conv_transpose"):
    for written in (False, True):
      assert_vjp_equal(lambda x, k: conv_transpose(x, k, stride, padding, form, written), plain,
                       (x, kernel))


@pytest.mark.parametrize("kernel_size,stride,padding", [
    (4, 2, ((2, 2), (2, 2))), (4, 2, ((0, 4), (3, 1))), (3, 2, ((1, 2), (2, 1))),
    (2, 2, ((1, 1), (1, 1))), (6, 3, ((2, 5), (4, 3))), (5, 3, ((4, 2), (3, 3))),
    (3, 1, ((1, 1), (0, 2)))])
def test_subpixel_conv_transpose_equals_dilated(kernel_size, stride, padding):
  rng = np.random.default_rng(kernel_size * stride)
  x = jnp.asarray(rng.standard_normal((2, 5, 7, 6)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 4, 6)), jnp.float32)
  want = lax.conv_transpose(x, kernel, (stride, stride), padding,
                            dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
  got = _subpixel_conv_transpose(x, kernel, stride, padding)
  assert got.shape == want.shape == (2, 5 * stride, 7 * stride, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_subpixel_conv_transpose_refuses_other_output_sizes():
  with pytest.raises(ValueError, match="output 2x the input"):
    _subpixel_conv_transpose(jnp.zeros((1, 4, 4, 3)), jnp.zeros((4, 4, 2, 3)), 2, ((3, 3), (3, 3)))
