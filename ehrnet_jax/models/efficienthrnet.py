"""EfficientHRNet: compact EfficientNet backbone + high-resolution network + HigherHRNet head."""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ehrnet_jax.models.efficientnet import BACKBONE, EfficientNetFeatures
from ehrnet_jax.models.head import HigherResolutionHead
from ehrnet_jax.models.hrnet import HighResolutionNetwork
from ehrnet_jax.models.layers import Dtype
from ehrnet_jax.scaling import ScalingSpec


class PoseOutputs(NamedTuple):
  """The network's predictions, float32, NHWC."""
  heatmaps_4: jax.Array  # (B, H/4, W/4, J) keypoint heatmaps at 1/4 resolution
  tags_4: jax.Array      # (B, H/4, W/4, J) associative-embedding tags, one per joint
  heatmaps_2: jax.Array  # (B, H/2, W/2, J) keypoint heatmaps at 1/2 resolution


class EfficientHRNet(nn.Module):
  """The bottom-up pose network for one `ScalingSpec`.

  `train=True` uses batch statistics (and updates `batch_stats` when it is mutable) and
  drop-connect (needs a "dropout" rng); `train=False` uses the running statistics and is
  deterministic. `dtype` is the compute dtype (e.g. bfloat16 on TPU); parameters and batch-norm
  statistics stay float32 and so do the outputs. `depthwise` picks the backbone's depthwise-conv
  implementation ("auto": shifted slices on CPU, grouped conv elsewhere; "conv" for export) and
  `deconv` the head's transposed convolution ("auto": sub-pixel form on CPU, the plain primitive
  elsewhere; "transpose" for export; see `layers.conv_transpose`).
  `channel_align` pads the high-resolution widths with zero channels to a multiple of it while
  computing (the parameters and the numbers are unchanged; see `layers.Conv`).
  `folded_bn=True` is the fastest evaluation form: it runs on `layers.fold_batch_norm(variables)`
  (the batch norms folded into the convolutions once, rather than on every call).
  `upsample` ("repeat" | "resize", `layers.upsample_nearest`) and `squeeze_excite` ("dense" |
  "conv", `efficientnet.SqueezeExcite`) spell the same numbers as exporters want them ("resize",
  "conv"; see `ehrnet_jax.export.network`).
  """
  spec: ScalingSpec
  depthwise: str = "auto"
  deconv: str = "auto"
  channel_align: int = 8
  folded_bn: bool = False
  upsample: str = "repeat"
  squeeze_excite: str = "dense"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> PoseOutputs:
    """images: (B, H, W, 3) normalised RGB, H and W multiples of 32."""
    self.spec.check_input_shape(*images.shape[1:3])
    taps = EfficientNetFeatures(self.spec, self.depthwise, self.folded_bn, self.squeeze_excite,
                                dtype=self.dtype, name=BACKBONE)(images, train)
    x = HighResolutionNetwork(self.spec, self.channel_align, self.folded_bn, self.upsample,
                              dtype=self.dtype, name="hrnet")(taps, train)
    out_4, out_2 = HigherResolutionHead(
        self.spec.num_joints, self.spec.hr_widths[0], self.spec.head_width, self.spec.head_blocks,
        self.channel_align, self.deconv, self.folded_bn, dtype=self.dtype, name="head")(x, train)
    joints = self.spec.num_joints
    out_4, out_2 = out_4.astype(jnp.float32), out_2.astype(jnp.float32)
    return PoseOutputs(out_4[..., :joints], out_4[..., joints:], out_2)
