"""Building blocks shared by the backbone, the high-resolution network and the head."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

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
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
    if train:
      x32 = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = x32.mean(axes)
      var = jnp.square(x32 - mean).mean(axes)
      if not self.is_initializing():
        count = x.size // features
        unbiased = var * count / max(count - 1, 1)
        running_mean.value += self.momentum * (mean - running_mean.value)
        running_var.value += self.momentum * (unbiased - running_var.value)
    else:
      mean, var = running_mean.value, running_var.value
    # Folded into one multiply-add, as PyTorch's CPU inference kernel does.
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    offset = bias - mean * multiplier
    return x * multiplier.astype(self.dtype) + offset.astype(self.dtype)


def symmetric_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  pad = (kernel_size - 1) // 2
  return ((pad, pad), (pad, pad))


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int,
                           padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
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


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution without bias; kernel (k, k, 1, C) as in `nn.Conv`.

  `implementation`: "conv" (XLA's grouped convolution: best on GPU/TPU and for export), "shifted"
  (`depthwise_conv_shifted`: best on CPU) or "auto" (shifted on CPU, conv elsewhere).
  """
  kernel_size: int
  stride: int
  padding: tuple[tuple[int, int], tuple[int, int]]
  implementation: str = "auto"
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1,
                                                     channels)).astype(self.dtype)
    x = x.astype(self.dtype)
    implementation = self.implementation
    if implementation == "auto":
      implementation = "shifted" if jax.default_backend() == "cpu" else "conv"
    if implementation == "shifted":
      return depthwise_conv_shifted(x, kernel, self.stride, self.padding)
    if implementation != "conv":
      raise ValueError(f"unknown depthwise implementation {implementation!r}")
    return jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)


class ConvBN(nn.Module):
  """Convolution (explicit padding, optional bias and groups), batch norm, optional activation."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: tuple[tuple[int, int], tuple[int, int]] | None = None  # default: symmetric (k-1)//2
  groups: int = 1
  use_bias: bool = False
  activation: Any = None
  kernel_init: Any = small_normal
  depthwise: str = "auto"  # implementation of depthwise convs (groups == features == inputs)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    padding = self.padding if self.padding is not None else symmetric_padding(self.kernel_size)
    if self.groups > 1 and self.groups == self.features == x.shape[-1] and not self.use_bias:
      x = DepthwiseConv(self.kernel_size, self.stride, padding, self.depthwise,
                        kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x)
    else:
      x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), (self.stride, self.stride),
                  padding=padding, feature_group_count=self.groups, use_bias=self.use_bias,
                  kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x)
    x = BatchNorm(dtype=self.dtype, name="bn")(x, train)
    return self.activation(x) if self.activation is not None else x


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
