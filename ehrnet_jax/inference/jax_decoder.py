"""Decoding on device (JAX, jit): network, flip test, aggregation, NMS and top-k per joint.

`JaxDecoder` is the JAX implementation of `estimator.Decoder`; `jax_estimator` builds a
`PoseEstimator` around it from an ehrnet checkpoint. Its steps are
separate jitted functions, so that the network time can be reported on its own, and because XLA
on CPU runs them several times faster apart than fused into one program (measured):

1. network: uint8 images -> normalise -> [images, mirrored images] -> `apply_fn`;
2. maps: `aggregation.scale_maps` per scale (upsample, flip back, average, project to the input
   size of scale 1), then the mean over scales;
3. candidates: max-pool NMS, then the top-k peaks per joint (`nms_top_k`) with their
   quarter-pixel offsets.

The maps stay on the device: the grouping reads them through `device_maps.DeviceMaps`, one per
image, which copies only the candidates and the refined pixels to the host.

A decoder runs on a mesh of devices of this process (default: one): each call's batch is padded
with black images to a multiple of the device count (`batch_size`) and sharded over the devices
(`NamedSharding`, axis "batch"), the variables replicated on them; the padded images' outputs are
dropped. So a batch of a given input size compiles one program, whatever the number of images.

Each jitted function compiles once per input shape (`JaxDecoder.compiles` says when a call will).
The test sizes are multiples of 64, so the number of shapes is already small; `bucket` (e.g. 256)
pads the network input at the bottom/right with black up to a multiple of `bucket` and crops the
outputs, so that a folder of photos of many aspect ratios compiles the network only once per
bucket (at the price of a border effect: the padded pixels are seen by the convolutions near the
bottom/right edge).
"""

import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ehrnet_jax import images as images_lib
from ehrnet_jax import keypoints as keypoints_lib
from ehrnet_jax import traced_programs, weights
from ehrnet_jax.inference import aggregation, grouping
from ehrnet_jax.inference.device_maps import DeviceMaps, tile_summaries
from ehrnet_jax.inference.estimator import Maps, PoseEstimator
from ehrnet_jax.models import EfficientHRNet, ExecutionForm, fold_batch_norm
from ehrnet_jax.scaling import ScalingSpec
from ehrnet_jax.xla_options import inference_compiler_options

# (variables, images float32 (B, H, W, 3)) -> (heatmaps_4, tags_4, heatmaps_2), e.g. PoseOutputs.
ApplyFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


def max_pool(maps: jax.Array, kernel: int) -> jax.Array:
  """Stride-1 max over kernel x kernel windows of (..., H, W), padding with -inf.

  Separable (rows, then columns) with shifted slices: on CPU much faster than `reduce_window`.
  """
  pad = kernel // 2
  for axis in (maps.ndim - 2, maps.ndim - 1):
    size = maps.shape[axis]
    widths = [(0, 0)] * maps.ndim
    widths[axis] = (pad, pad)
    padded = jnp.pad(maps, widths, constant_values=-jnp.inf)
    maps = functools.reduce(jnp.maximum, [jax.lax.slice_in_dim(padded, i, i + size, axis=axis)
                                          for i in range(kernel)])
  return maps


def nms(heatmaps: jax.Array, kernel: int) -> jax.Array:
  """Keeps the pixels of (..., H, W) that equal the maximum of their window; zeros elsewhere."""
  return jnp.where(max_pool(heatmaps, kernel) == heatmaps, heatmaps, 0.0)


def top_k(peaks: jax.Array, k: int):
  """The k largest values per map of (B, J, H, W): xy int32 (B, J, k, 2), values, flat index."""
  batch, joints, h, w = peaks.shape
  values, index = jax.lax.top_k(peaks.reshape(batch, joints, h * w), k)
  return jnp.stack([index % w, index // w], axis=-1), values, index


def nms_top_k(heatmaps: jax.Array, tags: jax.Array, k: int, kernel: int):
  """Max-pool NMS and the k strongest peaks per joint, with their tags.

  Args:
    heatmaps: (B, J, H, W).
    tags: (B, J, H, W, T).
    k: peaks per joint.
    kernel: odd NMS window.

  Returns:
    xy int32 (B, J, k, 2), values (B, J, k) strongest first, tags (B, J, k, T).
  """
  xy, values, index = top_k(nms(heatmaps, kernel), k)
  flat_tags = tags.reshape(*index.shape[:2], -1, tags.shape[-1])
  return xy, values, jnp.take_along_axis(flat_tags, index[..., None], axis=2)


class JaxDecoder:
  """`estimator.Decoder` on device; see the module docstring."""

  def __init__(self, apply_fn: ApplyFn, variables, flip_index=None,
               config: grouping.GroupingConfig = grouping.GroupingConfig(),
               bucket: int | None = None, devices: Sequence[jax.Device] | None = None,
               network_name: str | None = None):
    """`flip_index` turns on the flip test (e.g. `keypoints.COCO.flip_index`); `devices`: devices
    of this process that share each batch (default: the first local device). `network_name`
    identifies `apply_fn` (e.g. the model's repr): on one device the network's traces are then
    kept on disk for later processes (`traced_programs`)."""
    self._mesh = Mesh(np.asarray(devices or jax.local_devices()[:1]), ("batch",))
    self.batch_size = self._mesh.size
    self.variables = variables
    self.config = config
    network = functools.partial(_network, apply_fn, flip_index is not None, bucket)
    if network_name is not None and self.batch_size == 1:
      self._network = traced_programs.exported_jit(
          network, f"{network_name}|flip={flip_index is not None}|bucket={bucket}",
          inference_compiler_options())
    else:
      self._network = jax.jit(network, compiler_options=inference_compiler_options())
    self._maps = jax.jit(functools.partial(_maps, flip_index),
                         static_argnames=("scales", "base_hw"))
    # NMS and top-k are separate programs: fused, XLA on CPU is 2-3x slower.
    self._nms = jax.jit(lambda maps: nms(maps[0], config.nms_kernel))
    self._top_k = jax.jit(functools.partial(_top_k_with_tags, config.max_num_people))
    self._shapes_run: set[tuple] = set()   # `_shapes` of the calls made: their programs exist

  @property
  def variables(self):
    return self._variables

  @variables.setter
  def variables(self, variables):
    """Replicates `variables` (host or this process's arrays; the trainer passes host copies,
    `training.mesh.host_copy`) on the decoder's devices."""
    self._variables = jax.device_put(variables, NamedSharding(self._mesh, PartitionSpec()))

  def _shapes(self, sizes_wh, count: int) -> tuple:
    """What the compiled programs depend on: the input sizes and the padded batch."""
    return tuple(map(tuple, sizes_wh)), -(-count // self.batch_size) * self.batch_size

  def compiles(self, sizes_wh, count: int) -> bool:
    """True for the first call on these shapes (each jitted step compiles then)."""
    return self._shapes(sizes_wh, count) not in self._shapes_run

  def __call__(self, pyramid, base_hw: tuple[int, int]) -> Maps:
    count = len(pyramid[0][1])
    shapes = self._shapes([images.shape[2:0:-1] for _, images in pyramid], count)
    batch = shapes[1]   # padded to fill every device
    sharding = NamedSharding(self._mesh, PartitionSpec("batch"))
    start = time.perf_counter()
    outputs = [self._network(self.variables, jax.device_put(_pad_batch(images, batch), sharding))
               for _, images in pyramid]
    jax.block_until_ready(outputs)
    network_done = time.perf_counter()
    scales = tuple(float(s) for s, _ in pyramid)
    maps = self._maps(outputs, scales=scales, base_hw=tuple(base_hw))
    xy, values, candidate_tags, offsets = jax.device_get(self._top_k(self._nms(maps), maps))
    tiled = jax.block_until_ready(tile_summaries(maps, self.config.refine_tile))
    images = [DeviceMaps(tiled, base_hw, index,
                         grouping.Candidates(xy[index], values[index], candidate_tags[index]),
                         offsets[index], self.config) for index in range(count)]
    self._shapes_run.add(shapes)
    return Maps(images, network_s=network_done - start,
                decode_s=time.perf_counter() - network_done)


def _pad_batch(images: np.ndarray, batch: int) -> np.ndarray:
  """(B, h, w, 3) -> (batch, h, w, 3), black images appended."""
  return np.pad(images, ((0, batch - len(images)), (0, 0), (0, 0), (0, 0)))


def inference_form() -> ExecutionForm:
  """The form `network_decoder` runs the network in: the fastest inference form on JAX's
  default backend."""
  return ExecutionForm.for_backend(jax.default_backend(), train=False)


def network_decoder(spec: ScalingSpec, variables, flip_index=None,
                    config: grouping.GroupingConfig = grouping.GroupingConfig(),
                    bucket: int | None = None,
                    devices: Sequence[jax.Device] | None = None) -> JaxDecoder:
  """A `JaxDecoder` running `EfficientHRNet(spec)` on `variables` (params and batch_stats) in the
  fastest inference form on this backend: the batch norms folded into the convolutions once,
  here. Variables given later must be folded as well (`decoder.variables =
  fold_batch_norm(variables)`)."""
  model = EfficientHRNet(spec, inference_form())
  return JaxDecoder(lambda v, x: model.apply(v, x, train=False), fold_batch_norm(variables),
                    flip_index, config, bucket, devices, network_name=repr(model))


def jax_estimator(checkpoint, variant: str | None = None, scales=(1.0,), flip: bool = True,
                  bucket: int | None = None,
                  config: grouping.GroupingConfig = grouping.GroupingConfig(),
                  devices: Sequence[jax.Device] | None = None,
                  input_wh: tuple[int, int] | None = None) -> PoseEstimator:
  """A `PoseEstimator` running the network of an ehrnet checkpoint directory with JAX on
  `devices` of this process (default: one).

  `variant`, if given, must match the checkpoint (UserError otherwise). `input_wh`: None for the
  reference's per-image test sizes; (w, h) fits every image into that network input (one
  compilation for all image sizes), see `PoseEstimator`.
  """
  expected = ScalingSpec.from_name(variant) if variant else None
  variables, spec = weights.load_variables(checkpoint, expected)
  keypoint_set = keypoints_lib.COCO
  decoder = network_decoder(spec, variables, keypoint_set.flip_index if flip else None, config,
                            bucket, devices)
  return PoseEstimator(decoder, spec.input_size, scales, keypoint_set, config, input_wh)


def _network(apply_fn, flip, bucket, variables, images):
  """uint8 (B, h, w, 3) -> the network outputs, for [images, mirrored] when flipping."""
  h, w = images.shape[1:3]
  if bucket:
    images = jnp.pad(images, ((0, 0), (0, -h % bucket), (0, -w % bucket), (0, 0)))
  x = images_lib.normalize(images, jnp)
  if flip:
    x = aggregation.with_mirrored(x, jnp)
  heatmaps_4, tags_4, heatmaps_2 = apply_fn(variables, x)
  return (heatmaps_4[:, :h // 4, :w // 4], tags_4[:, :h // 4, :w // 4],
          heatmaps_2[:, :h // 2, :w // 2])


def _maps(flip_index, outputs, scales, base_hw):
  """Per-scale outputs -> stacked maps (1 + T, B, J, H, W), see `aggregation`."""
  per_scale = [aggregation.scale_maps(*output, base_hw, flip_index, xp=jnp) for output in outputs]
  return aggregation.aggregate_scales(scales, per_scale, jnp)


def _top_k_with_tags(k, peaks, maps):
  """`top_k` of the peaks, with the tags from stacked maps (1 + T, B, J, H, W) (no restacking)
  and the `quarter_offsets` there (B, J, k, 2)."""
  xy, values, index = top_k(peaks, k)
  flat_tags = maps[1:].reshape(maps.shape[0] - 1, *index.shape[:2], -1)   # (T, B, J, H*W)
  tags = jnp.take_along_axis(flat_tags, index[None], axis=3)
  joint = jnp.broadcast_to(jnp.arange(xy.shape[1])[:, None], xy.shape[1:3])
  offsets = jax.vmap(lambda heatmaps, xy: jnp.stack(
      grouping.quarter_offsets(heatmaps, joint, xy[..., 0], xy[..., 1], jnp), -1))(maps[0], xy)
  return xy, values, jnp.moveaxis(tags, 0, -1), offsets
