"""The tf.data pipelines on coco-mini: shapes, determinism, resumption, sharding, evaluation."""

import itertools
import json
import pathlib
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from support import data_testing
from ehrnet_jax.data import pipeline, targets
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import transforms

SIZE = 64  # Small input: the pipeline logic, not the pixels, is under test here.


@pytest.fixture(scope="module")
def built(tmp_path_factory, coco_mini_dir):
  return data_testing.built_coco_mini(tmp_path_factory, coco_mini_dir)


def _batches(data_dir, count, **kwargs):
  args = dict(input_size=SIZE, per_device_batch=2, num_devices=2, seed=0, process_index=0,
              process_count=1)
  iterator = pipeline.train_iterator(data_dir, **{**args, **kwargs})
  return list(itertools.islice(iterator, count))


def test_batch_shapes_and_values(built):
  (batch,) = _batches(built, 1)
  assert batch["image"].shape == (2, 2, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
  assert batch["mask_4"].shape == (2, 2, 16, 16) and batch["mask_2"].shape == (2, 2, 32, 32)
  assert batch["keypoints_4"].shape == (2, 2, 30, 17, 3)
  assert batch["keypoints_2"].dtype == np.int32 and batch["image_id"].shape == (2, 2)
  assert set(np.unique(batch["mask_2"])) <= {0, 1}
  for name, size in (("keypoints_4", 16), ("keypoints_2", 32)):
    valid = batch[name][..., 2] == 1
    assert valid.any()
    assert np.all(batch[name][..., :2][valid] >= 0) and np.all(batch[name][..., :2][valid] < size)
    assert not batch[name][~valid].any()  # Invalid slots are all zero.


def test_identical_seeds_give_identical_batches(built):
  first, second = _batches(built, 3), _batches(built, 3)
  other = _batches(built, 3, seed=1)
  for a, b in zip(first, second):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(first, other))


def test_resuming_continues_the_same_stream_across_epochs(built):
  # 36 images, 4 per step: step 9 starts epoch 1, step 10 is inside it.
  full = _batches(built, 11)
  for start in (1, 10):
    (resumed,) = _batches(built, 1, start_step=start)
    for key in resumed:
      np.testing.assert_array_equal(resumed[key], full[start][key])
  epoch_0 = np.concatenate([b["image_id"].ravel() for b in full[:9]])
  assert len(set(epoch_0.tolist())) == 36  # Every image once per epoch.


def test_hosts_read_disjoint_shards(built):
  ids = [set(np.concatenate([b["image_id"].ravel() for b in
                             _batches(built, 4, process_index=i, process_count=2,
                                      per_device_batch=1)]).tolist()) for i in range(2)]
  assert len(ids[0]) == len(ids[1]) == 8 and not ids[0] & ids[1]


def test_targets_of_a_real_batch_peak_at_each_valid_joint(built):
  (batch,) = _batches(built, 1, seed=3)
  device = jax.jit(targets.prepare_batch)(batch)
  heatmaps = np.asarray(device["heatmaps_2"])
  for index in np.ndindex(2, 2):
    for x, y, valid in batch["keypoints_2"][index].reshape(-1, 3):
      if valid:
        assert heatmaps[index][y, x].max() == pytest.approx(1.0)
    # Where no joint lies within 7 px, the target is exactly zero.
    valid_xy = batch["keypoints_2"][index][..., :2][batch["keypoints_2"][index][..., 2] == 1]
    far = np.ones((32, 32), bool)
    for x, y in valid_xy:
      far[max(0, y - 7):y + 8, max(0, x - 7):x + 8] = False
    assert not heatmaps[index][far].any()


def test_eval_pipeline_keeps_size_id_and_transform(built, coco_mini_dir):
  images = json.loads((coco_mini_dir / "annotations" /
                       "person_keypoints_train2017.json").read_text())["images"]
  sizes = {i["id"]: (i["height"], i["width"]) for i in images}
  seen = {}
  for element in pipeline.eval_iterator(built, input_size=SIZE, process_index=0,
                                        process_count=1):
    seen[int(element["image_id"])] = element
  assert set(seen) == set(sizes)  # All 80 images, not only the 36 annotated ones.
  element = seen[535506]
  height, width = sizes[535506]
  assert element["image"].shape == (height, width, 3)
  test_size = transforms.multi_scale_size((width, height), SIZE, 1.0, 1.0)
  (w, h), center, scale = test_size.size_wh, test_size.center, test_size.scale
  assert element["input"].shape == (h, w, 3)
  np.testing.assert_allclose(element["center"], center)
  np.testing.assert_allclose(element["scale"], scale)
  file = coco_mini_dir / "train2017" / "000000535506.jpg"
  raw = cv2.imread(str(file), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[:, :, ::-1]
  np.testing.assert_array_equal(element["image"], raw)


@pytest.mark.slow
def test_exit_with_a_live_iterator_is_clean(built):
  # tf.data threads in a numpy_function during interpreter shutdown used to abort (exit 134).
  code = ("from ehrnet_jax.data import pipeline\n"
          f"it = pipeline.train_iterator({str(built)!r}, input_size=64, per_device_batch=2, "
          "num_devices=1, seed=0, process_index=0, process_count=1)\n"
          "next(it)\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1],
                          timeout=600)  # a hang guard, not a speed limit
  assert result.returncode == 0, result.stderr[-2000:]


def test_missing_dataset_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="run `ehrnet data"):
    pipeline.load_builder(tmp_path)
