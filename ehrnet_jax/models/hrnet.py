"""The high-resolution network: transitions from the backbone taps and multi-resolution modules.

EfficientHRNet has no HRNet stem or stage 1. Stage 2 starts from the backbone's 1/4 and 1/8 taps,
and each later stage adds a branch fed from the next backbone tap (1/16, then 1/32). Between
stages every existing branch also passes through a 3x3 conv (with bias) + BN + ReLU transition.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ehrnet_jax.models.layers import BasicBlock, ConvBN, Dtype, stored_once, upsample_nearest
from ehrnet_jax.scaling import ScalingSpec


def transition(features: int, in_features: int | None, align: int, folded_bn: bool, name: str,
               dtype: Dtype) -> ConvBN:
  return ConvBN(features, 3, use_bias=True, activation=nn.relu, in_features=in_features,
                align=align, folded_bn=folded_bn, dtype=dtype, name=name)


class HighResolutionModule(nn.Module):
  """Parallel branches of basic blocks, then a fusion that exchanges information between them.

  Output branch i sums every input branch j brought to its resolution: j > i by 1x1 conv + BN and
  nearest upsampling, j < i by a chain of stride-2 3x3 convs (BN + ReLU between them, BN at the
  end), then ReLU. With `multi_scale_output=False` only branch 0 is produced. Branch b carries
  `aligned(widths[b], align)` channels (see `layers.Conv`); `folded_bn` as in `layers.ConvBN`,
  `upsample` the form of `layers.upsample_nearest`.
  """
  widths: tuple[int, ...]
  blocks_per_branch: int
  multi_scale_output: bool = True
  align: int = 1
  folded_bn: bool = False
  upsample: str = "repeat"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, branches: list[jax.Array], train: bool) -> list[jax.Array]:
    branches = list(branches)
    for b, width in enumerate(self.widths):
      for k in range(self.blocks_per_branch):
        branches[b] = BasicBlock(width, self.align, self.folded_bn, dtype=self.dtype,
                                 name=f"branch{b}_block{k}")(branches[b], train)
    outputs = []
    for i in range(len(self.widths) if self.multi_scale_output else 1):
      fused = branches[i]
      for j, x in enumerate(branches):
        if j > i:
          x = ConvBN(self.widths[i], 1, in_features=self.widths[j], align=self.align,
                     folded_bn=self.folded_bn, dtype=self.dtype, name=f"fuse{i}_{j}")(x, train)
          fused = fused + upsample_nearest(x, 2 ** (j - i), self.upsample)
        elif j < i:
          for step in range(i - j):
            last = step == i - j - 1
            x = ConvBN(self.widths[i] if last else self.widths[j], 3, stride=2,
                       activation=None if last else nn.relu, in_features=self.widths[j],
                       align=self.align, folded_bn=self.folded_bn, dtype=self.dtype,
                       name=f"fuse{i}_{j}_step{step}")(x, train)
          fused = fused + x
      outputs.append(stored_once(nn.relu(fused), train))
    return outputs


class HighResolutionNetwork(nn.Module):
  """Stages 2-4 with their transitions; returns the 1/4-resolution features
  (B, H/4, W/4, aligned(w0, align)), zero beyond w0. `folded_bn` as in `layers.ConvBN`,
  `upsample` as in `HighResolutionModule`."""
  spec: ScalingSpec
  align: int = 1
  folded_bn: bool = False
  upsample: str = "repeat"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, taps: list[jax.Array], train: bool) -> jax.Array:
    widths, align, folded, dtype = self.spec.hr_widths, self.align, self.folded_bn, self.dtype
    branches = [transition(widths[0], None, align, folded, "trans1_branch1", dtype)(taps[0],
                                                                                   train),
                transition(widths[1], None, align, folded, "trans1_branch2", dtype)(taps[1],
                                                                                   train)]
    for stage, num_modules in enumerate(self.spec.stage_modules, start=2):
      if stage > 2:
        # Existing branches get a 3x3 transition; the new branch comes from the backbone tap.
        branches = [transition(widths[b], widths[b], align, folded,
                               f"trans{stage - 1}_branch{b + 1}", dtype)(x, train)
                    for b, x in enumerate(branches)]
        branches.append(transition(widths[stage - 1], None, align, folded,
                                   f"trans{stage - 1}_branch{stage}", dtype)(taps[stage - 1],
                                                                            train))
      for m in range(num_modules):
        last = stage == 4 and m == num_modules - 1
        branches = HighResolutionModule(
            widths[:stage], self.spec.blocks_per_branch, multi_scale_output=not last,
            align=align, folded_bn=folded, upsample=self.upsample, dtype=dtype,
            name=f"stage{stage}_module{m}")(
                branches, train)
    return branches[0]
