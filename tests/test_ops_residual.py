"""`ops.residual.stored_once`: the same values and gradients, and no recomputed residual chain
in XLA:CPU's fusions."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from ehrnet_jax.ops.batch_norm import batch_norm_train
from ehrnet_jax.ops.residual import stored_once
from support.ops_testing import compiled_for_both, xla_conv
from support.tolerances import assert_close_to_rounding


def _residual_chain(kernels, x, store):
  """A residual stream of conv-BN-ReLU blocks, `stored_once` at each block's end if `store`."""
  for kernel in kernels:
    y = xla_conv(x, kernel, 1, ((1, 1), (1, 1)))
    y, _, _ = batch_norm_train(y, jnp.ones(y.shape[-1]), jnp.zeros(y.shape[-1]), 1e-5, None)
    x = jax.nn.relu(y + x)
    x = stored_once(x) if store else x
  return jnp.sum(jnp.sin(x))


def _widest_loop_fusion(hlo: str) -> int:
  """The most operands any elementwise (loop) fusion of a compiled program reads."""
  return max(f.count("%") for f in re.findall(r"= \S+ fusion\((.*?)\), kind=kLoop", hlo))


def test_stored_once_keeps_values_and_gradients_and_stops_the_recomputed_chain():
  rng = np.random.default_rng(0)
  kernels = [jnp.asarray(0.2 * rng.standard_normal((3, 3, 4, 4)), jnp.float32) for _ in range(6)]
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
  grad = compiled_for_both(jax.value_and_grad, _residual_chain, kernels, x)
  (value, grads), (value_stored, grads_stored) = (grad[s](kernels, x) for s in (False, True))
  # x / 1 is x, but the two programs are compiled apart: equal up to rounding (the value, a sum
  # of 512 terms of ~0.4, differed in its last bits between AVX-512 and AVX2 code).
  assert_close_to_rounding(value_stored, value)
  for got, want in zip(jax.tree.leaves(grads_stored), jax.tree.leaves(grads)):
    assert_close_to_rounding(got, want)
  if jax.default_backend() == "cpu":
    # Without it, XLA:CPU recomputes the stream from every earlier block's convolution output
    # inside each consumer (6 blocks: a fusion reading 19 arrays, JAX 0.10.2); with it, only
    # from the block's own (6).
    assert _widest_loop_fusion(grad[False].as_text()) >= 15
    assert _widest_loop_fusion(grad[True].as_text()) <= 8
