"""COCO-style person keypoint annotations: reading, checking, people and the ignore mask.

Facts of the reference (HigherHRNet's `CocoKeypoints`) that this module reproduces:
- training keeps the images with at least one annotation of any kind (crowd included);
- the people of an image are the annotations with `iscrowd == 0 or num_keypoints > 0`;
- the ignore mask is the union of the crowd regions and of the non-crowd people without
  keypoints, rasterised with pycocotools at the stored image size.

Beyond the reference (which crashes there): at most `MAX_PEOPLE` people with keypoints are kept
per image, the largest by area; the others join the ignore mask so that they are neither
positives nor background.

Evaluation needs more than the people: `ground_truth_json` keeps every annotation of an image
(crowds and dropped people included) with the fields pycocotools' keypoint evaluation reads, and
`coco_annotations` turns them back into the json's annotations.
"""

import dataclasses
import functools
import json
import pathlib

import numpy as np
from pycocotools import mask as mask_utils

from ehrnet_jax.errors import UserError
from ehrnet_jax.keypoints import KeypointSet

MAX_PEOPLE = 30  # The reference's MAX_NUM_PEOPLE: rows of the tag-loss joint list.
# What `COCOeval(iouType="keypoints")` reads of a ground-truth annotation besides image_id and
# category_id.
GROUND_TRUTH_FIELDS = ("id", "bbox", "area", "iscrowd", "num_keypoints", "keypoints")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One image of a COCO json and its annotations, fields checked and completed."""
  image_id: int
  file_name: str
  height: int
  width: int
  annotations: tuple[dict, ...]


@dataclasses.dataclass(frozen=True)
class People:
  """The people of one image, as arrays; N people, J joints."""
  keypoints: np.ndarray  # (N, J, 3) float32: x, y, v in stored-image pixels.
  bbox: np.ndarray  # (N, 4) float32: x, y, w, h.
  area: np.ndarray  # (N,) float32.
  is_crowd: np.ndarray  # (N,) bool.
  num_keypoints: np.ndarray  # (N,) int32.
  annotation_id: np.ndarray  # (N,) int64.
  dropped: tuple[dict, ...]  # People with keypoints beyond MAX_PEOPLE (smallest first out).


def _require(record: dict, field: str, where: str, kind: type | tuple[type, ...]):
  if field not in record:
    raise UserError(f"{where}: missing field '{field}'")
  if not isinstance(record[field], kind):
    raise UserError(f"{where}: field '{field}' is {type(record[field]).__name__}, "
                    f"expected {getattr(kind, '__name__', kind)}")
  return record[field]


def _complete_annotation(ann: dict, num_joints: int, where: str) -> dict:
  """Checks one annotation and fills the fields COCO tools derive when absent."""
  keypoints = _require(ann, "keypoints", where, list)
  if len(keypoints) != 3 * num_joints:
    raise UserError(f"{where}: 'keypoints' has {len(keypoints)} values, expected "
                    f"{3 * num_joints} (x, y, v for {num_joints} joints)")
  visible = np.asarray(keypoints, np.float32).reshape(num_joints, 3)[:, 2] > 0
  bbox = ann.get("bbox", [0.0, 0.0, 0.0, 0.0])
  if not (isinstance(bbox, list) and len(bbox) == 4):
    raise UserError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
  return {
      **ann,
      "iscrowd": int(ann.get("iscrowd", 0)),
      "num_keypoints": int(ann.get("num_keypoints", visible.sum())),
      "bbox": bbox,
      "area": float(ann.get("area", bbox[2] * bbox[3])),
      "id": int(ann.get("id", -1)),
  }


def load_coco_json(json_path: pathlib.Path, keypoint_set: KeypointSet) -> list[ImageRecord]:
  """Reads a COCO keypoints json into one record per image (all images, json order)."""
  try:
    data = json.loads(pathlib.Path(json_path).read_text())
  except FileNotFoundError:
    raise UserError(f"{json_path}: annotation file not found") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise UserError(f"{json_path}: not valid JSON ({error})") from None
  if not isinstance(data, dict):
    raise UserError(f"{json_path}: expected a JSON object with 'images' and 'annotations'")
  images = _require(data, "images", str(json_path), list)
  annotations = _require(data, "annotations", str(json_path), list)
  for category in data.get("categories", []):
    names = category.get("keypoints")
    if names is not None and len(names) != keypoint_set.num_joints:
      raise UserError(f"{json_path}: category '{category.get('name')}' has {len(names)} keypoints, "
                      f"keypoint set '{keypoint_set.name}' has {keypoint_set.num_joints}")

  by_image: dict[int, list[dict]] = {}
  for index, image in enumerate(images):
    where = f"{json_path}: images[{index}]"
    image_id = _require(image, "id", where, int)
    if image_id in by_image:
      raise UserError(f"{where}: duplicate image id {image_id}")
    by_image[image_id] = []
  for index, ann in enumerate(annotations):
    where = f"{json_path}: annotations[{index}]"
    image_id = _require(ann, "image_id", where, int)
    where += f" (image id {image_id}, annotation id {ann.get('id')})"
    if image_id not in by_image:
      raise UserError(f"{where}: no image with this id in 'images'")
    by_image[image_id].append(_complete_annotation(ann, keypoint_set.num_joints, where))

  records = []
  for index, image in enumerate(images):
    where = f"{json_path}: images[{index}] (image id {image['id']})"
    records.append(ImageRecord(
        image_id=image["id"],
        file_name=_require(image, "file_name", where, str),
        height=_require(image, "height", where, int),
        width=_require(image, "width", where, int),
        annotations=tuple(by_image[image["id"]])))
  return records


def select_images(records: list[ImageRecord], all_images: bool) -> list[ImageRecord]:
  """Training keeps images with any annotation (crowd included); evaluation keeps all."""
  return [r for r in records if all_images or r.annotations]


def select_people(record: ImageRecord, num_joints: int, max_people: int = MAX_PEOPLE) -> People:
  """The reference's people (`iscrowd == 0 or num_keypoints > 0`), at most `max_people` with
  keypoints: the largest by area are kept, ties in json order."""
  people = [a for a in record.annotations if a["iscrowd"] == 0 or a["num_keypoints"] > 0]
  labelled = [i for i, a in enumerate(people) if a["num_keypoints"] > 0]
  by_area = sorted(labelled, key=lambda i: -people[i]["area"])  # Stable: json order on ties.
  dropped_index = set(by_area[max_people:])
  kept = [a for i, a in enumerate(people) if i not in dropped_index]
  return People(
      keypoints=np.asarray([a["keypoints"] for a in kept], np.float32).reshape(
          len(kept), num_joints, 3),
      bbox=np.asarray([a["bbox"] for a in kept], np.float32).reshape(len(kept), 4),
      area=np.asarray([a["area"] for a in kept], np.float32),
      is_crowd=np.asarray([a["iscrowd"] for a in kept], bool),
      num_keypoints=np.asarray([a["num_keypoints"] for a in kept], np.int32),
      annotation_id=np.asarray([a["id"] for a in kept], np.int64),
      dropped=tuple(people[i] for i in sorted(dropped_index)))


def ground_truth_json(record: ImageRecord) -> str:
  """Every annotation of the image, json order, as JSON text of its `GROUND_TRUTH_FIELDS`.

  Text keeps the json's values exactly: TFDS stores float64 features as float32.
  """
  return json.dumps([{field: ann[field] for field in GROUND_TRUTH_FIELDS}
                     for ann in record.annotations])


def coco_annotations(text: str | bytes, image_id: int, category_id: int = 1) -> list[dict]:
  """The json annotations of one image back from `ground_truth_json`'s text."""
  return [{"image_id": image_id, "category_id": category_id, **ann} for ann in json.loads(text)]


def _region(ann: dict, height: int, width: int, where: str) -> np.ndarray:
  """(H, W) uint8 raster of one annotation's segmentation (polygons or RLE)."""
  segmentation = ann.get("segmentation")
  if not segmentation:
    # CrowdPose-style files carry no segmentation: the box is the best region we have.
    x, y, w, h = ann["bbox"]
    if w <= 0 or h <= 0:
      raise UserError(f"{where}: annotation {ann['id']} needs an ignore region but has neither "
                      "'segmentation' nor a non-empty 'bbox'")
    segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
  try:
    if isinstance(segmentation, list):
      rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
      rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
      rle = segmentation
    return mask_utils.decode(rle)
  except Exception as error:  # pylint: disable=broad-except  # pycocotools raises bare Exception.
    raise UserError(f"{where}: cannot rasterise the segmentation of annotation {ann['id']} "
                    f"({error})") from None


def ignore_mask(record: ImageRecord, dropped: tuple[dict, ...], where: str) -> np.ndarray:
  """(H, W) uint8, 1 where the loss ignores the image: crowds, people without keypoints and
  people dropped beyond MAX_PEOPLE."""
  mask = np.zeros((record.height, record.width), np.uint8)
  masked = [a for a in record.annotations if a["iscrowd"] or a["num_keypoints"] == 0]
  for ann in masked + list(dropped):
    np.maximum(mask, _region(ann, record.height, record.width, where), out=mask)
  return mask


def encode_mask(mask: np.ndarray) -> bytes:
  """(H, W) uint8 {0, 1} -> COCO compressed RLE counts (pycocotools' string form)."""
  return mask_utils.encode(np.asfortranarray(mask))["counts"]


@functools.lru_cache(maxsize=256)
def empty_mask_counts(height: int, width: int) -> bytes:
  """The RLE counts of an all-zero (H, W) mask (most images: nothing ignored)."""
  return encode_mask(np.zeros((height, width), np.uint8))


def decode_mask(counts: bytes, height: int, width: int) -> np.ndarray:
  """COCO compressed RLE counts -> (H, W) uint8 {0, 1}, C order."""
  if counts == empty_mask_counts(height, width):  # Skips a decode and a transpose.
    return np.zeros((height, width), np.uint8)
  return np.ascontiguousarray(mask_utils.decode({"size": [height, width], "counts": counts}))
