"""Pose estimation for whole images, independent of the network backend (no JAX import).

`PoseEstimator` does what the reference's `valid.py` does per image: warp the image to every test
scale, let a `Decoder` turn the warped images into maps, group each image's maps into people
(`grouping`) and map them back to the image (`transforms`). The test sizes are the reference's
per-image sizes, or with `input_wh` one network input for every image (each fitted into it,
`transforms.fit_size`: a fixed-size exported model, a stream, one compilation). Images whose test
sizes agree (`PoseEstimator.input_sizes`) run as one batch, whatever their own sizes;
`PoseEstimator.compiles` says whether a batch compiles new programs first (a progress bar says
so). A call is `decode` (warp, network, maps) then `group`: a stream runs them in different
threads. Input files are read by `inputs`.

A `Decoder` is any callable `(pyramid, base_hw) -> Maps`, where `pyramid` lists
`(scale, uint8 images (B, h, w, 3))` largest scale first; its `batch_size` says how many images
per call keep its devices busy, `compiles` whether a call compiles first. Two exist:
- `jax_decoder.JaxDecoder`: network and decoding on device (JAX); the maps stay there
  (`device_maps.DeviceMaps`);
- `host_decoder.HostDecoder`: wraps any `backend(float32 images) -> (heatmaps_4, tags_4,
  heatmaps_2)` (e.g. an ONNX Runtime session, `onnx_decoder`) and aggregates with NumPy and
  OpenCV (`grouping.HostMaps`).
"""

import dataclasses
import time
from typing import Protocol

import numpy as np

from ehrnet_jax import keypoints as keypoints_lib
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import grouping, transforms


@dataclasses.dataclass
class Maps:
  """Decoded maps of a batch at the network input size of scale 1.

  images: per image, its maps as the grouping reads them (`grouping.MapSource`: NumPy arrays for
  `HostDecoder`, device arrays for `JaxDecoder`); network_s / decode_s: seconds spent on the batch.
  """
  images: list[grouping.MapSource]
  network_s: float
  decode_s: float


class Decoder(Protocol):
  batch_size: int   # images per call that fill the decoder's devices (other counts work too)

  def __call__(self, pyramid: list[tuple[float, np.ndarray]],
               base_hw: tuple[int, int]) -> Maps:
    ...

  def compiles(self, sizes_wh: tuple[tuple[int, int], ...], count: int) -> bool:
    """Whether a call on `count` images of these network input sizes (w, h per scale, largest
    first) compiles programs first: True for shapes this decoder has not run yet if it compiles
    per shape (JAX), always False if it does not (onnxruntime)."""
    ...


@dataclasses.dataclass
class Poses:
  """The people found in one image.

  people: float32 (P, J, 3 + T) in image pixels: x, y, value, tags. scores: float32 (P,).
  seconds: time per part for this image ("network", "decode", "grouping").
  """
  people: np.ndarray
  scores: np.ndarray
  seconds: dict[str, float]


class PoseEstimator:
  """Images -> people, for one network input size and set of test scales."""

  def __init__(self, decoder: Decoder, input_size: int, scales=(1.0,),
               keypoint_set: keypoints_lib.KeypointSet = keypoints_lib.COCO,
               config: grouping.GroupingConfig = grouping.GroupingConfig(),
               input_wh: tuple[int, int] | None = None):
    """`input_size`: the variant's training size, which sets the reference's test sizes.
    `input_wh`: None for those (per image, as the reference); else (w, h), positive multiples of
    32: every image is fitted into this network input at scale 1 (`transforms.fit_size`), and
    into `input_wh` times s at scale s (`transforms.pyramid_sizes`)."""
    if input_wh is not None and not all(v > 0 and v % 32 == 0 for v in input_wh):
      raise UserError(f"the network input size must be positive multiples of 32 (the network's "
                      f"stride), e.g. 384x640 (HxW); got {input_wh[1]}x{input_wh[0]} (HxW)")
    self.decoder = decoder
    self.input_size = input_size
    self.scales = tuple(float(s) for s in scales)
    self.keypoint_set = keypoint_set
    self.config = config
    self.input_wh = None if input_wh is None else (int(input_wh[0]), int(input_wh[1]))

  @property
  def batch_size(self) -> int:
    """Images per call that fill the decoder's devices (e.g. one per local device)."""
    return self.decoder.batch_size

  def input_sizes(self, image_hw: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """The network input sizes (w', h') of every test scale for an image of `image_hw`, largest
    first: images with equal input sizes can share a call."""
    return tuple(size.size_wh for _, size in self._pyramid_sizes(image_hw[::-1]))

  def _pyramid_sizes(self, image_wh: tuple[int, int]) -> list[tuple[float, transforms.TestSize]]:
    """`(scale, TestSize)` of every test scale for an image of `image_wh`, largest first."""
    return transforms.pyramid_sizes(image_wh, self.input_size, self.scales, self.input_wh)

  def _base_wh(self, image_wh: tuple[int, int]) -> tuple[int, int]:
    """The size the maps are aggregated at and mapped back from: the network input of scale 1."""
    if self.input_wh is not None:
      return self.input_wh
    return transforms.multi_scale_size(image_wh, self.input_size, 1.0, min(self.scales)).size_wh

  def compiles(self, image_hw: tuple[int, int], count: int = 1) -> bool:
    """Whether running `count` images of `image_hw` together compiles programs first."""
    return self.decoder.compiles(self.input_sizes(image_hw), count)

  def __call__(self, images: list[np.ndarray]) -> list[Poses]:
    """`images`: RGB uint8 (h, w, 3) with the same `input_sizes` (e.g. video frames, photos of
    one aspect ratio, or just one image)."""
    return self.group(self.decode(images))

  def decode(self, images: list[np.ndarray]) -> "Decoded":
    """The first half of `__call__`: warp and decode (network and maps); `group` finishes. Apart,
    a stream can run one frame's grouping while the next frame's network runs."""
    sizes = [self._pyramid_sizes(image.shape[1::-1]) for image in images]
    if any([s.size_wh for _, s in pyramid] != [s.size_wh for _, s in sizes[0]]
           for pyramid in sizes):
      raise ValueError("a batch must hold images of one network input size (`input_sizes`); "
                       "call once per size")
    pyramid = [(scale, np.stack([transforms.warp_image(image, image_sizes[level][1])
                                 for image, image_sizes in zip(images, sizes)]))
               for level, (scale, _) in enumerate(sizes[0])]
    base_wh = self._base_wh(images[0].shape[1::-1])
    return Decoded(self.decoder(pyramid, base_wh[::-1]), sizes, base_wh)

  def group(self, decoded: "Decoded") -> list[Poses]:
    """People per image of a `decode`d batch, in image pixels."""
    maps, count = decoded.maps, len(decoded.sizes)
    results = []
    for index, image_sizes in enumerate(decoded.sizes):
      start = time.perf_counter()
      people, scores = grouping.parse_maps(maps.images[index], self.keypoint_set, self.config)
      # The reference maps back with the (center, scale) of the last scale it ran.
      last = image_sizes[-1][1]
      people = transforms.map_to_image(people, last.center, last.scale, decoded.base_wh)
      seconds = {"network": maps.network_s / count, "decode": maps.decode_s / count,
                 "grouping": time.perf_counter() - start}
      results.append(Poses(people, scores, seconds))
    return results


@dataclasses.dataclass
class Decoded:
  """A batch between `PoseEstimator.decode` and `PoseEstimator.group`: its maps, each image's
  test sizes (`transforms.pyramid_sizes`) and the size the maps are at (w, h)."""
  maps: Maps
  sizes: list[list[tuple[float, transforms.TestSize]]]
  base_wh: tuple[int, int]
