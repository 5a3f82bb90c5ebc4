"""Training targets on device: heatmaps and tag-loss joint lists from padded keypoints.

The input pipeline sends the integer target positions (`keypoints_4`, `keypoints_2`, (P, J, 3)
int32 x, y, valid, computed on the host in float64 exactly as the reference truncates them);
`prepare_batch` turns a host batch into the trainer's batch inside the jitted step. Measured in
benchmarks/data_pipeline.md: this keeps the host pipeline small (the heatmaps are 6x the bytes of
the image) and costs the accelerator next to nothing.

Reference facts: sigma 2 at both resolutions; a (6*sigma+3)^2 = 15x15 Gaussian with peak 1 centred
on the integer position; overlapping people take the max; joint lists packed per person.
"""

import jax.numpy as jnp
import numpy as np

SIGMA = 2.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gaussian_heatmaps(positions: jnp.ndarray, size: int, sigma: float = SIGMA) -> jnp.ndarray:
  """(..., P, J, 3) int32 (x, y, valid) -> (..., size, size, J) float32 heatmaps.

  Each valid joint draws exp(-(dx^2 + dy^2) / (2 sigma^2)) for |dx|, |dy| <= 3*sigma + 1 around
  its position; the max over people is taken. The Gaussian is separable, so the (P, size, size, J)
  product is formed per person row/column and reduced at once (XLA fuses it, no P-fold buffer).
  """
  radius = int(3 * sigma + 1)
  grid = jnp.arange(size)

  def profile(coordinate):  # (..., P, J) -> (..., P, size, J)
    delta = (grid[:, None] - coordinate[..., None, :]).astype(jnp.float32)
    inside = (jnp.abs(delta) <= radius) & (positions[..., None, :, 2] > 0)
    return jnp.where(inside, jnp.exp(-delta**2 / (2 * sigma**2)), 0.0)

  rows = profile(positions[..., 1])  # (..., P, size, J) over y.
  cols = profile(positions[..., 0])  # (..., P, size, J) over x.
  return jnp.max(rows[..., :, None, :] * cols[..., None, :, :], axis=-4)


def tag_joints(positions: jnp.ndarray, size: int) -> jnp.ndarray:
  """(..., P, J, 3) int32 -> (..., P, J, 2) int32 joint list for the tag loss.

  Person p's k-th valid joint (in joint order) sits at slot k as (j*size^2 + y*size + x, 1), an
  index into tags laid out (J, size, size); the other slots are (0, 0).
  """
  num_joints = positions.shape[-2]
  valid = positions[..., 2] > 0
  flat = (jnp.arange(num_joints) * size * size + positions[..., 1] * size + positions[..., 0])
  order = jnp.argsort(~valid, axis=-1, stable=True)  # Valid joints first, in joint order.
  packed_valid = jnp.take_along_axis(valid, order, axis=-1)
  packed_flat = jnp.take_along_axis(flat, order, axis=-1)
  return jnp.stack([jnp.where(packed_valid, packed_flat, 0), packed_valid], axis=-1).astype(
      jnp.int32)


def normalize_image(image: jnp.ndarray) -> jnp.ndarray:
  """uint8 RGB (..., H, W, 3) -> float32 ImageNet-normalised."""
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  return (image.astype(jnp.float32) / 255.0 - mean) / std


def prepare_batch(batch: dict, sigma: float = SIGMA) -> dict:
  """Host batch (pipeline output) -> trainer batch (docs/CONTRACTS.md), any leading dims; jittable.

  In: image uint8 (..., S, S, 3); mask_4/mask_2 uint8 (..., S/4|S/2, same); keypoints_4 and
  keypoints_2 int32 (..., P, J, 3).
  Out: image float32 normalised; heatmaps_4/heatmaps_2 float32 (..., h, w, J); mask_4/mask_2
  float32; joints_4 int32 (..., P, J, 2).
  """
  size_4, size_2 = batch["mask_4"].shape[-1], batch["mask_2"].shape[-1]
  return {
      "image": normalize_image(batch["image"]),
      "heatmaps_4": gaussian_heatmaps(batch["keypoints_4"], size_4, sigma),
      "heatmaps_2": gaussian_heatmaps(batch["keypoints_2"], size_2, sigma),
      "mask_4": batch["mask_4"].astype(jnp.float32),
      "mask_2": batch["mask_2"].astype(jnp.float32),
      "joints_4": tag_joints(batch["keypoints_4"], size_4),
  }
