"""Batch normalisation's arithmetic: training mode (plain, and with its gradient written out)
and evaluation mode as one per-channel affine map."""

import functools
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp

from ehrnet_jax.ops.opaque import opaque_one
from ehrnet_jax.ops.reductions import channel_sums

Activation = Callable[[jax.Array], jax.Array] | None


def batch_norm_affine(scale: jax.Array, bias: jax.Array, mean: jax.Array, var: jax.Array,
                      epsilon: float) -> tuple[jax.Array, jax.Array]:
  """Evaluation-mode BN with these parameters and running statistics as `x * multiplier +
  offset`, per channel."""
  multiplier = scale * lax.rsqrt(var + epsilon)
  return multiplier, bias - mean * multiplier


def batch_norm_train_plain(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                           activation: Activation) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch norm over the last axis, then `activation` (None: the identity), left
  to autodiff: `(activation(y), mean, biased variance)`."""
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  var = jnp.square(x - mean).mean(axes)
  y = (x - mean) * (scale * lax.rsqrt(var + epsilon)) + bias
  return (activation(y) if activation is not None else y), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     activation: Activation) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`batch_norm_train_plain` with its gradient written out, all float32.

  The gradient (`dx = scale * r * (g - mean(g) - xhat * mean(g * xhat))` plus the terms of the
  mean and variance outputs) uses one-pass channel sums; autodiff's version runs more passes and
  XLA:CPU's slow column reductions (1.5x slower for a BN's forward + backward). Only `x` and the
  per-channel statistics are kept for it: the backward pass recomputes the normalised values and
  takes the activation's derivative there, where autodiff of the composition would store the
  activation's own residuals (for swish its sigmoid and its output, two more arrays of the
  layer's size each).
  """
  return _batch_norm_train_fwd(x, scale, bias, epsilon, activation)[0]


def _normalise(x, scale, bias, mean, inv_std):
  return (x - mean) * (scale * inv_std) + bias


def _batch_norm_train_fwd(x, scale, bias, epsilon, activation):
  count = x.size // x.shape[-1]
  total, = channel_sums(x)
  mean = total / count
  squares, = channel_sums(jnp.square(x - mean))           # Two passes, as before: no cancellation.
  var = squares / count
  inv_std = lax.rsqrt(var + epsilon)
  y = _normalise(x, scale, bias, mean, inv_std)
  y = activation(y) if activation is not None else y
  return (y, mean, var), (x, scale, bias, mean, inv_std)


def _batch_norm_train_bwd(epsilon, activation, residuals, cotangents):
  del epsilon
  x, scale, bias, mean, inv_std = residuals
  g, g_mean, g_var = cotangents
  if activation is not None:
    # Recomputed from `x / 1` so that XLA's CSE cannot merge it with the forward's values and
    # keep those (the activation's residuals) alive instead.
    y = _normalise(x / opaque_one(x), scale, bias, mean, inv_std)
    _, activation_vjp = jax.vjp(activation, y)
    g, = activation_vjp(g)
  count = x.size // x.shape[-1]
  centred = x - mean
  x_hat = centred * inv_std
  sum_g, sum_g_x_hat = channel_sums(g, g * x_hat)
  dx = ((scale * inv_std) * (g - sum_g / count - x_hat * (sum_g_x_hat / count))
        + g_mean / count + (2.0 / count) * g_var * centred)
  return dx, sum_g_x_hat, sum_g


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)
