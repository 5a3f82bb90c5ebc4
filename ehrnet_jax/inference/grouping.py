"""Associative-embedding grouping: joint candidates in, people out.

NumPy only (no JAX). It reproduces the reference's `HeatmapParser.parse` (HigherHRNet grouping)
exactly:

1. `top_k_candidates`: max-pool NMS and the k strongest peaks per joint.
2. `match_by_tag`: joints visited in the keypoint set's grouping order; candidates above the
   detection threshold are assigned to people by tag distance with the reference's minimum-cost
   assignment (`assignment.min_cost_assignment`, munkres 3.0.0's choice among tied optima).
3. `adjust`: quarter-pixel shift towards the higher neighbour, plus the half-pixel centre.
4. `person_scores`: the mean joint value per person (after adjust, before refine).
5. `refine`: fills each person's missing joints with the best pixel of
   `heatmap - round(|tag - person tag|)`, found exactly but without scanning every pixel.

Steps 1, 3 and 5 read the maps through a `MapSource`, so the maps can stay where they were made:
`HostMaps` holds them in NumPy (this module; any backend, e.g. ONNX), while
`ehrnet_jax.inference.device_maps.DeviceMaps` keeps them on the JAX device and sends only
candidates, offsets and the refined pixels to the host.

Maps are per image and channel-first: heatmaps (J, H, W), tags (J, H, W, T) with T = 2 when
flip testing (orig, flip). People are float32 (P, J, 3 + T): x, y, value, tags; undetected joints
are all zero.
"""

import dataclasses
import time
from typing import Protocol

import numpy as np

from ehrnet_jax import keypoints as keypoints_lib
from ehrnet_jax.inference import assignment


@dataclasses.dataclass(frozen=True)
class GroupingConfig:
  """The parser settings (the reference's TEST section; defaults are the Example Configs')."""
  detection_threshold: float = 0.1
  tag_threshold: float = 1.0
  max_num_people: int = 30      # candidates per joint, and groups a candidate can join
  nms_kernel: int = 5
  use_detection_val: bool = True
  adjust: bool = True
  refine: bool = True
  refine_tile: int = 16         # tile size of the exact bounded search in `refine`


@dataclasses.dataclass(frozen=True)
class Candidates:
  """The top-k NMS peaks of every joint, strongest first.

  xy: int (J, K, 2) map pixel (x, y). values: float32 (J, K). tags: float32 (J, K, T).
  Entries beyond the available peaks have value -inf. (`match_by_tag` builds its costs in the
  promotion of these dtypes, as the reference does: float64 with integer xy, float32 with
  float32 xy.)
  """
  xy: np.ndarray
  values: np.ndarray
  tags: np.ndarray


def top_k_candidates(heatmaps: np.ndarray, tags: np.ndarray,
                     config: GroupingConfig = GroupingConfig()) -> Candidates:
  """NMS (a peak equals the maximum of its k x k window) and the top-k peaks per joint.

  Only peaks above the detection threshold can be grouped, so only those are searched; the
  result equals a full top-k for every entry the grouping uses.
  """
  num_joints, h, w = heatmaps.shape
  k = config.max_num_people
  flat = np.flatnonzero(heatmaps > config.detection_threshold)
  joint, y, x = np.unravel_index(flat, heatmaps.shape)
  value = heatmaps.reshape(-1)[flat]
  radius = config.nms_kernel // 2
  is_peak = np.ones(value.shape, bool)
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      ny, nx = y + dy, x + dx
      inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
      neighbour = heatmaps[joint, np.clip(ny, 0, h - 1), np.clip(nx, 0, w - 1)]
      is_peak &= ~inside | (neighbour <= value)
  joint, y, x, value = joint[is_peak], y[is_peak], x[is_peak], value[is_peak]
  # Strongest first within each joint; equal values in raster order.
  order = np.lexsort((y * w + x, -value, joint))
  joint, y, x, value = joint[order], y[order], x[order], value[order]
  rank = np.arange(len(joint)) - np.searchsorted(joint, joint)
  keep = rank < k
  joint, y, x, value, rank = joint[keep], y[keep], x[keep], value[keep], rank[keep]
  out_xy = np.zeros((num_joints, k, 2), np.int64)
  out_values = np.full((num_joints, k), -np.inf, np.float32)
  out_tags = np.zeros((num_joints, k, tags.shape[-1]), np.float32)
  out_xy[joint, rank] = np.stack([x, y], -1)
  out_values[joint, rank] = value
  out_tags[joint, rank] = tags[joint, y, x]
  return Candidates(out_xy, out_values, out_tags)


def match_by_tag(candidates: Candidates, grouping_order, config: GroupingConfig = GroupingConfig()
                 ) -> np.ndarray:
  """Assigns candidates to people by tag distance; returns float32 (P, J, 3 + T), integer x, y.

  The first joint (in `grouping_order`) with candidates seeds one person each. Every later
  candidate goes to the person (among the first `max_num_people`) chosen by the reference's
  minimum-cost assignment on `round(|tag - mean person tag|) * 100 - value` (munkres 3.0.0's
  optimum, exact ties included: `assignment.min_cost_assignment`), if its tag distance is below
  the tag threshold, and starts a new person otherwise. As in the reference, a person is identified
  by the first tag value of its seed: a new candidate whose first tag equals an existing key
  replaces that person's joint and restarts its tag average. The costs are computed in NumPy's
  promotion of the candidates' dtypes, as the reference computes them from its inputs, so that
  assignments whose costs tie in exact arithmetic break as the reference's do.
  """
  num_joints, _, tag_dim = candidates.tags.shape
  rows_per_person: list[np.ndarray] = []     # (J, 3 + T) each
  tag_sums: list[np.ndarray] = []            # float32 (T,), summed in insertion order
  tag_counts: list[int] = []
  person_by_key: dict[float, int] = {}

  def start_person(joint, row, tag):
    key = float(tag[0])
    if key not in person_by_key:
      person_by_key[key] = len(rows_per_person)
      rows_per_person.append(np.zeros((num_joints, 3 + tag_dim)))
      tag_sums.append(None)
      tag_counts.append(0)
    person = person_by_key[key]
    rows_per_person[person][joint] = row
    tag_sums[person], tag_counts[person] = tag, 1

  for joint in grouping_order:
    keep = candidates.values[joint] > config.detection_threshold
    if not keep.any():
      continue
    tags = candidates.tags[joint][keep]                                    # (N, T) float32
    # In NumPy's promotion of the candidates' dtypes, as the reference's joints array (float64
    # from integer positions, float32 from float32 ones): near-ties of the cost break as there.
    rows = np.concatenate([candidates.xy[joint][keep], candidates.values[joint][keep][:, None],
                           tags], axis=1)                                  # (N, 3 + T)
    if not rows_per_person:
      for row, tag in zip(rows, tags):
        start_person(joint, row, tag)
      continue
    num_groups = min(len(rows_per_person), config.max_num_people)
    group_tags = np.stack([tag_sums[g] / np.float32(tag_counts[g]) for g in range(num_groups)])
    distance = np.linalg.norm(rows[:, None, 3:] - group_tags[None], ord=2, axis=2)  # (N, G)
    cost = np.round(distance) * 100 - rows[:, 2:3] if config.use_detection_val else distance
    assigned = assignment.min_cost_assignment(cost)                         # (N,), -1: none
    for index, (row, tag, group) in enumerate(zip(rows, tags, assigned)):
      if group >= 0 and distance[index, group] < config.tag_threshold:
        rows_per_person[group][joint] = row
        tag_sums[group] = tag_sums[group] + tag
        tag_counts[group] += 1
      else:
        start_person(joint, row, tag)
  if not rows_per_person:
    return np.zeros((0, num_joints, 3 + tag_dim), np.float32)
  return np.stack(rows_per_person).astype(np.float32)


class MapSource(Protocol):
  """One image's maps, wherever they are, as the grouping reads them."""

  def candidates(self) -> Candidates:
    """The top-k NMS peaks per joint (`top_k_candidates`)."""
    ...

  def quarter_offsets(self, joint: np.ndarray, x: np.ndarray, y: np.ndarray):
    """`quarter_offsets` at candidate pixels (joint, x, y), each (N,): offset_x, offset_y."""
    ...

  def refined_pixels(self, mean_tags: np.ndarray, joint: np.ndarray):
    """For queries (mean tag float32 (N, T), joint (N,)): the first pixel (raster order)
    maximising `heatmaps[joint] - round(|tags[joint] - mean tag|)` in float32, as x, y (int64),
    the heatmap value there (float32) and its `quarter_offsets`, each (N,)."""
    ...

  def to_host(self) -> "HostMaps":
    """The maps as NumPy arrays (copied from a device), for inspection and tests."""
    ...


def quarter_offsets(heatmaps, joint, x, y, xp=np):
  """+0.25 towards the higher horizontal/vertical neighbour, -0.25 on ties (clamped borders).

  heatmaps (J, H, W); joint, x, y integer arrays of one shape -> offset_x, offset_y of that
  shape. `xp`: NumPy, or `jax.numpy` for maps on a JAX device (`device_maps`)."""
  _, h, w = heatmaps.shape
  right = heatmaps[joint, y, xp.minimum(x + 1, w - 1)]
  left = heatmaps[joint, y, xp.maximum(x - 1, 0)]
  down = heatmaps[joint, xp.minimum(y + 1, h - 1), x]
  up = heatmaps[joint, xp.maximum(y - 1, 0), x]
  return xp.where(right > left, 0.25, -0.25), xp.where(down > up, 0.25, -0.25)


class HostMaps:
  """A `MapSource` over NumPy maps: heatmaps (J, H, W), tags (J, H, W, T)."""

  def __init__(self, heatmaps: np.ndarray, tags: np.ndarray,
               config: GroupingConfig = GroupingConfig()):
    self.heatmaps = np.asarray(heatmaps, np.float32)
    self.tags = np.asarray(tags, np.float32)
    self.config = config

  def candidates(self) -> Candidates:
    return top_k_candidates(self.heatmaps, self.tags, self.config)

  def to_host(self) -> "HostMaps":
    """These maps (`DeviceMaps.to_host` copies a device's)."""
    return self

  def quarter_offsets(self, joint, x, y):
    return quarter_offsets(self.heatmaps, joint, x, y)

  def refined_pixels(self, mean_tags, joint):
    x, y = best_pixels(self.heatmaps, self.tags, mean_tags, joint, self.config.refine_tile)
    return (x, y, self.heatmaps[joint, y, x]) + quarter_offsets(self.heatmaps, joint, x, y)


def adjust(people: np.ndarray, maps: MapSource) -> np.ndarray:
  """Moves detected joints a quarter pixel towards the higher neighbour, then to pixel centres."""
  people = people.copy()
  person, joint = np.nonzero(people[:, :, 2] > 0)
  x = people[person, joint, 0].astype(np.int64)
  y = people[person, joint, 1].astype(np.int64)
  offset_x, offset_y = maps.quarter_offsets(joint, x, y)
  people[person, joint, 0] = x + offset_x + 0.5
  people[person, joint, 1] = y + offset_y + 0.5
  return people


def person_scores(people: np.ndarray) -> np.ndarray:
  """float32 (P,): the mean value over all joints, undetected ones counting as 0."""
  return np.array([p[:, 2].mean() for p in people], np.float32)


def refine(people: np.ndarray, maps: MapSource) -> np.ndarray:
  """Fills every person's undetected joints from the maps.

  For person p and joint j the reference takes the first (raster order) pixel maximising
  `heatmaps[j] - round(|tags[j] - mean tag of p|)` and fills the joint if its heatmap value there
  is positive (`MapSource.refined_pixels` finds it). The mean tag of a person is that of its
  detected joints, whose tags `match_by_tag` kept in `people`.
  """
  people = people.copy()
  person, joint = np.nonzero(people[:, :, 2] == 0)
  if person.size == 0:
    return people
  mean_tags = _mean_person_tags(people)                                # (P, T)
  x, y, value, offset_x, offset_y = maps.refined_pixels(mean_tags[person], joint)
  fill = value > 0
  person, joint = person[fill], joint[fill]
  people[person, joint, 0] = (x + 0.5 + offset_x)[fill]
  people[person, joint, 1] = (y + 0.5 + offset_y)[fill]
  people[person, joint, 2] = value[fill]
  return people


def _mean_person_tags(people: np.ndarray) -> np.ndarray:
  """float32 (P, T): mean tag of each person's detected joints (the tags at their pixels)."""
  detected = people[:, :, 2:3] > 0                                        # (P, J, 1)
  total = np.zeros((len(people), people.shape[2] - 3), np.float32)
  for j in range(people.shape[1]):   # summed in joint order, like the reference's float32 mean
    total = total + np.where(detected[:, j], people[:, j, 3:], np.float32(0))
  return total / detected.sum(1).astype(np.float32)


def best_pixels(heatmaps, tags, mean_tags, joint, tile: int = 16, batch_tiles: int = 4):
  """For each query n: the first pixel maximising `heatmaps[joint[n]] - round(|tag - m_n|)`.

  Scanning P x J full maps is what makes the reference's refine slow, so this finds the same
  pixel with a bounded search: per `tile` x `tile` block it keeps the maximum heatmap value and
  the box of tag values, which bound the objective from above; best-first, each round evaluates,
  exactly and in float32 as the reference does, for every query that still has a tile able to
  beat its best value so far (or to tie it at an earlier pixel), its `batch_tiles` tiles of
  highest bound. Returns x, y (int64), each (N,).
  """
  _, h, w = heatmaps.shape
  tiles = _Tiles(heatmaps, tags, tile)
  bound = tiles.bounds(mean_tags, joint)                                  # (N, R*C)
  num_queries = len(joint)
  best = np.full(num_queries, -np.inf, np.float32)
  index = np.full(num_queries, h * w)
  evaluated = np.zeros(bound.shape, bool)
  while True:
    can_win = ~evaluated & ((bound > best[:, None]) | ((bound == best[:, None])
                                                       & (tiles.first_index < index[:, None])))
    query = np.flatnonzero(can_win.any(1))
    if query.size == 0:
      break
    batch = min(batch_tiles, bound.shape[1])
    ranked = np.where(can_win[query], bound[query], -np.inf)
    top = np.argpartition(-ranked, batch - 1, axis=1)[:, :batch]          # (Q, batch)
    pick = np.take_along_axis(can_win[query], top, 1)
    query, top = np.repeat(query, batch)[pick.ravel()], top[pick]
    evaluated[query, top] = True
    value, flat = tiles.best_in(mean_tags[query], joint[query], top)
    # This round's winner per query: the highest value, then the earliest pixel.
    order = np.lexsort((flat, -value, query))
    query, first = np.unique(query[order], return_index=True)
    value, flat = value[order][first], flat[order][first]
    better = (value > best[query]) | ((value == best[query]) & (flat < index[query]))
    best[query[better]], index[query[better]] = value[better], flat[better]
  return index % w, index // w


class _Tiles:
  """Heatmaps and tags cut into tile x tile blocks, with per-block bounds for `refine`."""

  def __init__(self, heatmaps: np.ndarray, tags: np.ndarray, tile: int):
    num_joints, h, self.width = heatmaps.shape
    rows, self.cols = -(-h // tile), -(-self.width // tile)
    self.tile = tile
    det = _pad_to_tiles(heatmaps, tile, constant_values=-np.inf)
    tag = _pad_to_tiles(tags, tile, mode="edge")
    self.det_max = _tile_reduce(det, tile, np.maximum)                   # (J, R, C)
    self.tag_lo = _tile_reduce(tag, tile, np.minimum)                    # (J, R, C, T)
    self.tag_hi = _tile_reduce(tag, tile, np.maximum)
    self.det = det.reshape(num_joints, rows, tile, self.cols, tile)
    self.tag = tag.reshape(num_joints, rows, tile, self.cols, tile, -1)
    self.first_index = (np.arange(rows)[:, None] * tile * self.width
                        + np.arange(self.cols) * tile).reshape(-1)        # (R*C,)

  def bounds(self, mean_tags: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """(N, R*C) upper bounds of the objective of query (mean_tags[n], joint[n]) per tile."""
    per_query = lambda summary: summary[joint].reshape(len(joint), self.det_max[0].size, -1)
    return tile_bounds(per_query(self.det_max)[..., 0], per_query(self.tag_lo),
                       per_query(self.tag_hi), mean_tags)

  def best_in(self, mean_tags: np.ndarray, joint: np.ndarray, tile_index: np.ndarray):
    """Exact best value and its flat pixel index within one tile per query (float32 math)."""
    row, col = tile_index // self.cols, tile_index % self.cols
    det = self.det[joint, row, :, col, :]                                 # (M, S, S)
    diff = self.tag[joint, row, :, col] - mean_tags[:, None, None]        # (M, S, S, T)
    objective = (det - np.round(np.sqrt((diff * diff).sum(-1)))).reshape(len(joint), -1)
    local = objective.argmax(1)
    y = local // self.tile + row * self.tile
    x = local % self.tile + col * self.tile
    return objective[np.arange(len(joint)), local], y * self.width + x


def tile_bounds(det_max, tag_lo, tag_hi, mean_tags, xp=np):
  """Upper bounds of refine's objective per query and tile: the tile's maximum heatmap value
  minus the least `round` of a tag distance in the tile.

  The tag distance in a tile is at least d, the distance to its tag box, and
  round(distance) >= ceil(d - 1/2); `slack` covers float32 distances a few ulps short of d.
  det_max (Q, N); tag_lo, tag_hi (Q, N, T): the tiles' tag boxes; mean_tags (Q, T) -> (Q, N).
  `xp`: NumPy, or `jax.numpy` (`device_maps`).
  """
  m = mean_tags[:, None, :]                                               # (Q, 1, T)
  gap = xp.maximum(xp.maximum(tag_lo - m, m - tag_hi), 0)
  slack = 1e-5 * (1 + xp.abs(tag_lo).max() + xp.abs(tag_hi).max() + xp.abs(mean_tags).max())
  distance = xp.sqrt((gap * gap).sum(-1))
  return det_max - xp.maximum(xp.ceil(distance - slack - 0.5), 0)


def _pad_to_tiles(maps: np.ndarray, tile: int, **pad_args) -> np.ndarray:
  """Pads (J, H, W, ...) maps at the bottom/right to multiples of `tile`."""
  h, w = maps.shape[1:3]
  pad = [(0, 0), (0, -h % tile), (0, -w % tile)] + [(0, 0)] * (maps.ndim - 3)
  return np.pad(maps, pad, **pad_args) if h % tile or w % tile else maps


def _tile_reduce(maps: np.ndarray, tile: int, ufunc) -> np.ndarray:
  """(J, R*tile, C*tile, ...) -> (J, R, C, ...), reducing each tile with a binary ufunc."""
  num_joints, h, w = maps.shape[:3]
  rows = _reduce_axis(maps.reshape(num_joints, h // tile, tile, -1), 2, ufunc)
  return _reduce_axis(rows.reshape(num_joints, h // tile, w // tile, tile, -1), 3,
                      ufunc).reshape(num_joints, h // tile, w // tile, *maps.shape[3:])


def _reduce_axis(array: np.ndarray, axis: int, ufunc) -> np.ndarray:
  """`ufunc.reduce` over a short axis, slice by slice (much faster than NumPy's strided reduce)."""
  slices = np.moveaxis(array, axis, 0)
  result = slices[0].copy()
  for part in slices[1:]:
    ufunc(result, part, out=result)
  return result


def parse(heatmaps: np.ndarray, tags: np.ndarray,
          keypoint_set: keypoints_lib.KeypointSet = keypoints_lib.COCO,
          config: GroupingConfig = GroupingConfig()) -> tuple[np.ndarray, np.ndarray]:
  """Groups one image's NumPy maps into people (the reference's `HeatmapParser.parse`).

  Args:
    heatmaps: float32 (J, H, W) at network-input resolution.
    tags: float32 (J, H, W, T).
    keypoint_set: gives the joint order of the grouping.
    config: thresholds and switches.

  Returns:
    people: float32 (P, J, 3 + T) in map pixels (x, y, value, tags); refined joints have tags 0.
    scores: float32 (P,), the mean joint value before refine.
  """
  return parse_maps(HostMaps(heatmaps, tags, config), keypoint_set, config)


def parse_maps(maps: MapSource, keypoint_set: keypoints_lib.KeypointSet = keypoints_lib.COCO,
               config: GroupingConfig = GroupingConfig(),
               seconds: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`parse` on maps wherever they are (`MapSource`). `seconds`, if given, receives the time of
  "matching" (candidates, match_by_tag, adjust, scores) and "refine"."""
  start = time.perf_counter()
  people = match_by_tag(maps.candidates(), keypoint_set.grouping_order, config)
  if config.adjust:
    people = adjust(people, maps)
  scores = person_scores(people)
  matched = time.perf_counter()
  if config.refine:
    people = refine(people, maps)
  if seconds is not None:
    seconds.update(matching=matched - start, refine=time.perf_counter() - matched)
  return people, scores
