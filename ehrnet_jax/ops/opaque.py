"""A one that XLA cannot see through: the tool behind the kernels' control of XLA's scheduling
and fusion."""

import jax
import jax.numpy as jnp


def opaque_one(x: jax.Array) -> jax.Array:
  """A scalar 1 that XLA cannot take for a constant: the sign of 1 + |x[0]| (NaN if x[0] is).

  Dividing by it changes no number but makes a new value, which XLA neither folds away nor
  merges (CSE) with the same expression of `x` elsewhere, and which exists only once `x` does.
  """
  return jnp.sign(jnp.abs(x.reshape(-1)[0]) + 1)
