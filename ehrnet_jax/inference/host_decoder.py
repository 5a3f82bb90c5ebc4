"""`HostDecoder`: the `Decoder` for any network backend that returns NumPy arrays.

The backend runs the network (e.g. an ONNX Runtime session, `onnx_decoder.OnnxNetwork`); the flip
test, the upsampling (OpenCV) and the mean over scales run here (`aggregation`), so no JAX is
imported. Each image's maps go to the grouping as `grouping.HostMaps`.
"""

import time
from typing import Callable

import numpy as np

from ehrnet_jax import images as images_lib
from ehrnet_jax.inference import aggregation, grouping
from ehrnet_jax.inference.estimator import Maps

# float32 normalised images (B, H, W, 3) -> heatmaps_4 (B, H/4, W/4, J), tags_4 (same),
# heatmaps_2 (B, H/2, W/2, J), as NumPy arrays.
Backend = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


class HostDecoder:
  """A `Decoder` around any backend returning NumPy arrays; aggregation with NumPy."""

  batch_size = 1   # one image per call: the backend's own device (ONNX Runtime) runs it

  def __init__(self, backend: Backend, flip_index=None,
               config: grouping.GroupingConfig = grouping.GroupingConfig()):
    self.backend = backend
    self.flip_index = flip_index
    self.config = config

  def compiles(self, sizes_wh, count) -> bool:   # pylint: disable=unused-argument
    """Never: the backend runs any shape as it is."""
    return False

  def __call__(self, pyramid, base_hw):
    network_s = decode_s = 0.0
    maps = []
    for _, images in pyramid:
      start = time.perf_counter()
      x = images_lib.normalize(images)
      if self.flip_index is not None:
        x = aggregation.with_mirrored(x)
      outputs = [np.asarray(o, np.float32) for o in self.backend(np.ascontiguousarray(x))]
      network_s += time.perf_counter() - start
      start = time.perf_counter()
      maps.append(aggregation.scale_maps(*outputs, base_hw, self.flip_index))
      decode_s += time.perf_counter() - start
    start = time.perf_counter()
    maps = aggregation.aggregate_scales([s for s, _ in pyramid], maps)
    heatmaps, tags = aggregation.split_maps(maps)
    images = [grouping.HostMaps(np.ascontiguousarray(h), t, self.config)
              for h, t in zip(heatmaps, tags)]
    return Maps(images, network_s, decode_s + time.perf_counter() - start)
