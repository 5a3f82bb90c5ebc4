"""Synthetic pose streams with known identities, built from real annotated poses (tracking tests).

`real_poses` reads the best-labelled people of a COCO keypoint file, normalised to unit height.
A `Walker` moves and scales one of them along a smooth path; `stream` renders walkers into
per-frame people arrays, as a pose model would report them (pixel noise, missing joints, people
in no particular order), with the true identity of every row. `identity_switches` counts MOT's
identity switches of a tracker's ids against that truth.
"""

import dataclasses
import json

import numpy as np

FRAMES = 60
CANVAS_WH = (640, 360)


def real_poses(annotation_file, count: int, min_labelled: int = 12) -> list[np.ndarray]:
  """The `count` non-crowd people of `annotation_file` with the most labelled joints (at least
  `min_labelled`), each float64 (J, 3): x, y relative to the centre of its labelled joints' box,
  in units of the box's height; score 1 where labelled, all zero where not."""
  with open(annotation_file, encoding="utf-8") as f:
    annotations = json.load(f)["annotations"]
  chosen = sorted((a for a in annotations if not a["iscrowd"]
                   and a["num_keypoints"] >= min_labelled),
                  key=lambda a: (-a["num_keypoints"], a["id"]))[:count]
  assert len(chosen) == count, f"{annotation_file} has {len(chosen)} people with enough joints"
  poses = []
  for annotation in chosen:
    raw = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
    labelled = raw[:, 2] > 0
    low, high = raw[labelled, :2].min(0), raw[labelled, :2].max(0)
    xy = (raw[:, :2] - (low + high) / 2) / (high[1] - low[1])
    poses.append(np.where(labelled[:, None], np.concatenate([xy, np.ones((len(raw), 1))], 1), 0))
  return poses


@dataclasses.dataclass(frozen=True)
class Walker:
  """One person: `pose` (J, 3) from `real_poses`, its centre moving in a straight line from
  `start` to `end` (pixels) over the stream and swaying vertically by up to `sway` pixels (two
  periods of a sine), its height going linearly from `heights[0]` to `heights[1]` pixels; absent
  in the frames of `hidden` and outside `present` (first, last + 1)."""
  pose: np.ndarray
  start: tuple[float, float]
  end: tuple[float, float]
  heights: tuple[float, float] = (150.0, 150.0)
  sway: float = 0.0
  hidden: range = range(0)
  present: tuple[int, int] = (0, FRAMES)

  def at(self, frame: int) -> np.ndarray:
    """float64 (J, 3): the exact pose in `frame` (undetected joints all zero)."""
    progress = frame / (FRAMES - 1)
    centre = np.add(self.start, progress * np.subtract(self.end, self.start))
    centre[1] += self.sway * np.sin(4 * np.pi * progress)
    height = self.heights[0] + progress * (self.heights[1] - self.heights[0])
    xy = centre + self.pose[:, :2] * height
    return np.where(self.pose[:, 2:] > 0, np.concatenate([xy, self.pose[:, 2:]], 1), 0.0)

  def visible(self, frame: int) -> bool:
    return self.present[0] <= frame < self.present[1] and frame not in self.hidden


def stream(walkers: list[Walker], seed: int, noise_px: float = 2.0, missing: float = 0.2,
           frames: int = FRAMES) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Per frame: float32 people (P_t, J, 3) and their walkers' indices int (P_t,), rows in random
  order, each detected joint moved by Gaussian noise of `noise_px` pixels per axis and each joint
  missing (all zero) with probability `missing`."""
  rng = np.random.default_rng(seed)
  people, truth = [], []
  for frame in range(frames):
    present = rng.permutation([i for i, w in enumerate(walkers) if w.visible(frame)])
    poses = np.stack([walkers[i].at(frame) for i in present]) if len(present) else np.zeros(
        (0, len(walkers[0].pose), 3))
    poses[..., :2] += rng.normal(0, noise_px, poses[..., :2].shape)
    kept = (poses[..., 2:] > 0) & (rng.random(poses[..., 2:].shape) >= missing)
    people.append(np.where(kept, poses, 0.0).astype(np.float32))
    truth.append(present.astype(np.int64))
  return people, truth


def identity_switches(truth: list[np.ndarray], ids: list[np.ndarray]) -> int:
  """MOT's IDSW: how often a true person's track id differs from the id it had when last seen."""
  last, switches = {}, 0
  for people, tracks in zip(truth, ids, strict=True):
    for person, track in zip(people.tolist(), tracks.tolist(), strict=True):
      switches += person in last and last[person] != track
      last[person] = track
  return switches
