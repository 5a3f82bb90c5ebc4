"""Augmentation and targets against independent computations written out in the tests."""

import math

import cv2
import jax
import numpy as np
import pytest

from ehrnet_jax import keypoints
from ehrnet_jax.data import augment, targets
from ehrnet_jax.inference import transforms


def reference_heatmaps(positions: np.ndarray, size: int, sigma: float = 2.0) -> np.ndarray:
  """The reference's HeatmapGenerator, written out: (P, J, 3) int -> (J, size, size)."""
  patch = 6 * sigma + 3
  center = 3 * sigma + 1
  g = np.array([[math.exp(-((x - center)**2 + (y - center)**2) / (2 * sigma**2))
                 for x in range(int(patch))] for y in range(int(patch))])
  out = np.zeros((positions.shape[1], size, size), np.float32)
  for person in positions:
    for j, (x, y, valid) in enumerate(person):
      if not valid or x < 0 or y < 0 or x >= size or y >= size:
        continue
      ul = int(round(x - 3 * sigma - 1)), int(round(y - 3 * sigma - 1))
      br = int(round(x + 3 * sigma + 2)), int(round(y + 3 * sigma + 2))
      c, d = max(0, -ul[0]), min(br[0], size) - ul[0]
      a, b = max(0, -ul[1]), min(br[1], size) - ul[1]
      cc, dd = max(0, ul[0]), min(br[0], size)
      aa, bb = max(0, ul[1]), min(br[1], size)
      out[j, aa:bb, cc:dd] = np.maximum(out[j, aa:bb, cc:dd], g[a:b, c:d])
  return out


def random_positions(rng, people: int, joints: int, size: int) -> np.ndarray:
  """Integer positions, many near the borders and overlapping, about 60% valid."""
  xy = rng.integers(-3, size + 3, (people, joints, 2))
  valid = (rng.random((people, joints)) < 0.6) & np.all((xy >= 0) & (xy < size), axis=-1)
  return np.concatenate([np.where(valid[..., None], xy, 0), valid[..., None]], -1).astype(np.int32)


def test_heatmaps_equal_the_reference_generator():
  rng = np.random.default_rng(0)
  positions = np.stack([random_positions(rng, 30, 17, 40) for _ in range(3)])  # (B, P, J, 3)
  positions[0, 0, :4] = [[-1, 5, 1], [40, 5, 1], [5, -1, 1], [5, 40, 1]]  # Outside: not drawn.
  got = np.asarray(jax.jit(targets.gaussian_heatmaps, static_argnums=1)(positions, 40))
  assert got.shape == (3, 40, 40, 17)
  for b in range(3):
    want = reference_heatmaps(positions[b], 40).transpose(1, 2, 0)
    # XLA's float32 exp is a vectorised approximation, its last bits differ by ISA (AVX-512 vs
    # AVX2): a few ulps of values <= 1 (ulp 6e-8 below 1). A wrong sigma or centre is off by >1e-2.
    np.testing.assert_allclose(got[b], want, atol=1e-6)
    for x, y, valid in positions[b].reshape(-1, 3):
      if valid and 0 <= min(x, y) and max(x, y) < 40:
        assert got[b, y, x].max() == pytest.approx(1.0)


def test_tag_joints_pack_valid_joints_per_person():
  rng = np.random.default_rng(1)
  positions = random_positions(rng, 30, 17, 24)
  got = np.asarray(targets.tag_joints(positions, 24))
  want = np.zeros((30, 17, 2), np.int32)
  for p, person in enumerate(positions):
    slot = 0
    for j, (x, y, valid) in enumerate(person):
      if valid:
        want[p, slot] = (j * 24 * 24 + y * 24 + x, 1)
        slot += 1
  np.testing.assert_array_equal(got, want)


def test_prepare_batch_normalises_and_keeps_masks():
  image = np.full((1, 2, 8, 8, 3), 255, np.uint8)
  batch = {"image": image, "mask_4": np.ones((1, 2, 2, 2), np.uint8),
           "mask_2": np.zeros((1, 2, 4, 4), np.uint8),
           "keypoints_4": np.zeros((1, 2, 30, 17, 3), np.int32),
           "keypoints_2": np.zeros((1, 2, 30, 17, 3), np.int32)}
  out = jax.jit(targets.prepare_batch)(batch)
  np.testing.assert_allclose(out["image"][0, 0, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) /
                             np.array([0.229, 0.224, 0.225]), rtol=1e-6)
  assert out["heatmaps_4"].shape == (1, 2, 2, 2, 17) and out["heatmaps_2"].shape == (1, 2, 4, 4, 17)
  assert float(out["mask_4"].min()) == 1.0 and float(out["mask_2"].max()) == 0.0
  assert out["joints_4"].shape == (1, 2, 30, 17, 2)


def reference_matrix(center, scale, rotation, res):
  """The reference's _get_affine_matrix, as 3x3 products written out."""
  h = 200 * scale
  t = np.array([[res / h, 0, res * (-center[0] / h + 0.5)],
                [0, res / h, res * (-center[1] / h + 0.5)], [0, 0, 1]])
  r = math.radians(-rotation)
  rot = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
  shift = np.array([[1, 0, -res / 2], [0, 1, -res / 2], [0, 0, 1]])
  unshift = np.array([[1, 0, res / 2], [0, 1, res / 2], [0, 0, 1]])
  return (unshift @ rot @ shift @ t)[:2]


@pytest.mark.parametrize("rotation", [0.0, 17.5, -29.0])
def test_affine_matrix_is_the_references(rotation):
  got = augment.affine_matrix((300.5, 211.0), 2.7, rotation, (128, 128))
  np.testing.assert_allclose(got, reference_matrix((300.5, 211.0), 2.7, rotation, 128),
                             atol=1e-12)


def test_sample_params_ranges():
  rng = np.random.default_rng(2)
  draws = [augment.sample_params(rng, 400, 600) for _ in range(3000)]
  scales = np.array([d.scale for d in draws]) / 2.0  # Short side 400 = 2 units of 200.
  rotations = np.array([d.rotation for d in draws])
  shifts = np.array([(d.center[0] - 300, d.center[1] - 200) for d in draws])
  bounds = np.trunc(40 * np.array([d.scale for d in draws]))
  assert 0.75 <= scales.min() < 0.76 and 1.49 < scales.max() < 1.5
  assert -30 <= rotations.min() < -29.9 and 29.9 < rotations.max() < 30
  assert np.all(shifts == np.round(shifts)) and np.all(np.abs(shifts) <= bounds[:, None])
  assert np.all(shifts < bounds[:, None])  # High end excluded, as np.random.randint.
  assert 0.45 < np.mean([d.flip for d in draws]) < 0.55


def _example(rng, height=90, width=120, people=3):
  image = (rng.random((height, width, 3)) * 255).astype(np.uint8)
  ignore = np.zeros((height, width), np.uint8)
  ignore[10:40, 70:110] = 1
  kp = np.concatenate([rng.uniform(0, [width, height], (people, 17, 2)),
                       rng.integers(0, 3, (people, 17, 1))], -1)
  return image, ignore, kp


@pytest.mark.parametrize("flip", [False, True])
def test_augment_matches_an_independent_warp(flip):
  rng = np.random.default_rng(3)
  image, ignore, kp = _example(rng)
  params = augment.AffineParams(center=(64.0, 41.0), scale=0.5, rotation=12.0, flip=flip)
  out = augment.augment(image, ignore, kp, params, 64, keypoints.COCO.flip_index, 30)
  m = reference_matrix(params.center, 0.5, 12.0, 64)
  want = cv2.warpAffine(image, m, (64, 64))[:, :, ::-1]
  np.testing.assert_array_equal(out["image"], want[:, ::-1] if flip else want)
  for name, size in (("4", 16), ("2", 32)):
    m = reference_matrix(params.center, 0.5, 12.0, size)
    mask = cv2.warpAffine(((1 - ignore) * 255).astype(np.uint8), m, (size, size)) / 255 > 0.5
    np.testing.assert_array_equal(out[f"mask_{name}"], mask[:, ::-1] if flip else mask)
    xy = kp[..., :2] @ m[:, :2].T + m[:, 2]
    if flip:
      xy = xy[:, list(keypoints.COCO.flip_index)]
      xy[..., 0] = size - 1 - xy[..., 0]
    v = kp[:, list(keypoints.COCO.flip_index), 2] if flip else kp[..., 2]
    got = out[f"keypoints_{name}"]
    assert got.shape == (30, 17, 3) and not got[3:].any()
    for p in range(3):
      for j in range(17):
        x, y = int(xy[p, j, 0]), int(xy[p, j, 1])  # Truncation, like the reference.
        valid = v[p, j] > 0 and 0 <= x < size and 0 <= y < size
        assert got[p, j, 2] == valid
        if valid:
          assert (got[p, j, 0], got[p, j, 1]) == (x, y)


def test_flip_swaps_left_and_right_joints():
  rng = np.random.default_rng(4)
  image, ignore, kp = _example(rng, people=1)
  kp[..., 2] = 2
  kp[0, 5] = (30.0, 40.0, 2)  # Left shoulder.
  kp[0, 6] = (80.0, 40.0, 2)  # Right shoulder.
  common = dict(center=(60.0, 45.0), scale=0.45, rotation=0.0)
  plain = augment.augment(image, ignore, kp, augment.AffineParams(**common, flip=False), 64,
                          keypoints.COCO.flip_index, 30)
  flipped = augment.augment(image, ignore, kp, augment.AffineParams(**common, flip=True), 64,
                            keypoints.COCO.flip_index, 30)
  np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
  # At 1/2 resolution (32 px) the crop side is 0.45 * 200 = 90 px: x -> 16 + (x - 60) * 32 / 90.
  left_x = int(16 + (30 - 60) * 32 / 90)
  right_x = int(16 + (80 - 60) * 32 / 90)
  assert plain["keypoints_2"][0, 5, 0] == left_x and plain["keypoints_2"][0, 6, 0] == right_x
  # After the flip, slot 5 (left) holds the mirrored right shoulder and slot 6 the left one.
  assert flipped["keypoints_2"][0, 5, 0] == int(31 - (16 + (80 - 60) * 32 / 90))
  assert flipped["keypoints_2"][0, 6, 0] == int(31 - (16 + (30 - 60) * 32 / 90))


def test_eval_transform_round_trip():
  test_size = transforms.multi_scale_size((640, 427), 512, 1.0, 1.0)
  size, center, scale = test_size.size_wh, test_size.center, test_size.scale
  assert size == (768, 512) and center == (320, 214)  # Long side to a multiple of 64.
  m = augment.affine_matrix(center, scale[0], 0.0, size)
  point = np.array([[100.0, 50.0]])
  back = augment.transform_points(augment.transform_points(point, m),
                                  cv2.invertAffineTransform(m))
  np.testing.assert_allclose(back, point, atol=1e-9)
  np.testing.assert_allclose(m[0, 0], 512 / 427)
