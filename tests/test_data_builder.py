"""The TFDS builder against pycocotools' view of the same json, its handling of bad input, and the
refusal of builds of older versions or formats. Records are read as training reads them: through
the data source (array_record, no TensorFlow)."""

import io
import json
import pathlib

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from support import data_testing
from ehrnet_jax import keypoints
from ehrnet_jax import images as images_lib
from ehrnet_jax.data import annotations, coco_tfds, pipeline
from ehrnet_jax.errors import UserError


@pytest.fixture(scope="module")
def built(tmp_path_factory, coco_mini_dir):
  return data_testing.built_coco_mini(tmp_path_factory, coco_mini_dir)


def _records(data_dir, split, config="coco"):
  """{image id: record}, the people's fields as arrays (the data source gives lists)."""
  builder = coco_tfds.load_builder(data_dir, config)
  num_joints = builder.builder_config.keypoint_set.num_joints
  records = {}
  for record in pipeline.open_split(builder, split):
    people = {k: np.asarray(v) for k, v in record["people"].items()}
    people["keypoints"] = people["keypoints"].reshape(-1, num_joints, 3)
    records[int(record["image_id"])] = {**record, "people": people}
  return records


def test_builder_agrees_with_pycocotools(built, coco_mini_dir):
  coco = COCO(str(coco_mini_dir / "annotations" / "person_keypoints_train2017.json"))
  expected_ids = {i for i in coco.getImgIds() if coco.getAnnIds(imgIds=i, iscrowd=None)}
  records = _records(built, "train")
  assert len(records) == 36 and set(records) == expected_ids
  for image_id, record in records.items():
    info = coco.loadImgs(image_id)[0]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
    people = [a for a in anns if a["iscrowd"] == 0 or a["num_keypoints"] > 0]
    got = record["people"]
    assert (record["height"], record["width"]) == (info["height"], info["width"])
    assert record["file_name"].decode() == info["file_name"]
    assert got["annotation_id"].tolist() == [a["id"] for a in people]
    np.testing.assert_array_equal(
        got["keypoints"], np.asarray([a["keypoints"] for a in people]).reshape(-1, 17, 3))
    np.testing.assert_allclose(got["bbox"], np.asarray([a["bbox"] for a in people]).reshape(-1, 4),
                               rtol=1e-6)
    np.testing.assert_allclose(got["area"], [a["area"] for a in people], rtol=1e-6)
    assert got["num_keypoints"].tolist() == [a["num_keypoints"] for a in people]
    union = np.zeros((info["height"], info["width"]), bool)
    for a in anns:
      if a["iscrowd"] or a["num_keypoints"] == 0:
        union |= coco.annToMask(a) > 0
    mask = annotations.decode_mask(record["ignore_mask_rle"], info["height"], info["width"])
    np.testing.assert_array_equal(mask, union)
    fields = ("id", "iscrowd", "num_keypoints", "bbox", "area", "keypoints")
    assert json.loads(record["annotations_json"]) == [{f: a[f] for f in fields} for a in anns]


def test_validation_keeps_every_image_and_the_stored_bytes(built, coco_mini_dir):
  records = _records(built, "validation")
  assert len(records) == 80
  record = records[535506]
  stored = (coco_mini_dir / "train2017" / record["file_name"].decode()).read_bytes()
  assert record["image"] == stored  # Original bytes: no re-encoding.


def _jpeg(array: np.ndarray, mode: str, **save) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).convert(mode).save(buffer, "JPEG", quality=95, **save)
  return buffer.getvalue()


def _odd_images_folder(root: pathlib.Path) -> tuple[pathlib.Path, dict[int, np.ndarray]]:
  """Grayscale, CMYK, RGBA (PNG data), EXIF-rotated images; 35 people; keypoints outside."""
  rng = np.random.default_rng(0)
  pixels = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # "Rotate 90 CW to display": must NOT be applied.
  png = io.BytesIO()
  Image.fromarray(pixels).convert("RGBA").save(png, "PNG")
  files = {1: _jpeg(pixels, "L"), 2: _jpeg(pixels, "CMYK"), 3: png.getvalue(),
           4: _jpeg(pixels, "RGB", exif=exif), 5: _jpeg(pixels, "RGB")}
  (root / "train2017").mkdir(parents=True)
  images, anns = [], []
  for image_id, data in files.items():
    name = f"{image_id:012d}.jpg"
    (root / "train2017" / name).write_bytes(data)
    images.append({"id": image_id, "file_name": name, "height": 24, "width": 32})
    kp = np.zeros((17, 3))
    kp[0] = (40.0, -3.0, 2)  # Outside the image: kept as given.
    kp[1] = (5.0, 6.0, 1)
    anns.append(data_testing.person(kp, (1, 1, 10, 10), 100 + image_id, image_id))
  for i in range(34):  # Image 5: 1 + 34 people with keypoints, areas 100 and 0..33.
    kp = np.zeros((17, 3))
    kp[5] = (i % 30, 10, 2)
    anns.append(data_testing.person(kp, (i % 30, 0, 1, 1 + i % 20), 1000 + i, 5, area=float(i)))
  data_testing.write_coco(root, images, anns)
  decoded = {i: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED)
             for i, d in files.items()}
  return root, decoded


@pytest.fixture(scope="module")
def odd_built(tmp_path_factory):
  root, raw = _odd_images_folder(tmp_path_factory.mktemp("odd") / "coco")
  data_dir = tmp_path_factory.mktemp("odd_tfds")
  coco_tfds.build(root, data_dir)
  return _records(data_dir, "train"), raw


def test_odd_images_build_and_decode_in_the_stored_frame(odd_built):
  records, raw = odd_built
  assert sorted(records) == [1, 2, 3, 4, 5]
  for image_id, record in records.items():
    image = images_lib.decode_image(record["image"])
    assert image.shape == (24, 32, 3)  # EXIF orientation 6 would give 32x24.
  exif_file = Image.open(io.BytesIO(records[4]["image"]))
  assert ImageOps.exif_transpose(exif_file).size == (24, 32)  # The tag is there (w 24, h 32).
  exif_raw = np.asarray(exif_file.convert("RGB"))
  decoded = images_lib.decode_image(records[4]["image"])[:, :, ::-1]
  assert np.abs(decoded.astype(int) - exif_raw).mean() < 2  # Same pixels, not rotated.
  gray = images_lib.decode_image(records[1]["image"])
  np.testing.assert_array_equal(gray[..., 0], raw[1])  # Grayscale -> 3 equal channels.
  np.testing.assert_array_equal(gray[..., 1], raw[1])
  np.testing.assert_array_equal(images_lib.decode_image(records[3]["image"]), raw[3][..., :3])
  np.testing.assert_array_equal(records[1]["people"]["keypoints"][0, 0], [40, -3, 2])


def test_more_than_30_people_keeps_the_largest_and_masks_the_rest(odd_built):
  record = odd_built[0][5]
  ids = record["people"]["annotation_id"].tolist()
  # 35 people with keypoints, areas 100 and 0..33: the 5 smallest (areas 0..4, annotation ids
  # 1000..1004) are dropped and masked.
  assert len(ids) == 30 and record["people_dropped"] == 5
  assert not set(ids) & {1000, 1001, 1002, 1003, 1004}
  mask = annotations.decode_mask(record["ignore_mask_rle"], 24, 32)
  expected = np.zeros((24, 32), np.uint8)
  for i in range(5):  # Box polygons (i, 0, 1, 1+i): pycocotools rasterises them.
    coco_box = [[i, 0, i + 1, 0, i + 1, 1 + i, i, 1 + i]]
    expected |= mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(coco_box, 24, 32)))
  np.testing.assert_array_equal(mask, expected)


def test_crowdpose_style_14_joints(tmp_path):
  root = tmp_path / "crowdpose"
  (root / "images").mkdir(parents=True)
  cv2.imwrite(str(root / "images" / "100.jpg"), np.full((20, 30, 3), 128, np.uint8))
  kp = np.zeros((14, 3))
  kp[12] = (10, 5, 2)
  ann = data_testing.person(kp, (2, 2, 10, 10), 1, 100)
  del ann["segmentation"], ann["area"], ann["num_keypoints"]  # CrowdPose files lack them.
  data_testing.write_coco(root, [{"id": 100, "file_name": "100.jpg", "height": 20, "width": 30}],
                          [ann], json_name="json/crowdpose_trainval.json")
  coco_tfds.build(root, tmp_path / "tfds", config="crowdpose")
  record = _records(tmp_path / "tfds", "train", "crowdpose")[100]
  assert record["people"]["keypoints"].shape == (1, 14, 3)
  assert record["people"]["num_keypoints"].tolist() == [1]  # Counted from v > 0.
  assert record["people"]["area"].tolist() == [100.0]  # From the box.
  assert [(a["area"], a["num_keypoints"]) for a in json.loads(record["annotations_json"])] == [
      (100.0, 1)]


@pytest.mark.parametrize("damage, message", [
    ("missing", "cannot read the image"),
    ("corrupt", "not a decodable image"),
    ("wrong_size", "the json says 32x24"),
])
def test_bad_image_fails_cleanly_and_leaves_no_dataset(tmp_path, damage, message):
  root, _ = _odd_images_folder(tmp_path / "coco")
  path = root / "train2017" / f"{3:012d}.jpg"
  if damage == "missing":
    path.unlink()
  elif damage == "corrupt":
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  else:
    cv2.imwrite(str(path), np.zeros((10, 10, 3), np.uint8))
  with pytest.raises(UserError, match=message) as error:
    coco_tfds.build(root, tmp_path / "tfds")
  assert str(path) in str(error.value) and "image id 3" in str(error.value)
  leftovers = [p for p in (tmp_path / "tfds").rglob("*")
               if "incomplete" in p.name or p.name == "dataset_info.json"]
  assert leftovers == []
  assert not coco_tfds.CocoKeypoints(config="coco", data_dir=str(tmp_path / "tfds")).is_prepared()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"][0].pop("file_name"), r"images\[0\] \(image id 7\): missing field "
                                                "'file_name'"),
    (lambda d: d["annotations"][0].update(keypoints=[1, 2, 2]), "has 3 values, expected 51"),
    (lambda d: d["annotations"][0].update(image_id=99), "no image with this id"),
    (lambda d: d.pop("annotations"), "missing field 'annotations'"),
])
def test_json_missing_or_wrong_fields_are_named(tmp_path, edit, message):
  data = {"images": [{"id": 7, "file_name": "a.jpg", "height": 4, "width": 4}],
          "annotations": [data_testing.person(np.zeros((17, 3)), (0, 0, 1, 1), 1, 7)]}
  edit(data)
  path = data_testing.write_coco(tmp_path, data.get("images", []), data.get("annotations", []))
  if "annotations" not in data:
    path.write_text('{"images": []}')
  with pytest.raises(UserError, match=message) as error:
    annotations.load_coco_json(path, keypoints.COCO)
  assert str(path) in str(error.value)


def test_broken_segmentation_is_named():
  record = annotations.ImageRecord(
      image_id=7, file_name="a.jpg", height=20, width=30,
      annotations=({"id": 5, "iscrowd": 1, "num_keypoints": 0, "bbox": [0, 0, 0, 0],
                    "segmentation": [[1, 2, 3]]},))
  with pytest.raises(UserError, match="segmentation of annotation 5") as error:
    annotations.ignore_mask(record, (), "x.json (image id 7)")
  assert "image id 7" in str(error.value)


def test_builds_of_an_older_version_or_format_are_refused_with_the_rebuild_command(tmp_path):
  root, _ = _odd_images_folder(tmp_path / "coco")
  data_dir = tmp_path / "tfds"
  builder = coco_tfds.CocoKeypoints(config="coco", data_dir=str(data_dir))
  builder.download_and_prepare(  # The format of versions before 2.0.0.
      file_format="tfrecord", download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  with pytest.raises(UserError, match="stored as tfrecord.*delete that folder, then rebuild it "
                                      r"with `ehrnet data --coco-dir ROOT --data-dir"):
    coco_tfds.load_builder(data_dir)
  version_dir = pathlib.Path(builder.data_path)
  version_dir.rename(version_dir.with_name("1.1.0"))  # That build, as version 1.1.0 left it.
  with pytest.raises(UserError, match=r"built as version 1\.1\.0.*rebuild it with `ehrnet data "
                                      r"--coco-dir ROOT --data-dir .*`ehrnet train` rebuild"):
    coco_tfds.load_builder(data_dir)
  coco_tfds.build(root, data_dir)  # `ehrnet data`: builds 2.0.0 beside it; then it reads.
  assert sorted(_records(data_dir, "train")) == [1, 2, 3, 4, 5]
