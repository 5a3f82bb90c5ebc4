"""COCO keypoint evaluation: run a `PoseEstimator` over a split, write results, score them.

Images come from a COCO folder (`ROOT/annotations/person_keypoints_SPLIT.json` and
`ROOT/SPLIT/*.jpg`) or from the TFDS dataset built by `ehrnet data` (`ehrnet_jax.data.coco_tfds`,
read by index through `tfds.data_source`, without TensorFlow).
As in the reference, every image of the split is run, every person found is kept (no OKS-NMS or
rescoring), and pycocotools' keypoint metrics are reported by name.
"""

import dataclasses
import json
import pathlib
import statistics
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import tqdm

from ehrnet_jax import images as images_lib
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import coco_results
from ehrnet_jax.inference.estimator import PoseEstimator, read_image

TFDS_SPLITS = {"val2017": "validation", "train2017": "train"}
PARTS = ("network", "decode", "grouping")


@dataclasses.dataclass
class Source:
  """What to evaluate: the ground truth, the sorted ids of the images evaluated, and
  `images(ids)`, which yields (image_id, RGB uint8 image) for exactly those ids in that order."""
  ground_truth: object          # pycocotools.coco.COCO
  image_ids: list[int]
  images: Callable[[Sequence[int]], Iterator[tuple[int, np.ndarray]]]


def coco_folder(root, split: str = "val2017", max_images: int | None = None,
                image_ids=None) -> Source:
  """A COCO folder: `root/annotations/person_keypoints_{split}.json` and `root/{split}/`.

  All images of the split (or only `image_ids`), in id order, at most `max_images`.
  """
  root = pathlib.Path(root)
  ground_truth = coco_results.load_ground_truth(_annotation_file(root, split))
  if not (root / split).is_dir():
    raise UserError(f"{root / split}: image folder not found; --coco-dir must hold the images of "
                    f"split {split} in {split}/")
  image_ids = sorted(ground_truth.imgs if image_ids is None else image_ids)[:max_images]

  def images(ids: Sequence[int]):
    for image_id in ids:
      yield image_id, read_image(root / split / ground_truth.imgs[image_id]["file_name"])

  return Source(ground_truth, image_ids, images)


def _annotation_file(root: pathlib.Path, split: str) -> pathlib.Path:
  """`root/annotations/person_keypoints_{split}.json`; a UserError naming the splits found."""
  path = root / "annotations" / f"person_keypoints_{split}.json"
  if path.is_file():
    return path
  if not root.is_dir():
    raise UserError(f"{root}: no such folder; --coco-dir must be the COCO root holding "
                    "annotations/ and the split's images (e.g. val2017/)")
  splits = sorted(f.stem.removeprefix("person_keypoints_")
                  for f in (root / "annotations").glob("person_keypoints_*.json"))
  hint = (f"pass --split {' or '.join(splits)}" if splits else
          "unpack COCO's annotations_trainval2017.zip (cocodataset.org) there")
  raise UserError(f"{path}: annotation file not found; {hint}")


def tfds_dataset(data_dir, split: str = "validation", max_images: int | None = None) -> Source:
  """The dataset built by `ehrnet data` (TFDS); the ground truth is rebuilt from its records.

  The same images as `coco_folder` on the COCO folder it was built from: in id order, at most
  `max_images`. Read by index through `tfds.data_source` (no TensorFlow); `images(ids)` decodes
  only the images asked for.
  """
  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.data import coco_tfds, pipeline
  # pylint: enable=import-outside-toplevel
  split = TFDS_SPLITS.get(split, split)
  source = pipeline.open_split(coco_tfds.load_builder(data_dir), split, "--split")
  # Every record without its image bytes (read again by `images`, only those evaluated).
  records = [{k: v for k, v in source[i].items() if k != "image"} for i in range(len(source))]
  index_of = {int(r["image_id"]): i for i, r in enumerate(records)}
  image_ids = sorted(index_of)[:max_images]
  ground_truth = _ground_truth(records[index_of[i]] for i in image_ids)

  def images(ids: Sequence[int]):
    for image_id in ids:
      encoded = source[index_of[image_id]]["image"]
      yield image_id, cv2.cvtColor(images_lib.decode_image(encoded), cv2.COLOR_BGR2RGB)

  return Source(ground_truth, image_ids, images)


def _ground_truth(records):
  """A pycocotools COCO object from the TFDS records: the COCO json's images and annotations
  (crowds included, values as in the json), so that both sources score alike."""
  # pylint: disable=import-outside-toplevel
  from pycocotools.coco import COCO
  from ehrnet_jax import keypoints
  from ehrnet_jax.data import annotations
  # pylint: enable=import-outside-toplevel
  dataset = {"images": [], "annotations": [], "categories": [{
      "id": 1, "name": "person", "keypoints": list(keypoints.COCO.joints),
      "skeleton": [[a + 1, b + 1] for a, b in keypoints.COCO.skeleton]}]}
  for record in records:
    image_id = int(record["image_id"])
    dataset["images"].append({"id": image_id, "height": int(record["height"]),
                              "width": int(record["width"])})
    dataset["annotations"] += annotations.coco_annotations(record["annotations_json"], image_id)
  ground_truth = COCO()
  ground_truth.dataset = dataset
  ground_truth.createIndex()
  return ground_truth


@dataclasses.dataclass
class Evaluation:
  results: list[dict]          # COCO result entries
  stats: dict[str, float]      # pycocotools metrics by name ("AP", "AR", ...)
  seconds: list[dict]          # per image: seconds per part (PARTS)


def evaluate(estimator: PoseEstimator, source: Source, progress: bool = True,
             verbose: bool = False) -> Evaluation:
  """Runs `estimator` on every image of `source` and scores the results with pycocotools."""
  results, seconds = [], []
  for image_id, image in tqdm.tqdm(source.images(source.image_ids), total=len(source.image_ids),
                                   unit="image", disable=not progress):
    poses = estimator([image])[0]
    results += coco_results.person_results(image_id, poses.people, poses.scores)
    seconds.append(poses.seconds)
  stats = coco_results.evaluate_keypoints(source.ground_truth, results, source.image_ids, verbose)
  return Evaluation(results, stats, seconds)


def timing_summary(seconds: list[dict]) -> dict[str, dict[str, float]]:
  """Mean and median milliseconds per image for each part and in total.

  The median is the steady-state figure: the first image of every input size includes
  compilation, which the mean keeps.
  """
  summary = {}
  for part in (*PARTS, "total"):
    values = [1e3 * (sum(s.values()) if part == "total" else s[part]) for s in seconds]
    summary[part] = {"mean_ms": statistics.fmean(values) if values else 0.0,
                     "median_ms": statistics.median(values) if values else 0.0}
  return summary


def write_outputs(out_dir, evaluation: Evaluation, settings: dict) -> pathlib.Path:
  """`results.json` (COCO results) and `metrics.json` (stats by name, timings, settings)."""
  out_dir = pathlib.Path(out_dir)
  coco_results.write_results(out_dir / "results.json", evaluation.results)
  metrics = {**evaluation.stats, "num_images": len(evaluation.seconds),
             "num_people": len(evaluation.results),
             "ms_per_image": timing_summary(evaluation.seconds), "settings": settings}
  (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
  return out_dir / "metrics.json"
