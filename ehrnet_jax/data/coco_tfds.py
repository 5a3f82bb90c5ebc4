"""TFDS builder for person keypoints from a local COCO-style folder (no network).

Build through the Python API (the `tfds build` command needs apache_beam):

  builder = CocoKeypoints(config="coco", data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=coco_root))

Building needs TensorFlow; reading does not: the records are stored as `array_record`, which
`tfds.data_source` reads by index in TFDS's TF-less mode (`load_builder`, then
`pipeline.open_split`). Builds of versions before 2.0.0 (TFRecord) are refused with the command
that rebuilds them.

TFDS writes into `<version>.incomplete.*` and renames it at the end, removing it on error, so a
failed build never leaves a half-written dataset behind.

Images are stored as their original file bytes: the pipeline decodes them as the reference does
(OpenCV, EXIF orientation ignored, since COCO keypoints are in the stored pixel frame). The build
decodes every image once to reject missing, corrupt or wrongly sized files with a clear error.
"""

import dataclasses
import logging
import pathlib
import sys

import numpy as np
import tensorflow_datasets as tfds

from ehrnet_jax import console
from ehrnet_jax import keypoints as keypoint_sets
from ehrnet_jax import images as images_lib
from ehrnet_jax.data import annotations
from ehrnet_jax.errors import UserError

FILE_FORMAT = "array_record"  # Random access without TensorFlow (`tfds.data_source`).


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """Where a split lives inside `manual_dir`."""
  annotations: str  # COCO keypoints json.
  images: str  # Folder of the images named by `file_name`.
  all_images: bool  # Keep images without annotations (evaluation) or not (training).


class CocoKeypointsConfig(tfds.core.BuilderConfig):
  """A keypoint set and the folder layout of its splits."""

  def __init__(self, *, keypoint_set: keypoint_sets.KeypointSet, splits: dict[str, SplitFiles],
               download: str, **kwargs):
    super().__init__(**kwargs)
    self.keypoint_set = keypoint_set
    self.splits = splits
    self.download = download  # Where to get the files, for error messages.

  def layout(self) -> str:
    """The files the dataset root holds, in words."""
    return ", ".join(f"{files.annotations} with its images in {files.images}/"
                     for files in self.splits.values())


COCO_CONFIG = CocoKeypointsConfig(
    name="coco",
    description="COCO 2017 person keypoints (17 joints).",
    keypoint_set=keypoint_sets.COCO,
    splits={
        "train": SplitFiles("annotations/person_keypoints_train2017.json", "train2017", False),
        "validation": SplitFiles("annotations/person_keypoints_val2017.json", "val2017", True),
    },
    download="annotations_trainval2017.zip, train2017.zip and val2017.zip from cocodataset.org")

CROWDPOSE_CONFIG = CocoKeypointsConfig(
    name="crowdpose",
    description="CrowdPose (14 joints), in the layout HigherHRNet uses.",
    keypoint_set=keypoint_sets.CROWDPOSE,
    splits={
        "train": SplitFiles("json/crowdpose_trainval.json", "images", False),
        "test": SplitFiles("json/crowdpose_test.json", "images", True),
    },
    download="json/ and images/ from github.com/Jeff-sjtu/CrowdPose")


class CocoKeypoints(tfds.core.GeneratorBasedBuilder):
  """Person keypoints, boxes, crowd flags, the ignore mask and the evaluation ground truth of a
  COCO-style folder."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "First version.",
      "1.1.0": "`annotations_json`: every annotation of the image (crowds included) as in the "
               "json, the ground truth of `ehrnet evaluate --data-dir`.",
      "2.0.0": "Stored as array_record (random access through `tfds.data_source`, no "
               "TensorFlow to read it); the features are those of 1.1.0.",
  }
  BUILDER_CONFIGS = [COCO_CONFIG, CROWDPOSE_CONFIG]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Give the dataset root as manual_dir. For the `coco` config it holds
  annotations/person_keypoints_{train,val}2017.json and the folders train2017/, val2017/
  (splits whose json is absent are not built).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    num_joints = self.builder_config.keypoint_set.num_joints
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image_id": np.int64,
            "file_name": tfds.features.Text(),
            "height": np.int32,
            "width": np.int32,
            "people": tfds.features.Sequence({
                "keypoints": tfds.features.Tensor(shape=(num_joints, 3), dtype=np.float32),
                "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                "area": np.float32,
                "is_crowd": np.bool_,
                "num_keypoints": np.int32,
                "annotation_id": np.int64,
            }),
            # People with keypoints beyond MAX_PEOPLE, left out and added to the ignore mask.
            "people_dropped": np.int32,
            # 1 where the loss ignores the image, at the stored image size, as COCO compressed
            # RLE counts (`annotations.decode_mask`): 10x faster to read than a PNG.
            "ignore_mask_rle": tfds.features.Text(),
            # Every annotation of the image (crowds and dropped people included), json order,
            # as JSON text of what pycocotools reads: the evaluation ground truth
            # (`annotations.ground_truth_json`).
            "annotations_json": tfds.features.Text(),
        }),
        homepage="https://cocodataset.org/#keypoints-2017",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    return {name: self._generate_examples(root / files.annotations, root / files.images,
                                          files.all_images)
            for name, files in present_splits(self.builder_config, root).items()}

  def _generate_examples(self, json_path: pathlib.Path, image_dir: pathlib.Path,
                         all_images: bool):
    keypoint_set = self.builder_config.keypoint_set
    records = annotations.load_coco_json(json_path, keypoint_set)
    for record in annotations.select_images(records, all_images):
      path = image_dir / record.file_name
      where = f"{path} (image id {record.image_id})"
      encoded = read_checked_image(path, record)
      people = annotations.select_people(record, keypoint_set.num_joints)
      if people.dropped:
        logging.warning("%s: %d people with keypoints, keeping the %d largest; the others are "
                        "ignored by the loss", where, len(people.dropped) + annotations.MAX_PEOPLE,
                        annotations.MAX_PEOPLE)
      mask = annotations.ignore_mask(record, people.dropped, where)
      yield record.image_id, {
          "image": encoded,
          "image_id": record.image_id,
          "file_name": record.file_name,
          "height": record.height,
          "width": record.width,
          "people": {
              "keypoints": people.keypoints,
              "bbox": people.bbox,
              "area": people.area,
              "is_crowd": people.is_crowd,
              "num_keypoints": people.num_keypoints,
              "annotation_id": people.annotation_id,
          },
          "people_dropped": len(people.dropped),
          "ignore_mask_rle": annotations.encode_mask(mask).decode("ascii"),
          "annotations_json": annotations.ground_truth_json(record),
      }


def present_splits(config: CocoKeypointsConfig, root: pathlib.Path) -> dict[str, SplitFiles]:
  """The splits of `config` whose annotation file exists under root (UserError if none)."""
  present = {name: files for name, files in config.splits.items()
             if (root / files.annotations).is_file()}
  if not present:
    expected = ", ".join(f.annotations for f in config.splits.values())
    raise UserError(f"{root}: no annotation file found; expected one of: {expected}")
  return present


def read_checked_image(path: pathlib.Path, record: annotations.ImageRecord) -> bytes:
  """The file's bytes, after checking that it decodes to the size the json gives."""
  where = f"{path} (image id {record.image_id})"
  try:
    encoded = path.read_bytes()
  except OSError as error:
    raise UserError(f"{where}: cannot read the image ({error.strerror})") from None
  image = images_lib.decode_image(encoded)
  if image is None:
    raise UserError(f"{where}: not a decodable image (corrupt or truncated file?)")
  if image.shape[:2] != (record.height, record.width):
    raise UserError(f"{where}: image is {image.shape[1]}x{image.shape[0]} (w x h), the json says "
                    f"{record.width}x{record.height}")
  return encoded


def build(coco_dir: str | pathlib.Path, data_dir: str | pathlib.Path,
          config: str = "coco") -> CocoKeypoints:
  """Builds (once) the dataset of `coco_dir` into `data_dir`; returns the prepared builder."""
  coco_dir = pathlib.Path(coco_dir).expanduser()
  builder = CocoKeypoints(config=config, data_dir=str(data_dir))
  if not coco_dir.is_dir():
    raise UserError(f"{coco_dir}: no such folder; --coco-dir must be the dataset root holding "
                    f"{builder.builder_config.layout()}: fix the path, or unpack "
                    f"{builder.builder_config.download} there")
  present_splits(builder.builder_config, coco_dir)  # Before TFDS: a clear error, no traceback.
  if not builder.is_prepared():
    print(f"building the dataset of {coco_dir} in {builder.data_dir} (once)", file=sys.stderr,
          flush=True)
  with console.library_output():  # TFDS's "Downloading and preparing dataset ...", its bars
    builder.download_and_prepare(
        file_format=FILE_FORMAT,
        download_config=tfds.download.DownloadConfig(manual_dir=str(coco_dir)))
  return builder


def _rebuild_hint(builder: CocoKeypoints, old: str) -> str:
  return (f"rebuild it with `ehrnet data --coco-dir ROOT --data-dir {builder.data_dir_root}` "
          f"(ROOT: the COCO folder it was built from), then delete the old {old}; or delete "
          f"{builder.data_dir_root} and let `ehrnet train` rebuild it")


def check_version(builder: CocoKeypoints) -> None:
  """A UserError to rebuild when the data dir holds `builder`'s config only at other versions
  (built by another ehrnet_jax: other features, or TFRecord files before 2.0.0), or holds this
  version in another file format than array_record."""
  config_dir = pathlib.Path(builder.data_path).parent
  others = sorted(path.parent for path in config_dir.glob("*/dataset_info.json")
                  if tfds.core.Version.is_valid(path.parent.name))
  if others and not builder.is_prepared():
    raise UserError(
        f"{config_dir}: built as version {', '.join(p.name for p in others)}, this ehrnet_jax "
        f"reads version {builder.version} ({FILE_FORMAT}); "
        f"{_rebuild_hint(builder, ', '.join(map(str, others)))}")
  if builder.is_prepared() and builder.info.file_format.value != FILE_FORMAT:
    raise UserError(
        f"{builder.data_path}: stored as {builder.info.file_format.value}, this ehrnet_jax reads "
        f"{FILE_FORMAT} (random access without TensorFlow); delete that folder, then rebuild "
        f"it with `ehrnet data --coco-dir ROOT --data-dir {builder.data_dir_root}` (ROOT: the "
        f"COCO folder it was built from) or let `ehrnet train` rebuild it")


def load_builder(data_dir: str | pathlib.Path, config: str = "coco") -> CocoKeypoints:
  """The prepared builder in `data_dir`, readable without TensorFlow; a UserError says how to
  build it when absent and how to rebuild it when it is of an older version or format."""
  builder = CocoKeypoints(config=config, data_dir=str(data_dir))
  check_version(builder)
  if not builder.is_prepared():
    raise UserError(f"{data_dir}: no '{config}' dataset built there; run "
                    f"`ehrnet data --coco-dir ROOT --data-dir {data_dir}` first")
  return builder
