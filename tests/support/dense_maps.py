"""Dense noisy grouping maps (unlike the mostly-zero fixtures): refine's hardest inputs."""

import numpy as np

from ehrnet_jax.inference import transforms


def dense_maps(size_hw: tuple[int, int], quantise: bool) -> tuple[np.ndarray, np.ndarray]:
  """Heatmaps (17, H, W) of noise with peaks on a grid, and smooth tags (17, H, W, 2) (bilinear
  upsampling of a coarse random grid); `quantise` rounds both, making exact ties common."""
  rng = np.random.default_rng(sum(size_hw))
  h, w = size_hw
  heatmaps = rng.normal(0.0, 0.08, (17, h, w)).astype(np.float32)
  heatmaps[:, ::7, ::9] += rng.uniform(0.0, 0.6, heatmaps[:, ::7, ::9].shape).astype(np.float32)
  coarse = rng.normal(0.0, 2.0, (17, h // 8 + 2, w // 8 + 2, 2)).astype(np.float32)
  tags = transforms.resize_bilinear(np.moveaxis(coarse, -1, 1), (h, w)).transpose(0, 2, 3, 1)
  if quantise:
    heatmaps, tags = np.round(heatmaps * 4) / 4, np.round(tags)
  return heatmaps, np.ascontiguousarray(tags, np.float32)
