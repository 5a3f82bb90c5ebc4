"""Helpers shared by tests/test_data_*.py: one build of coco-mini per session, small COCO folders.

The coco-mini build is cached at module level (pytest imports this module once per session), so
every test file that needs it reuses the same TFDS directory.
"""

import json
import pathlib

import numpy as np

_BUILT: dict[str, pathlib.Path] = {}


def coco_mini_with_val(coco_mini_dir: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
  """A COCO folder whose train and val splits are both coco-mini (symlinks, no copies)."""
  (root / "annotations").mkdir(parents=True)
  train_json = coco_mini_dir / "annotations" / "person_keypoints_train2017.json"
  (root / "annotations" / "person_keypoints_train2017.json").symlink_to(train_json)
  (root / "annotations" / "person_keypoints_val2017.json").symlink_to(train_json)
  (root / "train2017").symlink_to(coco_mini_dir / "train2017")
  (root / "val2017").symlink_to(coco_mini_dir / "train2017")
  return root


def built_coco_mini(tmp_path_factory, coco_mini_dir: pathlib.Path) -> pathlib.Path:
  """TFDS data dir holding coco-mini as 'train' (36 images) and 'validation' (all 80)."""
  if "coco" not in _BUILT:
    from ehrnet_jax.data import coco_tfds  # pylint: disable=g-import-not-at-top
    root = coco_mini_with_val(coco_mini_dir, tmp_path_factory.mktemp("coco_root"))
    data_dir = tmp_path_factory.mktemp("tfds")
    coco_tfds.build(root, data_dir)
    _BUILT["coco"] = data_dir
  return _BUILT["coco"]


def person(keypoints: np.ndarray, bbox, ann_id: int, image_id: int, **fields) -> dict:
  """A COCO person annotation with a box polygon as segmentation."""
  x, y, w, h = bbox
  keypoints = np.asarray(keypoints, np.float64)
  return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
          "keypoints": keypoints.reshape(-1).tolist(), "bbox": [x, y, w, h], "area": w * h,
          "num_keypoints": int((keypoints[:, 2] > 0).sum()),
          "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], **fields}


def write_coco(root: pathlib.Path, images: list[dict], annotations: list[dict],
               json_name: str = "annotations/person_keypoints_train2017.json") -> pathlib.Path:
  """Writes a COCO json (images, annotations, one person category) under root."""
  path = root / json_name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"images": images, "annotations": annotations,
                              "categories": [{"id": 1, "name": "person"}]}))
  return path
