"""The sample data bundled inside the package (see `sample_data/ATTRIBUTION.md`).

A mini COCO folder (`annotations/person_keypoints_train2017.json` + `train2017/*.jpg`, seven
CC-BY / CC-BY-SA images) and the authors' H-4 model with random weights as a state dict, so that
every command runs with no download.
"""

import importlib.resources
import pathlib

SPLIT = "train2017"


def sample_dir() -> pathlib.Path:
  return pathlib.Path(str(importlib.resources.files("ehrnet_jax") / "sample_data"))


def coco_dir() -> pathlib.Path:
  """A COCO-layout folder: `annotations/person_keypoints_train2017.json`, `train2017/`."""
  return sample_dir()


def annotation_file() -> pathlib.Path:
  """The sample images' COCO keypoint annotations (`coco_dir()`'s, for split `SPLIT`)."""
  return coco_dir() / "annotations" / f"person_keypoints_{SPLIT}.json"


def images() -> list[pathlib.Path]:
  return sorted((sample_dir() / SPLIT).glob("*.jpg"))


def reference_weights() -> pathlib.Path:
  """State dict (.npz, reference key names) of the authors' H-4 model with random weights."""
  return sample_dir() / "H-4_reference_weights.npz"
