"""The grouping's maps kept on the JAX device: only candidates and refined pixels reach the host.

`JaxDecoder` makes the maps on the device; copying them to the host for `grouping.refine` would
move 17 heatmaps and 17 x T tag maps at the network input size per image (about 40 MB at
512x384), milliseconds per frame on a GPU. Instead the decoder hands the grouping one
`DeviceMaps` per image (a `grouping.MapSource`):

- `candidates` and their quarter-pixel offsets come from the decoder's top-k program (small);
- `refined_pixels` runs `refine`'s search on the device (`search_refined_pixels`, one program per
  bucket of query counts) and returns six numbers per query.

The search is the host's (`grouping.best_pixels`): per `tile` x `tile` block, an upper bound of
the objective `heatmap - round(|tag - mean tag|)` from the block's maximum heatmap value and tag
box; blocks are visited best bound first, `per_round` per query at a time, until no unvisited
block can beat (or tie) the best value found. The device's float32 arithmetic may differ from
NumPy's in the last bits (fused multiply-adds, approximate square roots), which could only
change `round` at a distance within a few ulps of a half-integer. So the device evaluates each
pixel's objective as an interval (the distance scaled by 1 -/+ `_RELATIVE_ERROR` before
rounding); the answer is certain when every pixel whose interval is wide stays below the best
certain value. For the rare query that is not certain the host computes the exact answer from that
joint's maps (fetched alone), so the result always equals `grouping.HostMaps`'.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from ehrnet_jax.inference import grouping

# Allowed relative error of the device's float32 tag distance against NumPy's: 32 ulps (2^-23
# each), where fused multiply-adds and approximate square roots differ by a few.
_RELATIVE_ERROR = 2.0 ** -18


class DeviceMaps:
  """A `grouping.MapSource` for image `index` of a batch of stacked maps on the device."""

  def __init__(self, tiled, size_hw: tuple[int, int], index: int,
               candidates: grouping.Candidates, candidate_offsets: np.ndarray,
               config: grouping.GroupingConfig):
    """tiled: `tile_summaries(maps, config.refine_tile)` of the batch's stacked maps
    (1 + T, B, J, H, W) with H, W = size_hw; candidate_offsets: float32 (J, K, 2), the
    `quarter_offsets` at `candidates.xy`."""
    self.tiled = tiled
    self.size_hw = tuple(size_hw)
    self.index = index
    self._candidates = candidates
    self._candidate_offsets = candidate_offsets
    self.config = config
    self.fetched_bytes = 0     # bytes copied from the device by `refined_pixels`
    self.device_s = 0.0        # seconds `refined_pixels` waited for the device
    self.host_fallbacks = 0    # queries the host had to finish (`refined_pixels`)

  def candidates(self) -> grouping.Candidates:
    return self._candidates

  def to_host(self) -> grouping.HostMaps:
    """All of this image's maps copied to the host (for tests and inspection)."""
    h, w = self.size_hw
    return _host_maps(np.asarray(jax.device_get(self.tiled[0][:, self.index, :, :h, :w])),
                      self.config)

  def quarter_offsets(self, joint, x, y):
    """Looked up among the candidates' (adjust only moves candidates)."""
    at = np.all(self._candidates.xy[joint] == np.stack([x, y], -1)[:, None], axis=-1)  # (N, K)
    if not at.any(1).all():
      raise ValueError("quarter_offsets of DeviceMaps are known at candidate pixels only")
    offsets = self._candidate_offsets[joint, at.argmax(1)]                      # (N, 2)
    return offsets[:, 0], offsets[:, 1]

  def refined_pixels(self, mean_tags, joint):
    count = len(joint)
    bucket = max(16, 1 << (count - 1).bit_length())   # one program per power of two
    padded_joint = np.zeros(bucket, np.int32)
    padded_joint[:count] = joint
    padded_tags = np.zeros((bucket, mean_tags.shape[1]), np.float32)
    padded_tags[:count] = mean_tags
    start = time.perf_counter()
    found = search_refined_pixels(self.tiled, np.int32(self.index), padded_joint, padded_tags,
                                  np.arange(bucket) < count, size_hw=self.size_hw,
                                  tile=self.config.refine_tile, relative_error=_RELATIVE_ERROR)
    found = [np.array(part[:count]) for part in jax.device_get(found)]
    self.device_s += time.perf_counter() - start
    self.fetched_bytes += sum(part.nbytes for part in found)
    x, y, value, offset_x, offset_y, certain = found
    x, y = x.astype(np.int64), y.astype(np.int64)
    for j in np.unique(joint[~certain]):
      self._refine_on_host(j, np.flatnonzero(~certain & (joint == j)), mean_tags,
                           (x, y, value, offset_x, offset_y))
    return x, y, value, offset_x, offset_y

  def _refine_on_host(self, joint: int, queries: np.ndarray, mean_tags, outputs) -> None:
    """The exact answer for `queries` (all of `joint`) from that joint's maps, in place."""
    h, w = self.size_hw
    maps = np.asarray(jax.device_get(self.tiled[0][:, self.index, joint:joint + 1, :h, :w]))
    self.fetched_bytes += maps.nbytes
    self.host_fallbacks += len(queries)
    found = _host_maps(maps, self.config).refined_pixels(mean_tags[queries],
                                                         np.zeros(len(queries), np.int64))
    for output, part in zip(outputs, found):
      output[queries] = part


def _host_maps(maps: np.ndarray, config) -> grouping.HostMaps:
  """Stacked maps (1 + T, J, H, W) -> `grouping.HostMaps`."""
  return grouping.HostMaps(maps[0], np.stack(list(maps[1:]), axis=-1), config)


@functools.partial(jax.jit, static_argnames=("tile",))
def tile_summaries(maps: jax.Array, tile: int):
  """A batch's maps made ready for `search_refined_pixels`: padded to whole tiles at the
  bottom/right if needed (heatmaps with -inf, tags with 0), and per tile x tile block the maximum
  heatmap value and the box of tag values.

  Args:
    maps: stacked maps (1 + T, B, J, H, W).

  Returns:
    the (padded) maps, det_max (B, J, R*C), tag_lo and tag_hi (B, J, R*C, T).
  """
  h, w = maps.shape[-2:]
  if h % tile or w % tile:
    pad = ((0, 0), (0, 0), (0, -h % tile), (0, -w % tile))
    maps = jnp.concatenate([jnp.pad(maps[:1], ((0, 0),) + pad, constant_values=-jnp.inf),
                            jnp.pad(maps[1:], ((0, 0),) + pad)])
  planes, batch, joints, height, width = maps.shape
  # Along rows (the minor axis) first, then across them: on CPU several times faster than one
  # reduction over both axes or `reduce_window`.
  rows = maps.reshape(planes, batch, joints, height, width // tile, tile)
  reduce = lambda part, op: op(op(part, axis=-1).reshape(
      *part.shape[:3], height // tile, tile, width // tile), axis=-2).reshape(*part.shape[:3], -1)
  det_max = reduce(rows[:1], jnp.max)[0]                                   # (B, J, R*C)
  tag_lo, tag_hi = (jnp.moveaxis(reduce(rows[1:], op), 0, -1)              # (B, J, R*C, T)
                    for op in (jnp.min, jnp.max))
  return maps, det_max, tag_lo, tag_hi


@functools.partial(jax.jit, static_argnames=("size_hw", "tile", "relative_error", "per_round"))
def search_refined_pixels(tiled, index, joint, mean_tags, valid, size_hw: tuple[int, int],
                          tile: int, relative_error: float, per_round: int = 4):
  """`DeviceMaps.refined_pixels` for Q queries on the device.

  Args:
    tiled: `tile_summaries(maps, tile)`.
    index: int32 scalar, the image in the batch.
    joint: int32 (Q,); mean_tags: float32 (Q, T); valid: bool (Q,) (padding queries False).
    size_hw: the maps' size before padding.
    tile: block size of the bounds; relative_error: of the device's tag distances against
      NumPy's; per_round: blocks per query per round.

  Returns:
    x, y int32 (Q,), value float32 (Q,), offset_x, offset_y float32 (Q,), certain bool (Q,).
  """
  maps, det_max, tag_lo, tag_hi = tiled
  planes = maps.shape[0]
  h, w = size_hw
  cols = maps.shape[-1] // tile
  bound = grouping.tile_bounds(det_max[index, joint], tag_lo[index, joint], tag_hi[index, joint],
                               mean_tags, jnp)                             # (Q, R*C)
  order = jnp.argsort(-bound, axis=1)
  num_rounds = -(-order.shape[1] // per_round)
  extra = num_rounds * per_round + 1 - order.shape[1]   # whole rounds, then one -inf sentinel
  order = jnp.pad(order, ((0, 0), (0, extra)))
  sorted_bound = jnp.pad(jnp.take_along_axis(bound, order[:, :bound.shape[1]], 1),
                         ((0, 0), (0, extra)), constant_values=-jnp.inf)

  def next_bound(state):
    return jax.lax.dynamic_index_in_dim(sorted_bound, state[0] * per_round, 1, keepdims=False)

  def unresolved(state):
    return valid & (next_bound(state) >= state[1])

  def visit(state):
    step, best, first, wide = state
    tiles = jax.lax.dynamic_slice_in_dim(order, step * per_round, per_round, axis=1)   # (Q, K)
    live = (jax.lax.dynamic_slice_in_dim(sorted_bound, step * per_round, per_round, axis=1)
            > -jnp.inf) & unresolved(state)[:, None]
    top, left = (tiles // cols) * tile, (tiles % cols) * tile
    block = jax.vmap(jax.vmap(lambda j, y, x: jax.lax.dynamic_slice(
        maps, (0, index, j, y, x), (planes, 1, 1, tile, tile))[:, 0, 0]))(
            jnp.broadcast_to(joint[:, None], tiles.shape), top, left)   # (Q, K, 1 + T, S, S)
    diff = block[:, :, 1:] - mean_tags[:, None, :, None, None]
    distance = jnp.sqrt(jnp.sum(diff * diff, axis=2))                    # (Q, K, S, S)
    low = block[:, :, 0] - jnp.round(distance * (1 + relative_error))
    high = block[:, :, 0] - jnp.round(distance * (1 - relative_error))
    low = jnp.where(live[:, :, None, None], low, -jnp.inf)
    pixel = ((top[:, :, None, None] + jnp.arange(tile)[:, None]) * w
             + left[:, :, None, None] + jnp.arange(tile))                # (Q, K, S, S)
    value = low.max(axis=(1, 2, 3))
    at = jnp.where(low == value[:, None, None, None], pixel, jnp.iinfo(jnp.int32).max)
    index_ = at.min(axis=(1, 2, 3))
    better = (value > best) | ((value == best) & (index_ < first))
    wide = jnp.maximum(wide, jnp.where(live[:, :, None, None] & (high > low), high,
                                       -jnp.inf).max(axis=(1, 2, 3)))
    return step + 1, jnp.where(better, value, best), jnp.where(better, index_, first), wide

  start = (jnp.int32(0), jnp.full(joint.shape, -jnp.inf), jnp.zeros(joint.shape, jnp.int32),
           jnp.full(joint.shape, -jnp.inf))
  _, best, first, wide = jax.lax.while_loop(
      lambda state: (state[0] < num_rounds) & unresolved(state).any(), visit, start)
  y, x = first // w, first % w
  heatmaps = maps[0, index, :, :h, :w]                                    # (J, H, W)
  return (x, y, heatmaps[joint, y, x], *grouping.quarter_offsets(heatmaps, joint, x, y, jnp),
          wide < best)
