"""Nearest-neighbour upsampling."""

import jax
import jax.numpy as jnp


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """Nearest-neighbour upsampling of NHWC maps by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
