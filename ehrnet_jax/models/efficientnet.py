"""The compact EfficientNet backbone (MBConv + squeeze-excitation + swish) and its classifier.

Layer for layer the reference's backbone (an EfficientNet-B0 layout scaled by `ScalingSpec`),
including its fixed asymmetric padding: a k x k conv of stride s is padded by
`p = max(k - s, 0)` split as `(p // 2, p - p // 2)` on each axis (top/left first), then run VALID.
That equals TF 'SAME' only for even input sizes, so it is spelled out here.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ehrnet_jax.models.execution import ExecutionForm
from ehrnet_jax.models.layers import ConvBN, Dtype, kaiming_fan_out
from ehrnet_jax.ops.conv import conv
from ehrnet_jax.scaling import ScalingSpec

# The name of the `EfficientNetFeatures` module in the pose model and in the classifier: the
# top-level key of the backbone's variables in both.
BACKBONE = "backbone"


def reference_padding(kernel_size: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
  total = max(kernel_size - stride, 0)
  pad = (total // 2, total - total // 2)
  return (pad, pad)


def backbone_conv(features: int, kernel_size: int, stride: int = 1, groups: int = 1,
                  name: str | None = None, form: ExecutionForm = ExecutionForm(),
                  dtype: Dtype = jnp.float32) -> ConvBN:
  """Conv-BN-swish with the reference's padding and kaiming (fan_out) initialisation."""
  return ConvBN(features, kernel_size, stride, padding=reference_padding(kernel_size, stride),
                groups=groups, activation=nn.swish, kernel_init=kaiming_fan_out,
                form=form, dtype=dtype, name=name)


def drop_connect(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Drops whole samples of a residual branch with probability `rate`, rescaling the rest."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class PointwiseDense(nn.Dense):
  """`nn.Dense` (same variables) applied to the channels of an NHWC map as a 1x1 convolution."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    y = conv(x.astype(self.dtype), kernel[None, None].astype(self.dtype), 1, ((0, 0), (0, 0)))
    return y + bias.astype(self.dtype)


class SqueezeExcite(nn.Module):
  """Channel attention: global average pool, reduce + swish, expand + sigmoid, rescale.

  The pooled values go through the layers as a (B, C) vector (`nn.Dense`) or, where
  `form.squeeze_excite == "conv"`, as a (B, 1, 1, C) map (`PointwiseDense`, the same variables).
  """
  reduced: int
  form: ExecutionForm = ExecutionForm()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    as_map = self.form.squeeze_excite == "conv"
    pooled = jnp.mean(x, axis=(1, 2), keepdims=as_map)               # (B, C) or (B, 1, 1, C)
    layer = PointwiseDense if as_map else nn.Dense
    s = nn.swish(layer(self.reduced, dtype=self.dtype, name="reduce")(pooled))
    s = nn.sigmoid(layer(x.shape[-1], dtype=self.dtype, name="expand")(s))
    return x * (s if as_map else s[:, None, None, :])


class MBConv(nn.Module):
  """Inverted residual: [1x1 expand] -> k x k depthwise (stride s) -> SE -> 1x1 project.

  The residual (with drop-connect in training) is used when the stride is 1 and the widths match.
  The SE bottleneck is a quarter of the block's *input* width, as in the reference.
  """
  in_channels: int
  out_channels: int
  expand_ratio: int
  kernel_size: int
  stride: int
  drop_connect_rate: float
  form: ExecutionForm = ExecutionForm()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    hidden = self.in_channels * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = backbone_conv(hidden, 1, name="expand", form=self.form, dtype=self.dtype)(y, train)
    y = backbone_conv(hidden, self.kernel_size, self.stride, groups=hidden, name="depthwise",
                      form=self.form, dtype=self.dtype)(y, train)
    y = SqueezeExcite(max(1, self.in_channels // 4), self.form, dtype=self.dtype, name="se")(y)
    y = ConvBN(self.out_channels, 1, kernel_init=kaiming_fan_out, form=self.form,
               dtype=self.dtype, name="project")(y, train)
    if self.stride == 1 and self.in_channels == self.out_channels:
      if train and self.drop_connect_rate > 0:
        y = drop_connect(y, self.drop_connect_rate, self.make_rng("dropout"))
      y = self.form.residual_end(x + y, train)
    return y


class EfficientNetFeatures(nn.Module):
  """The backbone: stem + MBConv stages. Returns the four taps at strides 4, 8, 16 and 32.

  Submodules are named as the reference's `features[i]`: `stem` is 0, `block_i` for i >= 1.
  `form` is the execution form (`ExecutionForm`).
  """
  spec: ScalingSpec
  form: ExecutionForm = ExecutionForm()
  dtype: Dtype = jnp.float32

  def setup(self):
    spec = self.spec
    self.stem = backbone_conv(spec.stem_channels, 3, 2, name="stem", form=self.form,
                              dtype=self.dtype)
    blocks, in_channels = [], spec.stem_channels
    for stage in spec.backbone_stages:
      for repeat in range(stage.repeats):
        blocks.append(MBConv(
            in_channels, stage.channels, stage.expand_ratio, stage.kernel_size,
            stage.stride if repeat == 0 else 1, spec.drop_connect_rate, self.form,
            dtype=self.dtype, name=f"block_{len(blocks) + 1}"))
        in_channels = stage.channels
    self.blocks = blocks

  def __call__(self, images: jax.Array, train: bool) -> list[jax.Array]:
    x = self.stem(images.astype(self.dtype), train)
    taps, tap_blocks = [], set(self.spec.tap_blocks)
    for index, block in enumerate(self.blocks, start=1):
      x = block(x, train)
      if index in tap_blocks:
        taps.append(x)
    return taps                          # [(B,H/4,W/4,C1), (B,H/8,..,C2), (..H/16..), (..H/32..)]


class EfficientNetClassifier(nn.Module):
  """The backbone-only model of the paper's Table 2: features, 1x1 conv-BN-swish to
  `round_filters(1280)`, global average pool, dropout, linear classifier."""
  spec: ScalingSpec
  num_classes: int = 1000
  dropout_rate: float = 0.2
  form: ExecutionForm = ExecutionForm()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    x = EfficientNetFeatures(self.spec, self.form, dtype=self.dtype, name=BACKBONE)(
        images, train)[-1]
    x = backbone_conv(self.spec.classifier_channels, 1, name="head_conv", form=self.form,
                      dtype=self.dtype)(x, train)
    x = x.mean(axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)



def backbone_variables(variables: dict) -> dict:
  """The backbone's part of a pose model's or classifier's variables (or of their shapes):
  `{collection: {"backbone": ...}}` for each collection."""
  return {collection: {BACKBONE: tree[BACKBONE]} for collection, tree in variables.items()}
