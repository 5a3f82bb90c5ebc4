"""`ops.conv_1x1`: the 1x1 convolution as matrix products equals XLA's convolution and its
autodiff gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.ops.conv_1x1 import conv_1x1
from support.ops_testing import assert_vjp_equal, xla_conv


@pytest.mark.parametrize("shape,features", [((2, 6, 5, 7), 4), ((1, 3, 3, 16), 24)])
def test_conv_1x1_vjp_matches_autodiff(shape, features):
  rng = np.random.default_rng(shape[-1])
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((1, 1, shape[-1], features)), jnp.float32)
  plain = lambda x, k: xla_conv(x, k, 1, ((0, 0), (0, 0)))
  for form in ("conv", "product"):
    assert_vjp_equal(lambda x, k: conv_1x1(x, k, form), plain, (x, kernel))


def test_conv_1x1_forms_compute_the_convolution_without_differentiation():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 5, 6, 24)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((1, 1, 24, 8)), jnp.float32)
  want = xla_conv(x, kernel, 1, ((0, 0), (0, 0)))
  for form, primitive in (("conv", "conv_general_dilated"), ("product", "dot_general")):
    np.testing.assert_allclose(jax.jit(conv_1x1, static_argnums=2)(x, kernel, form), want,
                               rtol=1e-5, atol=1e-5)
    primitives = {eqn.primitive.name for eqn in jax.make_jaxpr(
        lambda x, k, form=form: conv_1x1(x, k, form))(x, kernel).jaxpr.eqns[0].params[
            "call_jaxpr"].jaxpr.eqns}
    assert primitives & {"conv_general_dilated", "dot_general"} == {primitive}, form
  with pytest.raises(ValueError, match="unknown 1x1 convolution forward 'matmul'"):
    conv_1x1(x, kernel, "matmul")
