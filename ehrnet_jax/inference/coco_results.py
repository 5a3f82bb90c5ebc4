"""COCO keypoint results: entries per person, the results file, and pycocotools evaluation.

NumPy and pycocotools only (no JAX). Entries follow the reference's `evaluate()`: every person is
kept (no OKS-NMS, no rescoring), keypoints are (x, y, value) per joint, the score is the grouping
score and the box spans the keypoints.
"""

import contextlib
import io
import json
import pathlib

import numpy as np

from ehrnet_jax import atomic
from ehrnet_jax.errors import UserError

# `COCOeval.stats` for iouType="keypoints", in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def person_results(image_id: int, people: np.ndarray, scores: np.ndarray,
                   category_id: int = 1) -> list[dict]:
  """COCO result entries for one image.

  Args:
    image_id: the COCO image id.
    people: (P, J, >=3) in image pixels: x, y, value first.
    scores: (P,) person scores.
    category_id: the person category.
  """
  results = []
  for person, score in zip(np.asarray(people, np.float64), np.asarray(scores, np.float64)):
    xy = person[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    results.append({
        "image_id": int(image_id),
        "category_id": int(category_id),
        "keypoints": person[:, :3].reshape(-1).tolist(),
        "score": float(score),
        "bbox": [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])],
    })
  return results


def write_results(path, results: list[dict]) -> None:
  """Writes result entries as a COCO results JSON file (atomically)."""
  atomic.write_atomically(path, json.dumps(results))


def load_ground_truth(annotation_file):
  """Loads a COCO annotation file with pycocotools, quietly; UserError if it is not one."""
  from pycocotools.coco import COCO
  path = pathlib.Path(annotation_file)
  if not path.is_file():
    raise UserError(f"{path}: annotation file not found (expected a COCO person_keypoints JSON)")
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      return COCO(str(path))
  except (ValueError, KeyError, TypeError) as error:
    raise UserError(f"{path}: not a COCO annotation file ({error})") from error


def evaluate_keypoints(ground_truth, results: list[dict], image_ids=None,
                       verbose: bool = False) -> dict[str, float]:
  """pycocotools keypoint evaluation; returns `COCOeval.stats` by name (`"AP"`, `"AR"`, ...).

  Args:
    ground_truth: a `pycocotools.coco.COCO` (see `load_ground_truth`).
    results: entries as made by `person_results` (left as they are).
    image_ids: restrict the evaluation to these images (default: all images of the annotations).
    verbose: print pycocotools' summary table.
  """
  from pycocotools.cocoeval import COCOeval
  if not results:   # pycocotools cannot load an empty result list; nothing found scores 0
    return {name: 0.0 for name in STAT_NAMES}
  with contextlib.redirect_stdout(io.StringIO()):
    # loadRes adds fields to the entries it is given (id, area, segmentation, ...): copies.
    evaluator = COCOeval(ground_truth, ground_truth.loadRes([dict(r) for r in results]),
                         "keypoints")
    if image_ids is not None:
      evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
  summary = io.StringIO()
  with contextlib.redirect_stdout(summary):
    evaluator.summarize()
  if verbose:
    print(summary.getvalue(), end="")
  return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}
