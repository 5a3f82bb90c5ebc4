"""The HigherHRNet-style head: 1/4-resolution heatmaps + tags, 1/2-resolution heatmaps."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ehrnet_jax.models.execution import ExecutionForm
from ehrnet_jax.models.layers import (BasicBlock, BatchNorm, Conv, ConvTranspose, Dtype, aligned,
                                     pad_channels)


class HigherResolutionHead(nn.Module):
  """1x1 conv -> J heatmaps + J tags at 1/4; concat(features, that) -> 4x4 stride-2 transposed
  conv -> BN-ReLU -> basic blocks -> 1x1 conv -> J heatmaps at 1/2.

  `x` has `in_features` channels, then zero channels (see `layers.Conv`); the blocks at 1/2
  carry `aligned(width, form.channel_align)` channels. A form that folds batch norm folds the
  blocks' BNs; the one after the transposed convolution is kept."""
  num_joints: int
  in_features: int
  width: int
  num_blocks: int = 2
  form: ExecutionForm = ExecutionForm()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    form, align = self.form, self.form.channel_align
    out_4 = Conv(2 * self.num_joints, 1, use_bias=True, in_features=self.in_features, form=form,
                 dtype=self.dtype, name="final_4")(x)                    # (B, H/4, W/4, 2J)
    y = jnp.concatenate([x[..., :self.in_features], out_4], axis=-1)
    # Equals PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1): output exactly 2x the input.
    y = ConvTranspose(self.width, 4, 2, ((2, 2), (2, 2)), form=form, dtype=self.dtype,
                      name="deconv")(y)
    y = BatchNorm(self.width, form, dtype=self.dtype, name="deconv_bn")(y, train, nn.relu)
    y = pad_channels(y, aligned(self.width, align))
    for k in range(self.num_blocks):
      y = BasicBlock(self.width, align, form, dtype=self.dtype, name=f"deconv_block{k}")(y, train)
    out_2 = Conv(self.num_joints, 1, use_bias=True, in_features=self.width, form=form,
                 dtype=self.dtype, name="final_2")(y)                    # (B, H/2, W/2, J)
    return out_4, out_2
