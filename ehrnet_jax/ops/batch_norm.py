"""Batch normalisation's arithmetic: training mode (plain, and with its gradient written out)
and evaluation mode as one per-channel affine map.

Training mode normalises with the statistics of the batch it is given, or with `axis_name` those
of the batches of all devices along that mapped axis together (cross-replica batch norm:
collectives over the axis, which must be bound, e.g. by `jax.shard_map`, and give every device
the same number of examples). The gradients follow per-device (pmap) semantics: each device
differentiates its own loss, the collectives' transposes carry the statistics' gradients across
devices, and averaging the devices' parameter gradients gives the gradient of the mean loss.
"""

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


def _over_devices(local_means, axis_name: str | None):
  """Means over the batch of every device along `axis_name` from each device's (equal-sized)."""
  return local_means if axis_name is None else lax.pmean(local_means, axis_name)


def batch_norm_train_plain(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                           activation: Activation, axis_name: str | None = None
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch norm over the last axis, then `activation` (None: the identity), left
  to autodiff: `(activation(y), mean, biased variance)`, the statistics over `axis_name`'s
  devices too when given."""
  axes = tuple(range(x.ndim - 1))
  mean = _over_devices(x.mean(axes), axis_name)
  var = _over_devices(jnp.square(x - mean).mean(axes), axis_name)
  y = (x - mean) * (scale * lax.rsqrt(var + epsilon)) + bias
  return (activation(y) if activation is not None else y), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     activation: Activation, axis_name: str | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`batch_norm_train_plain` with its gradient written out, all float32.

  The gradient (`dx = scale * r * (g - mean(g) - xhat * mean(g * xhat))` plus the terms of the
  mean and variance outputs) uses one-pass channel sums; autodiff's version runs more passes and
  XLA:CPU's slow column reductions (1.5x slower for a BN's forward + backward). Only `x` and the
  per-channel statistics are kept for it: the backward pass recomputes the normalised values and
  takes the activation's derivative there, where autodiff of the composition would store the
  activation's own residuals (for swish its sigmoid and its output, two more arrays of the
  layer's size each). With `axis_name`, the channel sums of both passes are summed over the
  devices (`psum`); the scale's and bias's gradients stay the device's own.
  """
  return _batch_norm_train_fwd(x, scale, bias, epsilon, activation, axis_name)[0]


def _normalise(x, scale, bias, mean, inv_std):
  return (x - mean) * (scale * inv_std) + bias


def _summed_over_devices(sums, axis_name: str | None):
  return sums if axis_name is None else lax.psum(sums, axis_name)


def _count(x, axis_name: str | None) -> int:
  """Examples per channel over the devices of `axis_name` (each with `x`'s shape)."""
  return x.size // x.shape[-1] * (1 if axis_name is None else lax.axis_size(axis_name))


def _batch_norm_train_fwd(x, scale, bias, epsilon, activation, axis_name):
  count = _count(x, axis_name)
  total, = _summed_over_devices(channel_sums(x), axis_name)
  mean = total / count
  # Two passes, as before: no cancellation.
  squares, = _summed_over_devices(channel_sums(jnp.square(x - mean)), axis_name)
  var = squares / count
  inv_std = lax.rsqrt(var + epsilon)
  y = _normalise(x, scale, bias, mean, inv_std)
  y = activation(y) if activation is not None else y
  return (y, mean, var), (x, scale, bias, mean, inv_std)


def _batch_norm_train_bwd(epsilon, activation, axis_name, residuals, cotangents):
  del epsilon
  x, scale, bias, mean, inv_std = residuals
  g, g_mean, g_var = cotangents
  if activation is not None:
    # Recomputed from `x / 1` so that XLA's CSE cannot merge it with the forward's values and
    # keep those (the activation's residuals) alive instead.
    y = _normalise(x / opaque_one(x), scale, bias, mean, inv_std)
    _, activation_vjp = jax.vjp(activation, y)
    g, = activation_vjp(g)
  count = _count(x, axis_name)
  centred = x - mean
  x_hat = centred * inv_std
  sum_g, sum_g_x_hat = channel_sums(g, g * x_hat)
  # The statistics' cotangents from every device (the transposes of the forward's psums).
  all_g, all_g_x_hat, g_mean, g_var = _summed_over_devices(
      (sum_g, sum_g_x_hat, g_mean, g_var), axis_name)
  dx = ((scale * inv_std) * (g - all_g / count - x_hat * (all_g_x_hat / count))
        + g_mean / count + (2.0 / count) * g_var * centred)
  return dx, sum_g_x_hat, sum_g


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)
