"""Nearest-neighbour upsampling, spelled for XLA or for exporters."""

import jax
import jax.numpy as jnp

METHODS = ("repeat", "resize")


def upsample_nearest(x: jax.Array, factor: int, method: str = "repeat") -> jax.Array:
  """Nearest-neighbour upsampling of NHWC maps by an integer factor.

  `method`: "repeat" (`jnp.repeat` on both axes) or "resize" (`jax.image.resize(method=
  "nearest")`, the same copies: exporters write it as one ONNX Resize where the repeats become
  Reshape + Expand chains; it needs a static batch to trace).
  """
  if method not in METHODS:
    raise ValueError(f"unknown upsampling method {method!r}; expected one of {METHODS}")
  if method == "resize":
    batch, height, width, channels = x.shape
    return jax.image.resize(x, (batch, height * factor, width * factor, channels), "nearest")
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
