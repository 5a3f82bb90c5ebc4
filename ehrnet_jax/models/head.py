"""The HigherHRNet-style head: 1/4-resolution heatmaps + tags, 1/2-resolution heatmaps."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ehrnet_jax.models.layers import BasicBlock, BatchNorm, Dtype, small_normal


class HigherResolutionHead(nn.Module):
  """1x1 conv -> J heatmaps + J tags at 1/4; concat(features, that) -> 4x4 stride-2 transposed
  conv -> BN-ReLU -> basic blocks -> 1x1 conv -> J heatmaps at 1/2."""
  num_joints: int
  width: int
  num_blocks: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    out_4 = nn.Conv(2 * self.num_joints, (1, 1), kernel_init=small_normal, dtype=self.dtype,
                    name="final_4")(x)                                   # (B, H/4, W/4, 2J)
    y = jnp.concatenate([x, out_4], axis=-1)
    # Equals PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1): output exactly 2x the input.
    y = nn.ConvTranspose(self.width, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                         transpose_kernel=True, use_bias=False, kernel_init=small_normal,
                         dtype=self.dtype, name="deconv")(y)
    y = nn.relu(BatchNorm(self.width, dtype=self.dtype, name="deconv_bn")(y, train))
    for k in range(self.num_blocks):
      y = BasicBlock(self.width, dtype=self.dtype, name=f"deconv_block{k}")(y, train)
    out_2 = nn.Conv(self.num_joints, (1, 1), kernel_init=small_normal, dtype=self.dtype,
                    name="final_2")(y)                                   # (B, H/2, W/2, J)
    return out_4, out_2
