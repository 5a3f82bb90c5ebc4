"""Per-channel sums in the form XLA:CPU reduces fastest."""

import jax
from jax import lax
import jax.numpy as jnp


def channel_sums(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Sums over every axis but the last (channels) of same-shaped arrays, in one pass.

  One variadic reduction over the second-to-last axis, then a small sum over the rest: XLA:CPU
  runs this 3-10x faster than `x.sum(axis=(0, 1, 2))`, which it emits as a slow column reduction.
  """
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  rows = lax.reduce(arrays, zeros, lambda a, b: tuple(p + q for p, q in zip(a, b)),
                    (arrays[0].ndim - 2,))
  return tuple(r.reshape(-1, r.shape[-1]).sum(0) for r in rows)
