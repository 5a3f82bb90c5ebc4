"""The reference's training augmentation and evaluation resize, one example at a time.

NumPy + OpenCV, so that the warps are the reference's own (`cv2.warpAffine`, bilinear, black
border) pixel for pixel; the Grain pipeline (`pipeline.py`) runs them in its workers. Keypoints are
transformed in float64 and flipped before being truncated to the integer positions that the
heatmap and tag targets use, exactly as the reference orders these steps.
"""

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Ranges of the random affine and flip (the reference's COCO training values)."""
  max_rotation: float = 30.0  # Degrees, uniform in [-max, max).
  min_scale: float = 0.75  # Crop side = short image side * U[min_scale, max_scale).
  max_scale: float = 1.5
  max_translate: float = 40.0  # Centre shift, integer pixels in [-40*scale, 40*scale).
  flip_probability: float = 0.5


@dataclasses.dataclass(frozen=True)
class AffineParams:
  """One draw of the augmentation; `scale` is the crop side in units of 200 px."""
  center: tuple[float, float]
  scale: float
  rotation: float  # Degrees.
  flip: bool


def sample_params(rng: np.random.Generator, height: int, width: int,
                  config: AugmentConfig = AugmentConfig()) -> AffineParams:
  """Draws the reference's random affine for an image of the given size."""
  scale = min(height, width) / 200 * (
      rng.random() * (config.max_scale - config.min_scale) + config.min_scale)
  rotation = (rng.random() * 2 - 1) * config.max_rotation
  center = [width / 2, height / 2]
  # The reference's np.random.randint(-40*s, 40*s): bounds truncated toward zero, high excluded.
  low, high = int(-config.max_translate * scale), int(config.max_translate * scale)
  if config.max_translate > 0 and high > low:
    center[0] += int(rng.integers(low, high))
    center[1] += int(rng.integers(low, high))
  return AffineParams(center=(center[0], center[1]), scale=scale, rotation=rotation,
                      flip=bool(rng.random() < config.flip_probability))


def affine_matrix(center, scale: float, rotation: float, output_size: tuple[int, int]):
  """(2, 3) float64 map from image pixels to output pixels.

  A square of side 200*scale centred on `center` fills the output width (isotropic), then the
  output is rotated by -rotation degrees about its centre (the reference's
  `_get_affine_matrix`; with rotation 0 it is also its `get_affine_transform` for evaluation).
  """
  out_w, out_h = output_size
  factor = out_w / (200 * scale)
  linear = np.array([[factor, 0.0], [0.0, factor]])
  out_center = np.array([out_w / 2, out_h / 2])
  offset = out_center - factor * np.asarray(center, np.float64)
  angle = np.deg2rad(-rotation)
  rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  return np.concatenate([rotate @ linear, (rotate @ (offset - out_center) + out_center)[:, None]],
                        axis=1)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """Applies a (2, 3) affine to (..., 2) points."""
  return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
  """Bilinear warp to output_size (w, h) with a black border, as the reference does it."""
  return cv2.warpAffine(image, matrix, output_size, flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_valid_mask(valid_255: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
  """(size, size) uint8 in {0, 1}: the 0/255 valid mask warped bilinearly, then > 0.5 * 255.

  Outside the image the warp gives 0, so the loss also ignores the black border.
  """
  return (warp(valid_255, matrix, (size, size)) > 127).astype(np.uint8)


def target_positions(keypoints: np.ndarray, size: int) -> np.ndarray:
  """(N, J, 3) float64 output-pixel keypoints -> (N, J, 3) int32 (x, y, valid).

  The targets use the truncated integer position (`int(x)`, toward zero as the reference does:
  -0.5 becomes 0 and still counts). Valid means v > 0 and the position inside [0, size).
  """
  xy = np.trunc(keypoints[..., :2])
  inside = np.all((xy >= 0) & (xy < size), axis=-1)
  valid = (keypoints[..., 2] > 0) & inside
  return np.concatenate([np.where(valid[..., None], xy, 0), valid[..., None]],
                        axis=-1).astype(np.int32)


def pad_people(array: np.ndarray, max_people: int) -> np.ndarray:
  """Zero-pads the leading (people) axis of (N, ...) to (max_people, ...)."""
  if len(array) > max_people:
    raise ValueError(f"{len(array)} people, at most {max_people} expected")
  return np.pad(array, [(0, max_people - len(array))] + [(0, 0)] * (array.ndim - 1))


def augment(image_bgr: np.ndarray, ignore_mask: np.ndarray, keypoints: np.ndarray,
            params: AffineParams, input_size: int, flip_index: tuple[int, ...],
            max_people: int) -> dict[str, np.ndarray]:
  """Random affine + flip of one example, and the integer target positions.

  Args:
    image_bgr: (H, W, 3) uint8, as OpenCV decodes it.
    ignore_mask: (H, W) uint8, 1 where the loss ignores the image.
    keypoints: (N, J, 3) stored-image keypoints of the people with keypoints, N <= max_people.
    params: the random draw; input_size: S, a multiple of 4.
  Returns:
    image (S, S, 3) uint8 RGB; mask_4 (S/4, S/4) and mask_2 (S/2, S/2) uint8, 1 = valid;
    keypoints_4 (P, J, 3) and keypoints_2 (P, J, 3) int32 (x, y, valid) at those resolutions.
  """
  def matrix(size):
    return affine_matrix(params.center, params.scale, params.rotation, (size, size))

  def flip(array):
    return cv2.flip(array, 1) if params.flip else array

  image = warp(image_bgr, matrix(input_size), (input_size, input_size))
  out = {"image": flip(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))}
  valid_255 = (1 - ignore_mask) * np.uint8(255)
  joints = keypoints.astype(np.float64)
  for name, size in (("4", input_size // 4), ("2", input_size // 2)):
    mask = warp_valid_mask(valid_255, matrix(size), size)
    points = transform_points(joints[..., :2], matrix(size))
    people = np.concatenate([points, joints[..., 2:]], axis=-1)
    if params.flip:
      people = people[:, list(flip_index)]
      people[..., 0] = size - 1 - people[..., 0]
    out[f"mask_{name}"] = flip(mask)
    out[f"keypoints_{name}"] = pad_people(target_positions(people, size), max_people)
  return out
