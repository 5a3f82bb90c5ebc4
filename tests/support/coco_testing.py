"""pycocotools run directly: the independent truth for the metrics the project reports."""

import contextlib
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def keypoint_ap(annotation_file, results: list[dict], image_ids=None) -> float:
  """COCO keypoint AP (OKS 0.50:0.95) of `results` over `image_ids` (default: every image of
  `annotation_file`), computed by pycocotools' COCOeval itself; 0 where nothing was found
  (pycocotools cannot load an empty result list)."""
  if not results:
    return 0.0
  with contextlib.redirect_stdout(io.StringIO()):
    ground_truth = COCO(str(annotation_file))
    evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), "keypoints")
    if image_ids is not None:
      evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return float(evaluator.stats[0])
