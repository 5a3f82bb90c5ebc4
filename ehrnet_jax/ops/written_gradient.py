"""Convolution-like functions with a hand-written VJP and static stride and padding."""

from typing import Callable

import jax

Padding = tuple[tuple[int, int], tuple[int, int]]


def with_written_gradient(primal: Callable, backward: Callable) -> Callable:
  """`primal(x, kernel, stride, padding)` whose VJP is `backward(stride, padding, (x, kernel), g)`
  (stride and padding static: made plain ints and tuples here, so that they hash). `primal` may
  have further parameters with defaults (`conv.conv`'s `groups`): they keep them."""
  def call(x, kernel, stride, padding):
    return primal(x, kernel, stride, padding)

  fn = jax.custom_vjp(call, nondiff_argnums=(2, 3))
  fn.defvjp(lambda x, kernel, stride, padding: (call(x, kernel, stride, padding), (x, kernel)),
            backward)
  return lambda x, kernel, stride, padding: fn(
      x, kernel, int(stride), tuple(tuple(int(p) for p in pair) for pair in padding))
