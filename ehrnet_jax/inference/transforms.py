"""Geometry of inference: test sizes, the image warp and the mapping back to the image.

NumPy and OpenCV only (no JAX), so that any inference backend can use it. The formulas are the
reference's (`get_multi_scale_size`, `get_affine_transform` with rotation 0, `get_final_preds`):

- The short side is resized to the input size rounded up to a multiple of 64; the long side keeps
  the aspect ratio and is rounded up to a multiple of 64 as well. Other scales multiply both.
- The warp is isotropic: `scale` (in units of 200 px) says how many image pixels the output width
  covers, and `center` (integer pixels) lands on the centre of the output.

`fit_size` is the same warp into a network input of a given size (a fixed-size exported model, a
stream): the whole image, centred, at the largest zoom that fits it, the rest black. Into the
reference's own test size it is the reference's warp wherever that holds the whole image. With
`input_wh`, `pyramid_sizes` runs scale s at `input_wh` times s over the same image region.
"""

import dataclasses
import re

import cv2
import numpy as np

from ehrnet_jax.errors import UserError

# The reference expresses box sizes in units of 200 pixels.
PIXEL_STD = 200.0


@dataclasses.dataclass(frozen=True)
class TestSize:
  """Where one scale of the test-time pyramid comes from.

  size_wh: (w', h') of the network input.
  center: (cx, cy) in image pixels, integers as the reference rounds them.
  scale: (scale_w, scale_h) in units of 200 image pixels covered by the input.
  """
  size_wh: tuple[int, int]
  center: tuple[int, int]
  scale: tuple[float, float]


def multi_scale_size(image_wh: tuple[int, int], input_size: int, current_scale: float,
                     min_scale: float) -> TestSize:
  """The network input size for one test scale (the reference's `get_multi_scale_size`).

  Args:
    image_wh: (w, h) of the original image.
    input_size: the variant's training input size (e.g. 384 for H-4).
    current_scale: the scale being run (1.0 for single-scale).
    min_scale: the smallest scale of the pyramid; sizes are multiples of 64 at this scale.
  """
  w, h = image_wh
  center = _center(image_wh)
  min_input = int((min_scale * input_size + 63) // 64 * 64)
  factor = current_scale / min_scale
  if w < h:
    w_out = int(min_input * factor)
    h_out = int(int((min_input / w * h + 63) // 64 * 64) * factor)
    scale = (w / PIXEL_STD, h_out / w_out * w / PIXEL_STD)
  else:
    h_out = int(min_input * factor)
    w_out = int(int((min_input / h * w + 63) // 64 * 64) * factor)
    scale = (w_out / h_out * h / PIXEL_STD, h / PIXEL_STD)
  return TestSize((w_out, h_out), center, scale)


def fit_size(image_wh: tuple[int, int], input_wh: tuple[int, int]) -> TestSize:
  """The warp of a whole (w, h) image into a network input of exactly `input_wh` (w', h').

  The zoom is min(w' / w, h' / h); the image centre (rounded as the reference rounds it, so at
  most half a pixel off for odd sizes) lands on the input's centre; the rest is padded black by
  `warp_image`. `map_to_image(points, center, scale, input_wh)` maps back. If `input_wh` is the
  reference's test size of the image (`multi_scale_size` at scale 1) and holds the whole image,
  this is that TestSize (the reference's rounding can cut up to a pixel off the long side: a
  640x426 image at 384 is 576.9 pixels wide in a 576x384 input; fitted, it is 383.4 high).
  """
  (w, h), (w_in, h_in) = image_wh, input_wh
  # h_in / h vs w_in / w in integers; on a tie, the reference's branch (w >= h), same floats.
  if h_in * w < w_in * h or (h_in * w == w_in * h and w >= h):   # the height fills the input
    scale = (w_in / h_in * h / PIXEL_STD, h / PIXEL_STD)
  else:                                                          # the width does
    scale = (w / PIXEL_STD, h_in / w_in * w / PIXEL_STD)
  return TestSize(tuple(input_wh), _center(image_wh), scale)


def _center(image_wh: tuple[int, int]) -> tuple[int, int]:
  """The image centre in integer pixels, rounded as the reference rounds it."""
  w, h = image_wh
  return int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)


def pyramid_sizes(image_wh: tuple[int, int], input_size: int, scales: tuple[float, ...],
                  input_wh: tuple[int, int] | None = None) -> list[tuple[float, TestSize]]:
  """`(scale, TestSize)` for every test scale, largest first.

  `input_wh` None: the reference's sizes (`multi_scale_size`). Else the image is fitted into
  `input_wh` at scale 1 (`fit_size`) and scale s runs the same region at `input_wh` times s
  (rounded), which must be multiples of 32 as well.
  """
  if not scales or min(scales) <= 0:
    raise UserError(f"test scales must be positive numbers, got {scales}")
  if len(scales) > 1 and 1.0 not in scales:
    raise UserError(f"multi-scale testing takes its tags at scale 1, so --scales must include 1; "
                    f"got {scales}")
  min_scale = min(scales)
  sizes = []
  fitted = None if input_wh is None else fit_size(image_wh, input_wh)
  for s in sorted(scales, reverse=True):
    if fitted is None:
      size = multi_scale_size(image_wh, input_size, s, min_scale)
    else:
      size = dataclasses.replace(fitted, size_wh=tuple(round(v * s) for v in input_wh))
    if size.size_wh[0] % 32 or size.size_wh[1] % 32:
      raise UserError(f"scale {s} (smallest {min_scale}) gives a network input of "
                      f"{size.size_wh[0]}x{size.size_wh[1]}, which is not a multiple of 32; "
                      f"choose scales such as 0.5,1,1.5 or 0.75,1,1.25")
    sizes.append((s, size))
  return sizes


def parse_hw(text: str, flag: str) -> tuple[int, int]:
  """'384x640' (HxW, height first) -> (384, 640): a network input size given as `flag`.

  UserError naming `flag` unless both sides are positive multiples of 32 (the network's stride).
  """
  match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
  if not match:
    raise UserError(f"{flag} must be HxW (height first) such as 384x640; got {text!r}")
  h, w = int(match[1]), int(match[2])
  if h % 32 or w % 32 or not h or not w:
    raise UserError(f"{flag} {h}x{w}: both sides must be positive multiples of 32 (the "
                    "network's stride); e.g. 384x640")
  return h, w


def affine_matrix(center, scale, output_wh, inverse: bool = False) -> np.ndarray:
  """The 2x3 matrix mapping image pixels to output pixels (or back if `inverse`).

  Equal to the reference's `get_affine_transform(center, scale, 0, output_wh)`: a uniform zoom
  by `output_w / (scale_w * 200)` that sends `center` to the centre of the output.
  """
  zoom = output_wh[0] / (scale[0] * PIXEL_STD)
  cx, cy = center
  ox, oy = output_wh[0] / 2.0, output_wh[1] / 2.0
  if inverse:
    return np.array([[1 / zoom, 0.0, cx - ox / zoom], [0.0, 1 / zoom, cy - oy / zoom]])
  return np.array([[zoom, 0.0, ox - zoom * cx], [0.0, zoom, oy - zoom * cy]])


def warp_image(image: np.ndarray, size: TestSize) -> np.ndarray:
  """Warps an (h, w, C) image to the network input (h', w', C): bilinear, black padding."""
  matrix = affine_matrix(size.center, size.scale, size.size_wh)
  return cv2.warpAffine(image, matrix, size.size_wh, flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def map_to_image(points: np.ndarray, center, scale, map_wh) -> np.ndarray:
  """Maps (..., >=2) points from map pixels (x, y first) back to the original image.

  `map_wh` is the size of the maps the points were found on (the network input size at scale 1).
  Columns after the first two are kept as they are.
  """
  points = np.asarray(points)
  matrix = affine_matrix(center, scale, map_wh, inverse=True)
  xy = points[..., :2].astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
  return np.concatenate([xy.astype(points.dtype), points[..., 2:]], axis=-1)


def resize_bilinear(maps, size_hw: tuple[int, int], xp=np):
  """Resizes float maps (..., h, w) to (..., H, W).

  Bilinear with half-pixel centres and no antialiasing: PyTorch's
  `interpolate(mode="bilinear", align_corners=False)` and JAX's
  `jax.image.resize(method="linear", antialias=False)`. `xp` is the array module: with NumPy each
  (h, w) plane goes through OpenCV's `resize` (the same interpolation, about 10x faster than
  NumPy's gathers); with `jax.numpy` (under jit) it is two separable interpolations between
  neighbouring rows/columns in float32 (much faster than `jax.image.resize` on CPU).
  """
  if xp is np:
    return _resize_planes(np.asarray(maps, np.float32), size_hw)
  maps = xp.asarray(maps, dtype=xp.float32)
  for axis, n_out in zip((maps.ndim - 2, maps.ndim - 1), size_hw):
    lo, hi, frac = _linear_taps(maps.shape[axis], n_out)
    frac = frac.reshape((n_out, 1) if axis == maps.ndim - 2 else (n_out,))
    maps = xp.take(maps, lo, axis=axis) * (1 - frac) + xp.take(maps, hi, axis=axis) * frac
  return maps


def _resize_planes(maps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """`resize_bilinear` of every (h, w) plane of float32 maps with OpenCV."""
  planes = maps.reshape(-1, *maps.shape[-2:])
  out = np.empty((len(planes), *size_hw), np.float32)
  for plane, resized in zip(planes, out):
    cv2.resize(plane, size_hw[::-1], dst=resized, interpolation=cv2.INTER_LINEAR)
  return out.reshape(*maps.shape[:-2], *size_hw)


def _linear_taps(n_in: int, n_out: int):
  """Left/right source index and weight of the right one, for each of `n_out` outputs."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  src = np.clip(src, 0, n_in - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, (src - lo).astype(np.float32)
