"""The hand-written gradients of `layers` equal autodiff of the plain XLA primitives."""

import re

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.models.layers import (_subpixel_conv_transpose, batch_norm_train, conv_1x1,
                                     conv_im2col, conv_late_kernel_gradient, conv_transpose,
                                     depthwise_conv_shifted, stored_once)
from ehrnet_jax.models.efficientnet import reference_padding
from support.tolerances import assert_close_to_rounding


def _xla_conv(x, kernel, stride, padding, groups=1):
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups)


def _grouped_conv(x, kernel, stride, padding):
  return _xla_conv(x, kernel, stride, padding, groups=x.shape[-1])


def _compiled_for_both(differentiate, chain, kernels, x):
  """{flag: `differentiate(chain)` w.r.t. (kernels, x), compiled with `chain`'s last argument
  (a switch) static}, for both values of the switch."""
  return {flag: jax.jit(differentiate(chain, argnums=(0, 1)),
                        static_argnums=2).lower(kernels, x, flag).compile()
          for flag in (False, True)}


def _temporaries(compiled) -> dict:
  """{flag: bytes of temporaries XLA assigned to that program}."""
  return {flag: program.memory_analysis().temp_size_in_bytes
          for flag, program in compiled.items()}


def _assert_vjp_equal(custom, plain, args, cotangent_seed=3):
  out_custom, vjp_custom = jax.vjp(custom, *args)
  out_plain, vjp_plain = jax.vjp(plain, *args)
  np.testing.assert_allclose(out_custom, out_plain, rtol=1e-5, atol=1e-5)
  g = jnp.asarray(np.random.default_rng(cotangent_seed).standard_normal(out_plain.shape),
                  jnp.float32)
  for got, want in zip(jax.jit(vjp_custom)(g), jax.jit(vjp_plain)(g)):
    assert_close_to_rounding(got, want)


# Every depthwise configuration of the backbone: k3/k5, stride 1/2, the reference's asymmetric
# padding (k3 s2: (0, 1); k5 s2: (1, 2)) and symmetric ones, on even and odd sizes.
DEPTHWISE_CASES = [
    (3, 1, reference_padding(3, 1), (2, 8, 8, 5)),
    (3, 2, reference_padding(3, 2), (2, 8, 8, 6)),
    (5, 1, reference_padding(5, 1), (2, 9, 7, 4)),
    (5, 2, reference_padding(5, 2), (2, 12, 10, 3)),
    (3, 2, reference_padding(3, 2), (1, 9, 11, 4)),  # odd sizes: uncovered last row/column
    (5, 2, reference_padding(5, 2), (1, 11, 9, 2)),
    (3, 2, ((1, 1), (1, 1)), (2, 8, 7, 3)),
    (5, 2, ((2, 2), (0, 3)), (1, 10, 10, 3)),
]


@pytest.mark.parametrize("kernel_size,stride,padding,shape", DEPTHWISE_CASES)
def test_depthwise_shifted_vjp_matches_grouped_conv(kernel_size, stride, padding, shape):
  rng = np.random.default_rng(kernel_size * 10 + stride)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 1, shape[-1])),
                       jnp.float32)
  _assert_vjp_equal(lambda x, k: depthwise_conv_shifted(x, k, stride, padding),
                    lambda x, k: _grouped_conv(x, k, stride, padding), (x, kernel))


def test_depthwise_shifted_grad_under_jit_and_in_a_network():
  """Composed with other ops (BN-like normalisation, swish) and jitted, as in MBConv."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 8)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 8)), jnp.float32)

  def net(conv):
    def f(x, k):
      y = conv(jax.nn.swish(x), k, 2, reference_padding(3, 2))
      y = (y - y.mean((0, 1, 2))) * jax.lax.rsqrt(y.var((0, 1, 2)) + 1e-5)
      return jnp.sum(jnp.sin(y))
    return jax.jit(jax.grad(f, argnums=(0, 1)))

  for got, want in zip(net(depthwise_conv_shifted)(x, kernel), net(_grouped_conv)(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride,padding,shape", [
    (4, 2, ((2, 2), (2, 2)), (2, 6, 5, 7)),   # the head's deconv (torch padding 1)
    (4, 2, ((1, 3), (3, 1)), (1, 4, 4, 3)),
    (3, 2, ((1, 2), (2, 1)), (2, 5, 6, 4)),
    (3, 1, ((1, 1), (1, 1)), (1, 5, 5, 3)),
])
def test_conv_transpose_vjp_matches_autodiff(kernel_size, stride, padding, shape):
  rng = np.random.default_rng(kernel_size + stride)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 5, shape[-1])), jnp.float32)
  plain = lambda x, k: lax.conv_transpose(x, k, (stride, stride), padding,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          transpose_kernel=True)
  for form in ("subpixel", "transpose"):
    _assert_vjp_equal(lambda x, k: conv_transpose(x, k, stride, padding, form), plain, (x, kernel))


@pytest.mark.parametrize("kernel_size,stride,padding", [
    (4, 2, ((2, 2), (2, 2))), (4, 2, ((0, 4), (3, 1))), (3, 2, ((1, 2), (2, 1))),
    (2, 2, ((1, 1), (1, 1))), (6, 3, ((2, 5), (4, 3))), (5, 3, ((4, 2), (3, 3))),
    (3, 1, ((1, 1), (0, 2)))])
def test_subpixel_conv_transpose_equals_dilated(kernel_size, stride, padding):
  rng = np.random.default_rng(kernel_size * stride)
  x = jnp.asarray(rng.standard_normal((2, 5, 7, 6)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 4, 6)), jnp.float32)
  want = lax.conv_transpose(x, kernel, (stride, stride), padding,
                            dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
  got = _subpixel_conv_transpose(x, kernel, stride, padding)
  assert got.shape == want.shape == (2, 5 * stride, 7 * stride, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_subpixel_conv_transpose_refuses_other_output_sizes():
  with pytest.raises(ValueError, match="output 2x the input"):
    _subpixel_conv_transpose(jnp.zeros((1, 4, 4, 3)), jnp.zeros((4, 4, 2, 3)), 2, ((3, 3), (3, 3)))


@pytest.mark.parametrize("shape,features", [((2, 6, 5, 7), 4), ((1, 3, 3, 16), 24)])
def test_conv_1x1_vjp_matches_autodiff(shape, features):
  rng = np.random.default_rng(shape[-1])
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((1, 1, shape[-1], features)), jnp.float32)
  plain = lambda x, k: _xla_conv(x, k, 1, ((0, 0), (0, 0)))
  for form in ("conv", "product"):
    _assert_vjp_equal(lambda x, k: conv_1x1(x, k, form), plain, (x, kernel))


def test_conv_1x1_forms_compute_the_convolution_without_differentiation():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 5, 6, 24)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((1, 1, 24, 8)), jnp.float32)
  want = _xla_conv(x, kernel, 1, ((0, 0), (0, 0)))
  for form, primitive in (("conv", "conv_general_dilated"), ("product", "dot_general")):
    np.testing.assert_allclose(jax.jit(conv_1x1, static_argnums=2)(x, kernel, form), want,
                               rtol=1e-5, atol=1e-5)
    primitives = {eqn.primitive.name for eqn in jax.make_jaxpr(
        lambda x, k, form=form: conv_1x1(x, k, form))(x, kernel).jaxpr.eqns[0].params[
            "call_jaxpr"].jaxpr.eqns}
    assert primitives & {"conv_general_dilated", "dot_general"} == {primitive}, form
  with pytest.raises(ValueError, match="unknown 1x1 convolution form 'matmul'"):
    conv_1x1(x, kernel, "matmul")


@pytest.mark.parametrize("kernel_size,stride,padding,shape", [
    (3, 2, reference_padding(3, 2), (2, 10, 8, 3)),   # the stem
    (3, 2, reference_padding(3, 2), (1, 9, 11, 3)),   # odd sizes
    (3, 1, ((1, 1), (1, 1)), (2, 6, 7, 2)),
    (5, 2, ((2, 2), (0, 3)), (1, 10, 10, 4))])
def test_conv_im2col_equals_the_convolution_with_its_gradients(kernel_size, stride, padding,
                                                               shape):
  rng = np.random.default_rng(kernel_size * stride)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, shape[-1], 5)), jnp.float32)
  plain = lambda x, k: _xla_conv(x, k, stride, padding)
  _assert_vjp_equal(lambda x, k: conv_im2col(x, k, stride, padding), plain, (x, kernel))


@pytest.mark.parametrize("stride,padding", [(1, ((1, 1), (1, 1))), (2, ((1, 1), (1, 1))),
                                            (2, ((0, 1), (0, 1)))])
def test_conv_late_kernel_gradient_is_the_convolution_and_its_gradients(stride, padding):
  rng = np.random.default_rng(stride)
  x = jnp.asarray(rng.standard_normal((2, 9, 8, 6)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 6, 5)), jnp.float32)
  plain = lambda x, k: _xla_conv(x, k, stride, padding)
  late = lambda x, k: conv_late_kernel_gradient(x, k, stride, padding)
  (y, grads), (y_late, grads_late) = (
      jax.jit(jax.value_and_grad(lambda x, k, f=f: jnp.sum(jnp.sin(f(x, k))), argnums=(0, 1)))(
          x, kernel) for f in (plain, late))
  # x / 1 is x, but the two programs are compiled apart: equal up to rounding.
  assert_close_to_rounding(y_late, y)
  for got, want in zip(grads_late, grads):
    assert_close_to_rounding(got, want)


def _conv_chain(kernels, x, late):
  """3x3 conv-ReLU layers, their kernel gradients from `conv_late_kernel_gradient` if `late`."""
  conv = conv_late_kernel_gradient if late else _xla_conv
  for kernel in kernels:
    x = jax.nn.relu(conv(x, kernel, 1, ((1, 1), (1, 1))))
  return jnp.sum(jnp.sin(x))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU scheduling effect")
def test_late_kernel_gradients_keep_no_transposed_copies_through_the_forward_pass():
  rng = np.random.default_rng(2)
  kernels = [jnp.asarray(0.2 * rng.standard_normal((3, 3, 32, 32)), jnp.float32)
             for _ in range(6)]
  x = jnp.asarray(rng.standard_normal((2, 32, 32, 32)), jnp.float32)
  # Autodiff's kernel gradients have XLA:CPU copy each layer's input to (C, H, W, B) as soon as it
  # exists and keep the copies through the forward pass (JAX 0.10.2: 3.4 vs 2.1 MiB).
  temps = _temporaries(_compiled_for_both(jax.grad, _conv_chain, kernels, x))
  assert temps[True] < 0.8 * temps[False], temps


def _plain_batch_norm_train(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  var = jnp.square(x - mean).mean(axes)
  return (x - mean) * (scale * lax.rsqrt(var + epsilon)) + bias, mean, var


@pytest.mark.parametrize("activation", [None, jax.nn.relu, jax.nn.swish])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (3, 4, 4, 16), (1, 2, 3, 1)])
def test_batch_norm_train_vjp_matches_autodiff(shape, activation):
  rng = np.random.default_rng(sum(shape))
  x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
  scale = jnp.asarray(rng.standard_normal(shape[-1:]), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(shape[-1:]), jnp.float32)

  def plain(*args):
    y, mean, var = _plain_batch_norm_train(*args, 1e-5)
    return (activation(y) if activation else y), mean, var

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
  grad = _compiled_for_both(jax.grad, _swish_chain, kernels, x)
  for got, want in zip(jax.tree.leaves(grad[True](kernels, x)),
                       jax.tree.leaves(grad[False](kernels, x))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Per layer, autodiff of the composition keeps the swish's sigmoid and output next to the BN
  # input; inside, the sigmoid is recomputed (XLA:CPU, JAX 0.10.2: 6 layers of 256 KiB arrays,
  # 4.3 vs 3.0 MiB of temporaries).
  temps = _temporaries(grad)
  assert temps[True] < 0.8 * temps[False], temps


def _residual_chain(kernels, x, store):
  """A residual stream of conv-BN-ReLU blocks, `stored_once` at each block's end if `store`."""
  for kernel in kernels:
    y = _xla_conv(x, kernel, 1, ((1, 1), (1, 1)))
    y, _, _ = batch_norm_train(y, jnp.ones(y.shape[-1]), jnp.zeros(y.shape[-1]), 1e-5, None)
    x = jax.nn.relu(y + x)
    x = stored_once(x, train=store)
  return jnp.sum(jnp.sin(x))


def _widest_loop_fusion(hlo: str) -> int:
  """The most operands any elementwise (loop) fusion of a compiled program reads."""
  return max(f.count("%") for f in re.findall(r"= \S+ fusion\((.*?)\), kind=kLoop", hlo))


def test_stored_once_keeps_values_and_gradients_and_stops_the_recomputed_chain():
  rng = np.random.default_rng(0)
  kernels = [jnp.asarray(0.2 * rng.standard_normal((3, 3, 4, 4)), jnp.float32) for _ in range(6)]
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
  grad = _compiled_for_both(jax.value_and_grad, _residual_chain, kernels, x)
  (value, grads), (value_stored, grads_stored) = (grad[s](kernels, x) for s in (False, True))
  # x / 1 is x, but the two programs are compiled apart: equal up to rounding (the value, a sum
  # of 512 terms of ~0.4, differed in its last bits between AVX-512 and AVX2 code).
  assert_close_to_rounding(value_stored, value)
  for got, want in zip(jax.tree.leaves(grads_stored), jax.tree.leaves(grads)):
    assert_close_to_rounding(got, want)
  assert stored_once(x, train=False) is x
  if jax.default_backend() == "cpu":
    # Without it, XLA:CPU recomputes the stream from every earlier block's convolution output
    # inside each consumer (6 blocks: a fusion reading 19 arrays, JAX 0.10.2); with it, only
    # from the block's own (6).
    assert _widest_loop_fusion(grad[False].as_text()) >= 15
    assert _widest_loop_fusion(grad[True].as_text()) <= 8
