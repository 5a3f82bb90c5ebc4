"""People tracked across video frames from their poses alone (any model's output).

`Tracker.update` gives each frame's people track ids that persist from frame to frame. Every live
track's pose is predicted to the new frame at constant velocity and compared with each new person
by object keypoint similarity (`keypoint_similarity`, the keypoint set's OKS sigmas); tracks and
people are then paired by an optimal assignment (`scipy.optimize.linear_sum_assignment` on
1 - OKS). Pairs below `TrackerConfig.min_similarity`, or with no joint detected in both, stay
unpaired. A track unseen for up to `max_gap` frames can still be resumed; after that it is dropped.
People left unpaired start new tracks, their ids counting up from 0 (never reused).

A track remembers every joint it has seen: joints missing from its latest person keep their last
position, moved with the person. Optionally each track's keypoints are smoothed by a One-Euro
filter (Casiez, Roussel and Vogel, CHI 2012; `OneEuroConfig`), readable as `Tracker.smoothed`.
`track_poses` runs a tracker over a sequence of frames.
"""

import dataclasses
from typing import Iterable

import numpy as np
from scipy import optimize

from ehrnet_jax import keypoints
from ehrnet_jax.errors import UserError

FRAME_RATE = 30.0   # frames per second assumed where `Tracker.update` is given no timestamp


@dataclasses.dataclass(frozen=True)
class OneEuroConfig:
  """A One-Euro filter: a first-order low-pass whose cutoff rises with the joint's speed.

  cutoff = min_cutoff + beta * speed, the speed (pixels/s) itself low-passed at d_cutoff. At rest
  the cutoff is `min_cutoff`: lower removes more jitter but lags more when motion starts. `beta`
  sets how fast the cutoff opens up with speed: higher lags less on fast motion but lets more
  jitter through while moving. `d_cutoff` smooths the speed estimate (rarely needs changing).
  """
  min_cutoff: float = 1.0   # Hz
  beta: float = 0.01        # Hz per pixel/s: +1 Hz at 100 px/s
  d_cutoff: float = 1.0     # Hz

  def __post_init__(self):
    for name in ("min_cutoff", "d_cutoff"):
      if not getattr(self, name) > 0:
        raise UserError(f"OneEuroConfig.{name}: expected a cutoff > 0 Hz, got "
                        f"{getattr(self, name)}")
    if not self.beta >= 0:
      raise UserError(f"OneEuroConfig.beta: expected >= 0, got {self.beta}")


@dataclasses.dataclass(frozen=True)
class TrackerConfig:
  """How people are matched to tracks, and whether their keypoints are smoothed."""
  max_gap: int = 10              # frames a track may go unseen and still be resumed
  min_similarity: float = 0.3    # OKS below which a person is not matched to a track
  smoothing: OneEuroConfig | None = None
  min_keypoint_score: float = 0.0   # joints scoring at most this count as undetected

  def __post_init__(self):
    if not (isinstance(self.max_gap, (int, np.integer)) and self.max_gap >= 0):
      raise UserError(f"TrackerConfig.max_gap: expected a frame count >= 0, got {self.max_gap!r}")
    if not 0 <= self.min_similarity <= 1:
      raise UserError(f"TrackerConfig.min_similarity: expected an OKS in [0, 1], got "
                      f"{self.min_similarity}")


def box_areas(xy: np.ndarray, detected: np.ndarray) -> np.ndarray:
  """Areas (N,) of the bounding boxes of each pose's detected joints; xy (N, J, 2), detected
  (N, J) bool. 0 for a pose with fewer than two distinct detected joints."""
  low = np.where(detected[..., None], xy, np.inf).min(1)     # (N, 2)
  high = np.where(detected[..., None], xy, -np.inf).max(1)   # (N, 2)
  sides = np.where(detected.any(1)[:, None], high - low, 0.0)
  return sides[:, 0] * sides[:, 1]


def keypoint_similarity(a: np.ndarray, b: np.ndarray, sigmas) -> np.ndarray:
  """Object keypoint similarity of every pose of `a` (A, J, >=3) with every pose of `b`
  (B, J, >=3) -> float64 (A, B). Joints with score (index 2) > 0 are detected.

  As COCO's: the mean over joints of exp(-d^2 / (2 s^2 k^2)), k = 2 sigma, d the joint's distance;
  but over the joints detected in both poses (0 where there are none), and with s^2 the mean of
  the two poses' keypoint-box areas (COCO uses the ground truth's segmentation area), so that the
  similarity is symmetric.
  """
  detected_a, detected_b = a[..., 2] > 0, b[..., 2] > 0
  areas = (box_areas(a[..., :2], detected_a)[:, None]
           + box_areas(b[..., :2], detected_b)[None, :]) / 2   # (A, B)
  squared = ((a[:, None, :, :2] - b[None, :, :, :2]) ** 2).sum(-1)   # (A, B, J)
  variances = (2 * np.asarray(sigmas, np.float64)) ** 2          # (J,)
  # pycocotools' guard for a zero area: a joint then matches only exactly.
  exponent = squared / variances / (areas[..., None] + np.spacing(1)) / 2
  both = detected_a[:, None] & detected_b[None, :]               # (A, B, J)
  count = both.sum(-1)
  return np.where(both, np.exp(-exponent), 0.0).sum(-1) / np.maximum(count, 1)


def matched_pairs(similarity: np.ndarray, min_similarity: float
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Rows and columns (each (M,)) of the pairs of an optimal assignment on `similarity` (P, T):
  `linear_sum_assignment` on 1 - similarity, where pairs below `min_similarity` or at 0 count as
  0 and are then left out."""
  allowed = (similarity >= min_similarity) & (similarity > 0)
  rows, columns = optimize.linear_sum_assignment(1 - np.where(allowed, similarity, 0.0))
  paired = allowed[rows, columns]
  return rows[paired], columns[paired]


def smoothing_factor(cutoff_hz, interval_s):
  """Weight of a new sample in a first-order low-pass with this cutoff, samples `interval_s`
  apart: r / (1 + r), r = 2 pi cutoff interval (Casiez et al.'s alpha)."""
  r = 2 * np.pi * cutoff_hz * interval_s
  return r / (1 + r)


def one_euro_step(config: OneEuroConfig, value, derivative, interval_s, sample):
  """One step of a One-Euro filter over points (..., 2): its previous output `value` and speed
  estimate `derivative` (pixels/s), the time since then (...,) and the new `sample` -> the new
  (value, derivative). The cutoff follows the point's speed (norm of the 2-D derivative)."""
  interval_s = interval_s[..., None]
  derivative = derivative + smoothing_factor(config.d_cutoff, interval_s) * (
      (sample - value) / interval_s - derivative)
  cutoff = config.min_cutoff + config.beta * np.linalg.norm(derivative, axis=-1, keepdims=True)
  return value + smoothing_factor(cutoff, interval_s) * (sample - value), derivative


@dataclasses.dataclass
class _Tracks:
  """Live tracks as parallel arrays (T tracks, J joints)."""
  ids: np.ndarray          # int64 (T,)
  poses: np.ndarray        # float64 (T, J, 3): each joint's last position (moved) and score
  velocities: np.ndarray   # float64 (T, 2): pixels per frame
  last_frames: np.ndarray  # int64 (T,): frame index where each track was last matched
  smoothed: np.ndarray     # float64 (T, J, 2): One-Euro outputs
  speeds: np.ndarray       # float64 (T, J, 2): One-Euro derivatives, pixels/s
  smoothed_at: np.ndarray  # float64 (T, J): time of each joint's last One-Euro step, NaN: none

  @classmethod
  def started(cls, ids: np.ndarray, people: np.ndarray, frame: int) -> "_Tracks":
    """New tracks `ids` (N,) for `people` (N, J, 3) seen first in `frame`, at rest."""
    count, joints = people.shape[:2]
    return cls(ids, people, np.zeros((count, 2)), np.full(count, frame, np.int64),
               np.zeros((count, joints, 2)), np.zeros((count, joints, 2)),
               np.full((count, joints), np.nan))

  def select(self, index) -> "_Tracks":
    return _Tracks(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

  def concatenate(self, other: "_Tracks") -> "_Tracks":
    return _Tracks(*(np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                     for f in dataclasses.fields(self)))

  def predicted(self, frame: int) -> np.ndarray:
    """(T, J, 3): the remembered poses moved at constant velocity to `frame`."""
    shift = self.velocities * (frame - self.last_frames)[:, None]
    return np.concatenate([self.poses[..., :2] + shift[:, None], self.poses[..., 2:]], -1)


def _observed(tracks: _Tracks, people: np.ndarray, frame: int) -> _Tracks:
  """`tracks` (M) after seeing `people` (M, J, 3) (undetected joints scored 0) in `frame`: the
  person's mean shift over the joints detected now and seen before sets the velocity and moves
  the remembered joints not detected now."""
  detected = people[..., 2] > 0
  common = detected & (tracks.poses[..., 2] > 0)
  offsets = np.where(common[..., None], people[..., :2] - tracks.poses[..., :2], 0.0)
  shifts = offsets.sum(1) / np.maximum(common.sum(1), 1)[:, None]   # (M, 2)
  moved = np.concatenate([tracks.poses[..., :2] + shifts[:, None], tracks.poses[..., 2:]], -1)
  poses = np.where(detected[..., None], people, moved)
  velocities = shifts / (frame - tracks.last_frames)[:, None]
  return dataclasses.replace(tracks, poses=poses, velocities=velocities,
                             last_frames=np.full_like(tracks.last_frames, frame))


def _smoothed(config: OneEuroConfig, tracks: _Tracks, people: np.ndarray, time_s: float
              ) -> _Tracks:
  """`tracks` (M) after a One-Euro step on the detected joints of `people` (M, J, 3) at `time_s`;
  a joint's first sample passes unchanged."""
  detected = people[..., 2] > 0
  first = np.isnan(tracks.smoothed_at)
  interval_s = np.where(first, 1.0, time_s - tracks.smoothed_at)   # (M, J); 1: unused
  value, speed = one_euro_step(config, tracks.smoothed, tracks.speeds, interval_s,
                               people[..., :2])
  value = np.where(first[..., None], people[..., :2], value)
  speed = np.where(first[..., None], 0.0, speed)
  keep = detected[..., None]
  return dataclasses.replace(
      tracks, smoothed=np.where(keep, value, tracks.smoothed),
      speeds=np.where(keep, speed, tracks.speeds),
      smoothed_at=np.where(detected, time_s, tracks.smoothed_at))


class Tracker:
  """Gives the people of successive frames track ids (see the module docstring)."""

  def __init__(self, keypoint_set: keypoints.KeypointSet = keypoints.COCO,
               config: TrackerConfig = TrackerConfig()):
    self.keypoint_set = keypoint_set
    self.config = config
    no_people = np.zeros((0, keypoint_set.num_joints, 3))
    self._tracks = _Tracks.started(np.zeros(0, np.int64), no_people, 0)
    self._frame = 0
    self._time_s = -np.inf
    self._next_id = 0
    self._smoothed = no_people.astype(np.float32)

  @property
  def smoothed(self) -> np.ndarray:
    """float32 (P, J, 3) read-only: the last update's people (x, y, score), their detected joints
    smoothed (the input itself where `config.smoothing` is None), undetected joints all zero."""
    return self._smoothed

  def update(self, people: np.ndarray, timestamp: float | None = None) -> np.ndarray:
    """Track ids, int64 (P,), of one frame's people, float (P, J, >=3) in image pixels: x, y,
    score per joint (score > `config.min_keypoint_score`: detected; `ehrnet_jax.inference`'s
    output, whose undetected joints are all zero). `timestamp`: the frame's time in seconds,
    increasing (None: frame index / 30 fps); only smoothing uses it."""
    people = self._checked(people)
    time_s = self._frame / FRAME_RATE if timestamp is None else float(timestamp)
    if not time_s > self._time_s:
      raise UserError(f"timestamp: expected times that increase from frame to frame, got {time_s} "
                      f"s after {self._time_s} s")
    frame, config = self._frame, self.config
    live = self._tracks.select(frame - self._tracks.last_frames - 1 <= config.max_gap)
    similarity = keypoint_similarity(people, live.predicted(frame), self.keypoint_set.sigmas)
    rows, columns = matched_pairs(similarity, config.min_similarity)
    new = np.setdiff1d(np.arange(len(people)), rows)
    born = _Tracks.started(np.arange(self._next_id, self._next_id + len(new)), people[new], frame)
    self._next_id += len(new)
    matched = _observed(live.select(columns), people[rows], frame)
    order = np.argsort(np.concatenate([rows, new]))   # back to the people's order
    current = matched.concatenate(born).select(order)
    if config.smoothing is not None:
      current = _smoothed(config.smoothing, current, people, time_s)
      smoothed = np.where(people[..., 2:] > 0, np.concatenate(
          [current.smoothed, people[..., 2:]], -1), 0.0)
    else:
      smoothed = people
    self._tracks = live.select(np.setdiff1d(np.arange(len(live.ids)), columns)).concatenate(
        current)
    self._frame, self._time_s = frame + 1, time_s
    self._smoothed = smoothed.astype(np.float32)
    self._smoothed.flags.writeable = False
    return current.ids.copy()

  def _checked(self, people) -> np.ndarray:
    """float64 (P, J, 3): x, y, score of `people`, undetected joints (score at most
    `config.min_keypoint_score`) set to all zero."""
    people = np.asarray(people)
    joints = self.keypoint_set.num_joints
    if (people.ndim != 3 or people.shape[1] != joints or people.shape[2] < 3
        or not np.issubdtype(people.dtype, np.number)):
      raise UserError(f"people: expected a number array (P, {joints}, >=3) of x, y, score per "
                      f"{self.keypoint_set.name} joint, got {people.dtype} {people.shape}")
    people = people[..., :3].astype(np.float64)
    if not np.isfinite(people).all():
      raise UserError("people: expected finite x, y and scores, got NaN or infinity")
    detected = people[..., 2:] > self.config.min_keypoint_score
    return np.where(detected, people, 0.0)


def track_poses(frames: Iterable[np.ndarray], keypoint_set: keypoints.KeypointSet = keypoints.COCO,
                config: TrackerConfig = TrackerConfig()) -> list[np.ndarray]:
  """Track ids, int64 (P_t,), of each frame's people (P_t, J, >=3) (see `Tracker.update`)."""
  tracker = Tracker(keypoint_set, config)
  return [tracker.update(people) for people in frames]
