"""pycocotools run directly: the independent truth for the metrics the project reports."""

import contextlib
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def keypoint_ap(annotation_file, results: list[dict], image_ids=None) -> float:
  """COCO keypoint AP (OKS 0.50:0.95) of `results` over `image_ids` (default: every image of
  `annotation_file`), computed by pycocotools' COCOeval itself; 0 where nothing was found
  (pycocotools cannot load an empty result list)."""
  return keypoint_stats(annotation_file, results, image_ids)["AP"]


def keypoint_stats(annotation_file, results: list[dict], image_ids=None) -> dict[str, float]:
  """`COCOeval.stats` of `keypoint_ap`, by name: AP, AP50, AP75, APM, APL, AR, AR50, ..."""
  names = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
  if not results:
    return dict.fromkeys(names, 0.0)
  with contextlib.redirect_stdout(io.StringIO()):
    ground_truth = COCO(str(annotation_file))
    evaluator = COCOeval(ground_truth, ground_truth.loadRes([dict(r) for r in results]),
                         "keypoints")
    if image_ids is not None:
      evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return {name: float(value) for name, value in zip(names, evaluator.stats)}


def ground_truth_of(results: list[dict], images: list[dict], per_image: int = 2) -> dict:
  """A COCO keypoint dataset whose people are the `per_image` best-scored `results` of each
  image (all joints labelled visible; box and area from the result's box). Scoring results
  against the ground truth made from them gives a non-zero AP that moves when they move, even
  for a network with random weights (whose AP on the real annotations is 0)."""
  annotations = []
  for image in images:
    found = sorted((r for r in results if r["image_id"] == image["id"]),
                   key=lambda r: -r["score"])[:per_image]
    for result in found:
      keypoints = list(result["keypoints"])
      keypoints[2::3] = [2] * (len(keypoints) // 3)
      x, y, w, h = result["bbox"]
      annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": 1,
                          "iscrowd": 0, "keypoints": keypoints,
                          "num_keypoints": len(keypoints) // 3, "bbox": [x, y, w, h],
                          "area": max(w * h, 1.0)})
  return {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "person"}]}
