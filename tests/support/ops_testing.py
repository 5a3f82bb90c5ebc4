"""Helpers for the kernels' tests (`tests/test_ops_*.py`): the plain primitives they are
checked against, and what XLA makes of two variants of one program."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from support.tolerances import assert_close_to_rounding


def xla_conv(x, kernel, stride, padding, groups=1):
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups)


def grouped_conv(x, kernel, stride, padding):
  return xla_conv(x, kernel, stride, padding, groups=x.shape[-1])


def compiled_for_both(differentiate, chain, kernels, x):
  """{flag: `differentiate(chain)` w.r.t. (kernels, x), compiled with `chain`'s last argument
  (a switch) static}, for both values of the switch."""
  return {flag: jax.jit(differentiate(chain, argnums=(0, 1)),
                        static_argnums=2).lower(kernels, x, flag).compile()
          for flag in (False, True)}


def temporaries(compiled) -> dict:
  """{flag: bytes of temporaries XLA assigned to that program}."""
  return {flag: program.memory_analysis().temp_size_in_bytes
          for flag, program in compiled.items()}


def assert_vjp_equal(custom, plain, args, cotangent_seed=3):
  out_custom, vjp_custom = jax.vjp(custom, *args)
  out_plain, vjp_plain = jax.vjp(plain, *args)
  np.testing.assert_allclose(out_custom, out_plain, rtol=1e-5, atol=1e-5)
  g = jnp.asarray(np.random.default_rng(cotangent_seed).standard_normal(out_plain.shape),
                  jnp.float32)
  for got, want in zip(jax.jit(vjp_custom)(g), jax.jit(vjp_plain)(g)):
    assert_close_to_rounding(got, want)
