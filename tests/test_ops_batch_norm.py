"""`ops.batch_norm`: training-mode batch norm, plain (against NumPy) and with its written
gradient (against autodiff of the plain one)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.ops.batch_norm import batch_norm_train, batch_norm_train_plain
from ehrnet_jax.ops.conv_1x1 import conv_1x1
from support.ops_testing import compiled_for_both, temporaries
from support.tolerances import assert_close_to_rounding


def test_batch_norm_train_plain_normalises_with_the_biased_batch_variance():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((3, 4, 5, 6)) * 2 + 1
  scale, bias = rng.standard_normal(6), rng.standard_normal(6)
  mean = x.reshape(-1, 6).mean(0)
  var = ((x - mean) ** 2).reshape(-1, 6).mean(0)                   # biased, as PyTorch's
  want = np.maximum((x - mean) / np.sqrt(var + 1e-5) * scale + bias, 0)
  got = batch_norm_train_plain(*(jnp.asarray(a, jnp.float32) for a in (x, scale, bias)), 1e-5,
                               jax.nn.relu)
  for got_array, want_array in zip(got, (want, mean, var)):
    np.testing.assert_allclose(got_array, want_array, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", [None, jax.nn.relu, jax.nn.swish])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (3, 4, 4, 16), (1, 2, 3, 1)])
def test_batch_norm_train_vjp_matches_autodiff(shape, activation):
  rng = np.random.default_rng(sum(shape))
  x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
  scale = jnp.asarray(rng.standard_normal(shape[-1:]), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(shape[-1:]), jnp.float32)
  plain = lambda *args: batch_norm_train_plain(*args, 1e-5, activation)
  got_out, got_vjp = jax.vjp(lambda *a: batch_norm_train(*a, 1e-5, activation), x, scale, bias)
  want_out, want_vjp = jax.vjp(plain, x, scale, bias)
  for got, want in zip(got_out, want_out):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Cotangents for y and (unusually) for the mean and variance outputs too.
  cotangents = tuple(jnp.asarray(rng.standard_normal(o.shape), jnp.float32) for o in want_out)
  for got, want in zip(jax.jit(got_vjp)(cotangents), jax.jit(want_vjp)(cotangents)):
    assert_close_to_rounding(got, want)


def _swish_chain(kernels, x, inside):
  """1x1 conv-BN-swish layers, the swish inside `batch_norm_train` or applied to its output."""
  for kernel in kernels:
    y = conv_1x1(x, kernel)
    ones, zeros = jnp.ones(y.shape[-1]), jnp.zeros(y.shape[-1])
    if inside:
      x, _, _ = batch_norm_train(y, ones, zeros, 1e-5, jax.nn.swish)
    else:
      x = jax.nn.swish(batch_norm_train(y, ones, zeros, 1e-5, None)[0])
  return jnp.sum(jnp.sin(x))


def test_activation_inside_batch_norm_keeps_fewer_arrays_for_the_backward_pass():
  rng = np.random.default_rng(1)
  kernels = [jnp.asarray(0.3 * rng.standard_normal((1, 1, 32, 32)), jnp.float32)
             for _ in range(6)]
  x = jnp.asarray(rng.standard_normal((2, 32, 32, 32)), jnp.float32)
  grad = compiled_for_both(jax.grad, _swish_chain, kernels, x)
  for got, want in zip(jax.tree.leaves(grad[True](kernels, x)),
                       jax.tree.leaves(grad[False](kernels, x))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Per layer, autodiff of the composition keeps the swish's sigmoid and output next to the BN
  # input; inside, the sigmoid is recomputed (XLA:CPU, JAX 0.10.2: 6 layers of 256 KiB arrays,
  # 4.3 vs 3.0 MiB of temporaries).
  temps = temporaries(grad)
  assert temps[True] < 0.8 * temps[False], temps
