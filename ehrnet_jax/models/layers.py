"""Building blocks shared by the backbone, the high-resolution network and the head."""

import functools
from typing import Any, Callable

from flax import traverse_util
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

Dtype = Any
Activation = Callable[[jax.Array], jax.Array] | None
Padding = tuple[tuple[int, int], tuple[int, int]]

# Dense convolutions with at most this many input channels train as `conv_im2col` on CPU.
IM2COL_MAX_INPUTS = 4

# The reference's initialisation: kaiming-normal (fan_out) in the backbone, N(0, 0.001) for the
# high-resolution network and head (HigherHRNet's `init_weights`), zero biases.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
small_normal = nn.initializers.normal(stddev=0.001)


class BatchNorm(nn.Module):
  """Batch normalisation with PyTorch's semantics, over the last (channel) axis.

  Training normalises with the biased batch variance and updates the running statistics with
  weight `momentum` (PyTorch's convention: 0.1) using the unbiased variance; evaluation uses the
  running statistics. Statistics are kept and computed in float32 whatever the compute dtype.
  Inputs may carry zero channels beyond `features` (see `Conv.align`); they stay zero.
  `activation` (optional) is applied to the normalised values (in float32 in training, see
  `batch_norm_train`).
  """
  features: int
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  def setup(self):
    self.scale = self.param("scale", nn.initializers.ones, (self.features,))
    self.bias = self.param("bias", nn.initializers.zeros, (self.features,))
    self.mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,))
    self.var = self.variable("batch_stats", "var", jnp.ones, (self.features,))

  def __call__(self, x: jax.Array, train: bool, activation: Activation = None) -> jax.Array:
    width = x.shape[-1]
    if not train:
      multiplier, offset = self.affine()
      y = (x * pad_channels(multiplier, width).astype(self.dtype)
           + pad_channels(offset, width).astype(self.dtype))
      return activation(y) if activation is not None else y
    y, mean, var = batch_norm_train(x.astype(jnp.float32), pad_channels(self.scale, width),
                                    pad_channels(self.bias, width), self.epsilon, activation)
    if not self.is_initializing():
      count = x.size // width
      unbiased = var[:self.features] * count / max(count - 1, 1)
      self.mean.value += self.momentum * (mean[:self.features] - self.mean.value)
      self.var.value += self.momentum * (unbiased - self.var.value)
    return y.astype(self.dtype)

  def affine(self) -> tuple[jax.Array, jax.Array]:
    """Evaluation-mode BN as `x * multiplier + offset` (float32, per channel)."""
    return batch_norm_affine(self.scale, self.bias, self.mean.value, self.var.value,
                             self.epsilon)


def batch_norm_affine(scale: jax.Array, bias: jax.Array, mean: jax.Array, var: jax.Array,
                      epsilon: float = BatchNorm.epsilon) -> tuple[jax.Array, jax.Array]:
  """Evaluation-mode BN with these parameters and running statistics as `x * multiplier +
  offset`, per channel."""
  multiplier = scale * lax.rsqrt(var + epsilon)
  return multiplier, bias - mean * multiplier


def channel_sums(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Sums over every axis but the last (channels) of same-shaped arrays, in one pass.

  One variadic reduction over the second-to-last axis, then a small sum over the rest: XLA:CPU
  runs this 3-10x faster than `x.sum(axis=(0, 1, 2))`, which it emits as a slow column reduction.
  """
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  rows = lax.reduce(arrays, zeros, lambda a, b: tuple(p + q for p, q in zip(a, b)),
                    (arrays[0].ndim - 2,))
  return tuple(r.reshape(-1, r.shape[-1]).sum(0) for r in rows)


def _opaque_one(x: jax.Array) -> jax.Array:
  """A scalar 1 that XLA cannot take for a constant: the sign of 1 + |x[0]| (NaN if x[0] is).

  Dividing by it changes no number but makes a new value, which XLA neither folds away nor
  merges (CSE) with the same expression of `x` elsewhere, and which exists only once `x` does.
  """
  return jnp.sign(jnp.abs(x.reshape(-1)[0]) + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     activation: Activation) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode batch norm over the last axis, then `activation` (None: the identity):
  `(activation(y), mean, biased variance)`, all float32.

  The gradient is written out (`dx = scale * r * (g - mean(g) - xhat * mean(g * xhat))` plus the
  terms of the mean and variance outputs) with one-pass channel sums; autodiff's version runs
  more passes and XLA:CPU's slow column reductions (1.5x slower for a BN's forward + backward).
  Only `x` and the per-channel statistics are kept for it: the backward pass recomputes the
  normalised values and takes the activation's derivative there, where autodiff of the
  composition would store the activation's own residuals (for swish its sigmoid and its output,
  two more arrays of the layer's size each).
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
    y = _normalise(x / _opaque_one(x), scale, bias, mean, inv_std)
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


def aligned(features: int, align: int) -> int:
  """`features` rounded up to a multiple of `align`."""
  return -(-features // align) * align


def pad_channels(x: jax.Array, width: int) -> jax.Array:
  """Zero-pads the last axis of `x` to `width`."""
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])


def symmetric_padding(kernel_size: int) -> Padding:
  pad = (kernel_size - 1) // 2
  return ((pad, pad), (pad, pad))


def _windows(x: jax.Array, kernel_size: int, stride: int, out_h: int, out_w: int):
  """The k*k strided (B, out_h, out_w, C) windows of the padded `x`, taps in raster order."""
  for dy in range(kernel_size):
    for dx in range(kernel_size):
      yield lax.slice(
          x, (0, dy, dx, 0),
          (x.shape[0], dy + (out_h - 1) * stride + 1, dx + (out_w - 1) * stride + 1, x.shape[3]),
          (1, stride, stride, 1))


def _conv_windows(x: jax.Array, kernel_size: int, stride: int, padding: Padding):
  """The k*k windows a k x k convolution of this stride and padding reads from `x`, each
  (B, H', W', C), taps in raster order."""
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  out_h = (x.shape[1] - kernel_size) // stride + 1
  out_w = (x.shape[2] - kernel_size) // stride + 1
  return _windows(x, kernel_size, stride, out_h, out_w)


def _depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int,
                       padding: Padding) -> jax.Array:
  k = kernel.shape[0]
  out = None
  for tap, window in enumerate(_conv_windows(x, k, stride, padding)):
    term = window * kernel[tap // k, tap % k, 0]
    out = term if out is None else out + term
  return out


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int,
                           padding: Padding) -> jax.Array:
  """Depthwise convolution as a sum of k*k strided slices times per-channel weights.

  x: (B, H, W, C); kernel: (k, k, 1, C). Same result as a grouped convolution; XLA fuses it into
  one loop, which on CPU runs 20-80x faster than its grouped-convolution kernel.

  Its gradient is written out (`_depthwise_shifted_bwd`) rather than left to autodiff, which
  would keep each of the k*k windows as a separate residual (k*k copies of the activations,
  each recomputing the fused producers) and reduce the kernel gradient tap by tap with XLA:CPU's
  slow column reductions: 2-3x less CPU time for the layer's forward + backward (BENCHMARKS.md).
  """
  return _depthwise_shifted_vjp(x, kernel, stride, padding)


def _with_written_gradient(primal, backward):
  """`primal(x, kernel, stride, padding)` whose VJP is `backward(stride, padding, (x, kernel), g)`
  (stride and padding static: made plain ints and tuples here, so that they hash). `primal` may
  have further parameters with defaults (`_plain_conv`'s `groups`): they keep them."""
  def call(x, kernel, stride, padding):
    return primal(x, kernel, stride, padding)

  fn = jax.custom_vjp(call, nondiff_argnums=(2, 3))
  fn.defvjp(lambda x, kernel, stride, padding: (call(x, kernel, stride, padding), (x, kernel)),
            backward)
  return lambda x, kernel, stride, padding: fn(
      x, kernel, int(stride), tuple(tuple(int(p) for p in pair) for pair in padding))


def _depthwise_shifted_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  # Input gradient: the depthwise conv of the (stride-dilated) output gradient with the flipped
  # kernel, padded so that it comes out at the input's size.
  pads = [(0, 0, 0)]
  for axis in (1, 2):
    low, high = padding[axis - 1]
    rest = (x.shape[axis] + low + high - k) % stride
    pads.append((k - 1 - low, k - 1 - high + rest, stride - 1))
  g_dilated = lax.pad(g, jnp.zeros((), g.dtype), pads + [(0, 0, 0)])
  dx = _depthwise_shifted(g_dilated, kernel[::-1, ::-1], 1, ((0, 0), (0, 0)))
  # Kernel gradient: per tap, the sum over (B, H', W') of window * g, all k*k taps in one pass
  # over x and g (`channel_sums`).
  windows = _conv_windows(x, k, stride, padding)                     # each shaped like g
  dk = jnp.stack(channel_sums(*((w * g).astype(jnp.float32) for w in windows)))  # (k*k, C)
  return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_shifted_vjp = _with_written_gradient(_depthwise_shifted, _depthwise_shifted_bwd)


def _plain_conv(x, kernel, stride, padding, groups=1):
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups)


def conv_late_kernel_gradient(x: jax.Array, kernel: jax.Array, stride: int,
                              padding: Padding) -> jax.Array:
  """`_plain_conv` (dense) whose kernel gradient reads its input only once the output gradient
  exists.

  For training on CPU. XLA:CPU computes a convolution's kernel gradient from copies of its input
  and output gradient transposed to (C, H, W, B), and its scheduler makes the input's copy as soon
  as the input exists, in the forward pass, so every layer's copy is kept alive next to its input
  until the backward pass reaches it (H0 trained: ~300 such copies, 0.44 GB of the step's peak).
  Here the kernel gradient reads `x / 1` with a one computed from the output gradient (see
  `_opaque_one`): the same numbers, but the copy can only be made in the backward pass, just
  before it is used. The input gradient is autodiff's.
  """
  return _late_kernel_gradient_vjp(x, kernel, stride, padding)


def _late_kernel_gradient_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  dx, = jax.vjp(lambda x: _plain_conv(x, kernel, stride, padding), x)[1](g)
  x_late = x / _opaque_one(g)
  dk, = jax.vjp(lambda k: _plain_conv(x_late, k, stride, padding), kernel)[1](g)
  return dx, dk


_late_kernel_gradient_vjp = _with_written_gradient(_plain_conv, _late_kernel_gradient_bwd)


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """Dense convolution as one matrix product of the k*k strided windows of `x`, concatenated
  (B, H', W', k*k*C_in), with the kernel reshaped to (k*k*C_in, C_out).

  For convolutions of very few input channels (the stem's 3x3 stride-2 conv on RGB) in training:
  XLA:CPU's training programs give convolutions to YNNPACK, which runs this one at ~5 GFLOP/s
  (80 ms of the H-4 frozen-backbone step); the product takes half that (step 1.41 -> 1.32 s).
  Same numbers as `_plain_conv` up to float rounding; autodiff makes the kernel gradient the
  transposed product.
  """
  windows = jnp.concatenate(list(_conv_windows(x, kernel.shape[0], stride, padding)), axis=-1)
  return jnp.dot(windows, kernel.reshape(-1, kernel.shape[-1]),
                 preferred_element_type=jnp.float32).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_1x1(x: jax.Array, kernel: jax.Array, form: str = "conv") -> jax.Array:
  """1x1 convolution (stride 1, no padding; kernel (1, 1, C_in, C_out)) that trains as matrix
  products.

  Under differentiation the forward and both gradients are matrix products of the (B*H*W, C)
  activations: XLA:CPU runs the 1x1 convolution up to 6x slower than the same product when
  C_in > C_out, autodiff's kernel gradient (a convolution with an input-sized window, plus
  transposes) up to 18x slower than `x^T g`, and its input gradient up to 6x slower than `g W^T`
  (BENCHMARKS.md, "Training"). Undifferentiated, `form` says what runs: "conv" (XLA's
  convolution: what inference and exporters see) or "product" (the matrix product, also faster
  undifferentiated: the frozen backbone's forward in training on CPU).
  """
  if form == "product":
    return _product_1x1(x, kernel)
  if form != "conv":
    raise ValueError(f"unknown 1x1 convolution form {form!r}")
  return _plain_conv(x, kernel, 1, ((0, 0), (0, 0)))


def _product_1x1(x, kernel):
  rows = x.reshape(-1, x.shape[-1])
  y = jnp.dot(rows, kernel[0, 0], preferred_element_type=jnp.float32).astype(x.dtype)
  return y.reshape(x.shape[:-1] + kernel.shape[-1:])


def _conv_1x1_fwd(x, kernel, form):
  del form  # differentiated: always the product
  return _product_1x1(x, kernel), (x, kernel)


def _conv_1x1_bwd(form, residuals, g):
  del form
  x, kernel = residuals
  rows, g_rows = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  dx = jnp.dot(g_rows, kernel[0, 0].T, preferred_element_type=jnp.float32).astype(x.dtype)
  d_kernel = jnp.dot(rows.T, g_rows, preferred_element_type=jnp.float32)
  return dx.reshape(x.shape), d_kernel.reshape(kernel.shape).astype(kernel.dtype)


conv_1x1.defvjp(_conv_1x1_fwd, _conv_1x1_bwd)


class Conv(nn.Module):
  """2-D convolution (NHWC, kernel (k, k, C_in/groups, C_out), explicit padding) whose output can
  be rescaled per channel by folding the scale into the kernel and bias (used to fold BN).

  Channel alignment: with `align` > 1 the output carries zero channels up to a multiple of
  `align`, and the input may carry such zero channels beyond `in_features`. Parameters keep
  their true shapes (zeros are added on the fly), the numbers are unchanged, and XLA's CPU
  convolutions run 1.2-1.7x faster on widths such as 16/32 than on 14/27.

  Depthwise convs (groups == C_in == C_out) have two implementations, `depthwise`: "conv"
  (XLA's grouped convolution: best on GPU/TPU and for export), "shifted"
  (`depthwise_conv_shifted`: best on CPU) or "auto" (shifted on CPU, conv elsewhere).
  Called with `train=True` on CPU, 1x1 convs run as matrix products (`conv_1x1`, also where
  they are not differentiated: a frozen backbone), other dense convs of at most
  `IM2COL_MAX_INPUTS` input channels as `conv_im2col`, the rest as `conv_late_kernel_gradient`
  (evaluation and exports keep the plain convolution).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: Padding | None = None  # default: symmetric (k-1)//2
  groups: int = 1
  use_bias: bool = False
  kernel_init: Any = small_normal
  depthwise: str = "auto"
  in_features: int | None = None  # true input channels when the input carries zero channels
  align: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, output_scale: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    in_features = self.in_features or x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size,
                                                     in_features // self.groups, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
    if output_scale is not None:
      kernel = kernel * output_scale
      bias = bias * output_scale if bias is not None else None
    if x.shape[-1] != in_features or self.align > 1:
      if self.groups != 1:
        raise ValueError("channel alignment applies to dense convolutions only")
      out_width = aligned(self.features, self.align)
      kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, x.shape[-1] - in_features),
                                (0, out_width - self.features)))
      bias = pad_channels(bias, out_width) if bias is not None else None
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    padding = self.padding if self.padding is not None else symmetric_padding(self.kernel_size)
    train_on_cpu = train and jax.default_backend() == "cpu"
    if self._implementation(in_features) == "shifted":
      y = depthwise_conv_shifted(x, kernel, self.stride, padding)
    elif (self.kernel_size == 1 and self.stride == 1 and self.groups == 1
          and all(p == 0 for pair in padding for p in pair)):
      y = conv_1x1(x, kernel, "product" if train_on_cpu else "conv")
    elif train_on_cpu and self.groups == 1:
      y = (conv_im2col if x.shape[-1] <= IM2COL_MAX_INPUTS else conv_late_kernel_gradient)(
          x, kernel, self.stride, padding)
    else:
      y = _plain_conv(x, kernel, self.stride, padding, self.groups)
    return y + bias.astype(self.dtype) if bias is not None else y

  def _implementation(self, in_features: int) -> str:
    if self.depthwise not in ("auto", "shifted", "conv"):
      raise ValueError(f"unknown depthwise implementation {self.depthwise!r}")
    if not self.groups == in_features == self.features > 1 or self.depthwise == "conv":
      return "conv"
    if self.depthwise == "auto" and jax.default_backend() != "cpu":
      return "conv"
    return "shifted"


def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                   form: str = "auto") -> jax.Array:
  """`lax.conv_transpose(x, kernel, (stride, stride), padding, transpose_kernel=True)`, NHWC with
  the kernel (k, k, C_out, C_in), with a hand-written kernel gradient.

  `form`: "transpose" (the plain primitive: exports, where ONNX and TensorRT run ConvTranspose
  natively, and counting), "subpixel" (`_subpixel_conv_transpose`: one ordinary convolution on the
  undilated input, 4x faster on XLA:CPU) or "auto" (sub-pixel on CPU, plain elsewhere).

  Autodiff turns the kernel gradient into an XLA convolution with an input-sized window and
  dilated kernel, which XLA:CPU runs on its slow generic path (13% of the whole H-4 training
  step); here it is one matrix product of the input with the k*k strided slices of the output
  gradient. The input gradient stays XLA's (a strided convolution). Same numbers.
  """
  if form not in ("auto", "subpixel", "transpose"):
    raise ValueError(f"unknown transposed-convolution form {form!r}")
  if form == "subpixel" or (form == "auto" and jax.default_backend() == "cpu"):
    return _subpixel_conv_transpose_vjp(x, kernel, stride, padding)
  return _conv_transpose_vjp(x, kernel, stride, padding)


def _conv_transpose(x, kernel, stride, padding):
  return lax.conv_transpose(x, kernel, (stride, stride), padding,
                            dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)


def _subpixel_conv_transpose(x, kernel, stride, padding):
  """`_conv_transpose` for outputs exactly `stride` times the input, without the zeros.

  The transposed convolution correlates the input dilated by `stride` (and padded by `low`)
  with rhs[a] = kernel[k - 1 - a] (I and O swapped): y[s*m + p] = sum_a xd[s*m + p + a - low]
  rhs[a], where only the taps with a = low - p (mod s) meet an input sample, x[m + d] with
  d = (p + a - low) / s. So every output phase p is a small correlation of the undilated input
  over a window of ceil(k / s) samples starting at its own offset: all s*s phases are one
  convolution with that window and s*s*C_out output channels, each phase read from its offset,
  then interleaved (depth-to-space). For the head's k=4, s=2: a 2x2 window, 1/4 of the dilated
  form's multiplies. XLA:CPU, H0's head deconvolution at batch 1: 31 ms dilated, 13.5 ms as one
  3x3 window over all phases, 7.4 ms as this 2x2 one.
  """
  k, s = kernel.shape[0], stride
  batch, height, width, _ = x.shape
  lows = [low for low, _ in padding]
  if any(low + high != k + s - 2 for low, high in padding):
    raise ValueError(f"sub-pixel transposed convolution needs an output {s}x the input; "
                     f"got kernel {k}, stride {s}, padding {padding}")
  rhs = kernel[::-1, ::-1].transpose(0, 1, 3, 2)                     # (k, k, C_in, C_out)
  # tap[axis][p][d]: the kernel index a feeding output phase p from input offset d.
  tap = [[{(p + a - low) // s: a for a in range((low - p) % s, k, s)} for p in range(s)]
         for low in lows]
  start = [[min(phase) for phase in axis] for axis in tap]          # first offset of each phase
  window = -(-k // s)
  pad = [-min(axis) for axis in start]
  zeros = jnp.zeros(rhs.shape[2:], rhs.dtype)

  def weight(d, e, p, q):  # (C_in, C_out) at window position (d, e) for output phase (p, q)
    a, b = tap[0][p].get(start[0][p] + d), tap[1][q].get(start[1][q] + e)
    return zeros if a is None or b is None else rhs[a, b]

  phases = jnp.stack([jnp.stack([jnp.concatenate([weight(d, e, p, q) for p in range(s)
                                                  for q in range(s)], axis=-1)
                                 for e in range(window)]) for d in range(window)])
  # Position j of the convolution's output is the window starting at input offset j - pad.
  y = _plain_conv(x, phases, 1, [(pad[i], max(start[i]) + window - 1) for i in (0, 1)])
  y = y.reshape(*y.shape[:3], s * s, -1)                            # (B, H', W', s*s, C_out)
  rows = [jnp.stack([y[:, start[0][p] + pad[0]:start[0][p] + pad[0] + height,
                       start[1][q] + pad[1]:start[1][q] + pad[1] + width, p * s + q]
                     for q in range(s)], axis=3) for p in range(s)]  # s x (B, H, W, s, C_out)
  y = jnp.stack(rows, axis=2)                                        # (B, H, s, W, s, C_out)
  return y.reshape(batch, s * height, s * width, y.shape[-1])


def _conv_transpose_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  _, vjp_x = jax.vjp(lambda x: _conv_transpose(x, kernel, stride, padding), x)
  dx, = vjp_x(g)
  # y[u] = sum_a xd[u + a] rhs[a], with xd the input dilated by `stride` and padded by `padding`
  # and rhs[a] = kernel[k - 1 - a] (I and O swapped), so
  # d rhs[a] = sum_m x[m] g[stride * m + low - a].
  slices, pads = [], [(0, 0)]
  for axis in (1, 2):
    low = padding[axis - 1][0]
    before = max(0, k - 1 - low)
    after = max(0, stride * (x.shape[axis] - 1) + low - (g.shape[axis] - 1))
    pads.append((before, after))
  g_padded = jnp.pad(g, pads + [(0, 0)])
  for a in range(k):
    for c in range(k):
      start_h = padding[0][0] - a + pads[1][0]
      start_w = padding[1][0] - c + pads[2][0]
      slices.append(lax.slice(
          g_padded, (0, start_h, start_w, 0),
          (g.shape[0], start_h + stride * (x.shape[1] - 1) + 1,
           start_w + stride * (x.shape[2] - 1) + 1, g.shape[3]), (1, stride, stride, 1)))
  stacked = jnp.stack(slices, axis=3)                                # (B, H, W, k*k, C_out)
  d_rhs = jnp.einsum("bhwi,bhwto->tio", x, stacked,
                     preferred_element_type=jnp.float32)             # (k*k, C_in, C_out)
  d_kernel = d_rhs.reshape(k, k, x.shape[-1], g.shape[-1])[::-1, ::-1].transpose(0, 1, 3, 2)
  return dx, d_kernel.astype(kernel.dtype)


_conv_transpose_vjp = _with_written_gradient(_conv_transpose, _conv_transpose_bwd)
_subpixel_conv_transpose_vjp = _with_written_gradient(_subpixel_conv_transpose,
                                                      _conv_transpose_bwd)


class ConvTranspose(nn.Module):
  """Transposed convolution (no bias) with PyTorch's kernel layout and padding convention.

  kernel (k, k, C_out, C_in), i.e. torch's (C_in, C_out, k, k) transposed (2, 3, 1, 0); with
  `padding` p_t, equals `torch.nn.ConvTranspose2d(k, stride, p_t)` for `padding = k - 1 - p_t`.
  `form` as in `conv_transpose`.
  """
  features: int
  kernel_size: int
  stride: int
  padding: Padding
  kernel_init: Any = small_normal
  form: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size,
                                                     self.features, x.shape[-1]))
    return conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                          self.padding, self.form)


class ConvBN(nn.Module):
  """Convolution, batch norm, optional activation. In evaluation the BN is folded into the
  convolution's kernel and bias (one pass over the output instead of two). `in_features` and
  `align` as in `Conv`.

  `folded_bn=True` takes that fold from the variables instead (`fold_batch_norm`: the kernel
  already scaled, a bias, no BN), so that it is done once rather than on every call; evaluation
  only."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: Padding | None = None  # default: symmetric (k-1)//2
  groups: int = 1
  use_bias: bool = False
  activation: Any = None
  kernel_init: Any = small_normal
  depthwise: str = "auto"
  in_features: int | None = None
  align: int = 1
  folded_bn: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = Conv(self.features, self.kernel_size, self.stride, self.padding, self.groups,
                self.use_bias or self.folded_bn, self.kernel_init, self.depthwise,
                self.in_features, self.align, self.dtype, name="conv")
    bn = BatchNorm(self.features, dtype=self.dtype, name="bn")
    if self.folded_bn:
      if train:
        raise ValueError("folded batch norm (folded_bn=True) is for evaluation only")
      y = conv(x)
    elif train:
      return bn(conv(x, train=True), train=True, activation=self.activation)
    else:
      multiplier, offset = bn.affine()
      y = conv(x, output_scale=multiplier)
      y = y + pad_channels(offset, y.shape[-1]).astype(self.dtype)
    return self.activation(y) if self.activation is not None else y


def stored_once(x: jax.Array, train: bool) -> jax.Array:
  """`x` itself; in training on CPU, XLA computes it (and its gradient) once and stores it.

  For the ends of residual blocks. XLA:CPU's fusion copies cheap elementwise producers into
  every consumer, so a residual stream `x_n = relu(bn(conv) + x_{n-1})` that feeds a convolution,
  the next sum and the backward pass is recomputed inside each consumer from all earlier blocks'
  convolution outputs and statistics, and its gradient likewise: H0's kernel-gradient transposes
  read up to 17 convolution outputs with their statistics each (a fifth of the frozen-backbone
  training step). Its inference fusions read up to 17 levels too (34 inputs), without a
  measurable cost, so evaluation and exported graphs are left as they are. A float division is
  one of the operations that XLA's fusion never duplicates, so `x` is divided by
  `_opaque_one(x)` (x / 1 == x exactly, NaN stays NaN), and the gradient on the way back too.
  """
  if not train or jax.default_backend() != "cpu":
    return x
  return _divide_by_one(x, _opaque_one(lax.stop_gradient(x)))


@jax.custom_vjp
def _divide_by_one(x: jax.Array, one: jax.Array) -> jax.Array:
  return x / one


_divide_by_one.defvjp(lambda x, one: (x / one, one),
                      lambda one, g: (g / one, jnp.zeros_like(one)))


class BasicBlock(nn.Module):
  """ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, identity shortcut, ReLU.

  The input carries `aligned(features, align)` channels (zeros beyond `features`)."""
  features: int
  align: int = 1
  folded_bn: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda name, activation=None: ConvBN(
        self.features, 3, activation=activation, in_features=self.features, align=self.align,
        folded_bn=self.folded_bn, dtype=self.dtype, name=name)
    y = conv("conv1", nn.relu)(x, train)
    y = conv("conv2")(y, train)
    return stored_once(nn.relu(y + x), train)


def fold_batch_norm(variables: dict[str, Any]) -> dict[str, Any]:
  """Eval-mode variables for a model built with `folded_bn=True`: every `ConvBN`'s batch norm
  folded into its convolution (kernel scaled per output channel, bias `bias * multiplier +
  offset`) and dropped from `params` and `batch_stats`; other variables are kept as they are."""
  params = traverse_util.flatten_dict(variables["params"])
  stats = traverse_util.flatten_dict(variables["batch_stats"])
  for layer in [path[:-2] for path in params if path[-2:] == ("bn", "scale")]:
    multiplier, offset = batch_norm_affine(
        params.pop(layer + ("bn", "scale")), params.pop(layer + ("bn", "bias")),
        stats.pop(layer + ("bn", "mean")), stats.pop(layer + ("bn", "var")))
    kernel, bias = layer + ("conv", "kernel"), layer + ("conv", "bias")
    params[kernel] = params[kernel] * multiplier
    params[bias] = params[bias] * multiplier + offset if bias in params else offset
  return {**variables, "params": traverse_util.unflatten_dict(params),
          "batch_stats": traverse_util.unflatten_dict(stats)}


UPSAMPLE_FORMS = ("repeat", "resize")


def upsample_nearest(x: jax.Array, factor: int, form: str = "repeat") -> jax.Array:
  """Nearest-neighbour upsampling of NHWC maps by an integer factor.

  `form`: "repeat" (`jnp.repeat` on both axes: training and inference) or "resize"
  (`jax.image.resize(method="nearest")`, the same copies: exporters write it as one ONNX Resize
  where the repeats become Reshape + Expand chains; it needs a static batch to trace).
  """
  if form == "resize":
    batch, height, width, channels = x.shape
    return jax.image.resize(x, (batch, height * factor, width * factor, channels), "nearest")
  if form != "repeat":
    raise ValueError(f"unknown upsampling form {form!r}; expected one of {UPSAMPLE_FORMS}")
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
