"""Building blocks shared by the backbone, the high-resolution network and the head."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Padding = tuple[tuple[int, int], tuple[int, int]]

# The reference's initialisation: kaiming-normal (fan_out) in the backbone, N(0, 0.001) for the
# high-resolution network and head (HigherHRNet's `init_weights`), zero biases.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
small_normal = nn.initializers.normal(stddev=0.001)


class BatchNorm(nn.Module):
  """Batch normalisation with PyTorch's semantics, over the last (channel) axis.

  Training normalises with the biased batch variance and updates the running statistics with
  weight `momentum` (PyTorch's convention: 0.1) using the unbiased variance; evaluation uses the
  running statistics. Statistics are kept and computed in float32 whatever the compute dtype.
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

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train:
      multiplier, offset = self.affine()
      return x * multiplier.astype(self.dtype) + offset.astype(self.dtype)
    x32 = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = x32.mean(axes)
    var = jnp.square(x32 - mean).mean(axes)
    if not self.is_initializing():
      count = x.size // self.features
      self.mean.value += self.momentum * (mean - self.mean.value)
      self.var.value += self.momentum * (var * count / max(count - 1, 1) - self.var.value)
    y = (x32 - mean) * (self.scale * jax.lax.rsqrt(var + self.epsilon)) + self.bias
    return y.astype(self.dtype)

  def affine(self) -> tuple[jax.Array, jax.Array]:
    """Evaluation-mode BN as `x * multiplier + offset` (float32, per channel)."""
    multiplier = self.scale * jax.lax.rsqrt(self.var.value + self.epsilon)
    return multiplier, self.bias - self.mean.value * multiplier


def symmetric_padding(kernel_size: int) -> Padding:
  pad = (kernel_size - 1) // 2
  return ((pad, pad), (pad, pad))


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int,
                           padding: Padding) -> jax.Array:
  """Depthwise convolution as a sum of k*k strided slices times per-channel weights.

  x: (B, H, W, C); kernel: (k, k, 1, C). Same result as a grouped convolution; XLA fuses it into
  one loop, which on CPU runs 20-80x faster than its grouped-convolution kernel.
  """
  k = kernel.shape[0]
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  out_h = (x.shape[1] - k) // stride + 1
  out_w = (x.shape[2] - k) // stride + 1
  out = None
  for dy in range(k):
    for dx in range(k):
      window = jax.lax.slice(
          x, (0, dy, dx, 0),
          (x.shape[0], dy + (out_h - 1) * stride + 1, dx + (out_w - 1) * stride + 1, x.shape[3]),
          (1, stride, stride, 1))
      term = window * kernel[dy, dx, 0]
      out = term if out is None else out + term
  return out


class Conv(nn.Module):
  """2-D convolution (NHWC, kernel (k, k, C_in/groups, C_out), explicit padding) whose output can
  be rescaled per channel by folding the scale into the kernel and bias (used to fold BN).

  Depthwise convs (groups == C_in == C_out) have two implementations, `depthwise`: "conv"
  (XLA's grouped convolution: best on GPU/TPU and for export), "shifted"
  (`depthwise_conv_shifted`: best on CPU) or "auto" (shifted on CPU, conv elsewhere).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: Padding | None = None  # default: symmetric (k-1)//2
  groups: int = 1
  use_bias: bool = False
  kernel_init: Any = small_normal
  depthwise: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, output_scale: jax.Array | None = None) -> jax.Array:
    in_features = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size,
                                                     in_features // self.groups, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
    if output_scale is not None:
      kernel = kernel * output_scale
      bias = bias * output_scale if bias is not None else None
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    padding = self.padding if self.padding is not None else symmetric_padding(self.kernel_size)
    if self._implementation(in_features) == "shifted":
      y = depthwise_conv_shifted(x, kernel, self.stride, padding)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, (self.stride, self.stride), padding,
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    return y + bias.astype(self.dtype) if bias is not None else y

  def _implementation(self, in_features: int) -> str:
    if self.depthwise not in ("auto", "shifted", "conv"):
      raise ValueError(f"unknown depthwise implementation {self.depthwise!r}")
    if not self.groups == in_features == self.features > 1 or self.depthwise == "conv":
      return "conv"
    if self.depthwise == "auto" and jax.default_backend() != "cpu":
      return "conv"
    return "shifted"


class ConvBN(nn.Module):
  """Convolution, batch norm, optional activation. In evaluation the BN is folded into the
  convolution's kernel and bias (one pass over the output instead of two)."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: Padding | None = None  # default: symmetric (k-1)//2
  groups: int = 1
  use_bias: bool = False
  activation: Any = None
  kernel_init: Any = small_normal
  depthwise: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = Conv(self.features, self.kernel_size, self.stride, self.padding, self.groups,
                self.use_bias, self.kernel_init, self.depthwise, self.dtype, name="conv")
    bn = BatchNorm(self.features, dtype=self.dtype, name="bn")
    if train:
      y = bn(conv(x), train=True)
    else:
      multiplier, offset = bn.affine()
      y = conv(x, output_scale=multiplier) + offset.astype(self.dtype)
    return self.activation(y) if self.activation is not None else y


class BasicBlock(nn.Module):
  """ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, identity shortcut, ReLU."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = ConvBN(self.features, 3, activation=nn.relu, dtype=self.dtype, name="conv1")(x, train)
    y = ConvBN(self.features, 3, dtype=self.dtype, name="conv2")(y, train)
    return nn.relu(y + x)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """Nearest-neighbour upsampling of NHWC maps by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
