"""From network outputs to the maps the grouping reads (the reference's test-time aggregation).

Per scale (`scale_maps`): the 1/4-resolution outputs are upsampled to the 1/2-resolution ones;
heatmaps are the mean of both, tags come from the 1/4 head; with flip testing the mirrored half
of the batch is flipped back and its joints permuted by the flip index; everything is then
resized to the network input size of scale 1 ("project to image"), and the two heatmaps are
averaged while the two tags are stacked (orig, flip). Across scales (`aggregate_scales`): the
heatmaps are averaged, the tags are those of scale 1.

Written once against the NumPy API and run either with NumPy (host backends such as ONNX; no JAX
import) or with `jax.numpy` under jit (`jax_decoder`): pass `xp`. The network's NHWC outputs
are made channel-first at low resolution (cheap). Maps travel as one stacked array
(1 + T, B, J, H, W): heatmaps, then the tags of each view (orig, flip); `split_maps` gives the
grouping's layout. (Under XLA on CPU, a jitted function returning several large arrays, or
slicing one resized array into several, is many times slower than returning one.)
"""

import numpy as np

from ehrnet_jax.inference import transforms


def with_mirrored(images, xp=np):
  """(B, h, w, C) -> (2B, h, w, C): the images, then the same images mirrored left-right."""
  return xp.concatenate([images, images[:, :, ::-1]], axis=0)


def scale_maps(heatmaps_4, tags_4, heatmaps_2, base_hw: tuple[int, int], flip_index=None,
               xp=np):
  """One scale's NHWC network outputs -> stacked maps (1 + T, B, J, H, W) at `base_hw`.

  `base_hw` is the network input size of scale 1. With `flip_index`, the batch is
  `with_mirrored(images)` (2B) and T = 2 (orig, flip); otherwise T = 1. The reference projects the
  orig and flip heatmaps before averaging them; resizing is linear, so averaging first is the same
  up to float rounding, at half the cost.
  """
  heatmaps_4, tags_4, heatmaps_2 = (xp.transpose(o, (0, 3, 1, 2))
                                    for o in (heatmaps_4, tags_4, heatmaps_2))
  size_2 = heatmaps_2.shape[2:]
  heatmaps = (transforms.resize_bilinear(heatmaps_4, size_2, xp) + heatmaps_2) / 2
  tags = transforms.resize_bilinear(tags_4, size_2, xp)
  if flip_index is None:
    views = [heatmaps, tags]
  else:
    half = heatmaps.shape[0] // 2
    index = np.asarray(flip_index)
    unmirror = lambda maps: maps[half:, index, :, ::-1]
    views = [(heatmaps[:half] + unmirror(heatmaps)) / 2, tags[:half], unmirror(tags)]
  return transforms.resize_bilinear(xp.stack(views), base_hw, xp)


def aggregate_scales(scales, maps, xp=np):
  """Stacked maps per scale (largest first) -> the mean heatmaps with the tags of scale 1."""
  if len(maps) == 1:
    return maps[0]
  total = maps[0][0]
  for more in maps[1:]:
    total = total + more[0]
  tags = maps[list(scales).index(1.0)][1:]
  return xp.concatenate([total[None] / float(len(scales)), tags])


def split_maps(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Stacked maps (1 + T, B, J, H, W) -> heatmaps (B, J, H, W) and tags (B, J, H, W, T)."""
  return maps[0], np.stack(list(maps[1:]), axis=-1)
