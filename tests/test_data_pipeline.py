"""The Grain training pipeline on coco-mini: values, and the determinism contract (the global
batch of step s is a function of (seed, s) only; process p reads its rows of it; a fresh or a
restored iterator continues the uninterrupted stream)."""

import itertools
import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import data_testing
from ehrnet_jax import keypoints as keypoint_sets
from ehrnet_jax.data import augment, coco_tfds, pipeline, targets
from ehrnet_jax.errors import UserError
from ehrnet_jax.training.checkpointing import Checkpointer
from ehrnet_jax.training.state import TrainState

SIZE = 64  # Small input: the pipeline logic, not the pixels, is under test here.
AUGMENTATION = pipeline.Augmentation(SIZE, keypoint_sets.COCO.flip_index)
N = 36  # coco-mini's training images (those with annotations).


@pytest.fixture(scope="module")
def source(tmp_path_factory, coco_mini_dir):
  built = data_testing.built_coco_mini(tmp_path_factory, coco_mini_dir)
  return pipeline.open_split(coco_tfds.load_builder(built), "train")


def _iterator(source, start_step=0, seed=0, global_batch=4, process=(0, 1), workers=0):
  stream = pipeline.Stream(seed, global_batch, len(source), *process)
  return pipeline.train_iterator(source, stream, AUGMENTATION, start_step=start_step,
                                 workers=workers)


def _batches(source, count, **kwargs):
  iterator = _iterator(source, **kwargs)
  batches = list(itertools.islice(iterator, count))
  iterator.close()
  return batches


def _assert_same(actual, expected):
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    assert a.keys() == e.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], e[key], err_msg=key)


def test_a_batch_holds_the_augmented_images_of_its_ids(source, coco_mini_dir):
  (batch,) = _batches(source, 1)
  assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
  assert batch["mask_4"].shape == (4, 16, 16) and batch["mask_2"].shape == (4, 32, 32)
  assert batch["mask_4"].dtype == batch["mask_2"].dtype == np.uint8
  assert batch["keypoints_4"].shape == batch["keypoints_2"].shape == (4, 30, 17, 3)
  assert batch["keypoints_2"].dtype == np.int32
  assert batch["image_id"].shape == (4,) and batch["image_id"].dtype == np.int64
  assert set(np.unique(batch["mask_2"])) <= {0, 1}
  # Independent truth for row 0: its image file and json keypoints, warped by augment itself
  # with the draw of global example 0 (the contract: keyed by (seed, k)).
  coco = json.loads((coco_mini_dir / "annotations" /
                     "person_keypoints_train2017.json").read_text())
  image_id = int(batch["image_id"][0])
  file_name = next(i["file_name"] for i in coco["images"] if i["id"] == image_id)
  raw = cv2.imread(str(coco_mini_dir / "train2017" / file_name),
                   cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
  people = np.asarray([a["keypoints"] for a in coco["annotations"]
                       if a["image_id"] == image_id and a["num_keypoints"] > 0],
                      np.float32).reshape(-1, 17, 3)
  params = augment.sample_params(pipeline.augmentation_rng(0, 0), *raw.shape[:2])
  expected = augment.augment(raw, np.zeros(raw.shape[:2], np.uint8), people, params, SIZE,
                             keypoint_sets.COCO.flip_index, 30)
  np.testing.assert_array_equal(batch["image"][0], expected["image"])
  np.testing.assert_array_equal(batch["keypoints_4"][0], expected["keypoints_4"])
  np.testing.assert_array_equal(batch["keypoints_2"][0], expected["keypoints_2"])
  for name, size in (("keypoints_4", 16), ("keypoints_2", 32)):
    valid = batch[name][..., 2] == 1
    assert valid.any()
    assert np.all(batch[name][..., :2][valid] >= 0) and np.all(batch[name][..., :2][valid] < size)
    assert not batch[name][~valid].any()  # Invalid slots are all zero.


def test_same_seed_same_batches_and_every_image_once_per_epoch(source):
  first = _batches(source, 10)  # 36 images, 4 per step: 9 steps per epoch.
  _assert_same(_batches(source, 10), first)
  other = _batches(source, 2, seed=1)
  assert not np.array_equal(other[0]["image"], first[0]["image"])
  epoch_0 = np.concatenate([b["image_id"] for b in first[:9]])
  assert len(set(epoch_0.tolist())) == N
  assert first[9]["image_id"].tolist() != epoch_0[:4].tolist()  # Epoch 1: another order.


def test_each_process_reads_its_rows_of_the_global_batch(source):
  single = _batches(source, 3, global_batch=4)
  for p in range(2):
    rows = slice(2 * p, 2 * p + 2)
    _assert_same(_batches(source, 3, global_batch=4, process=(p, 2)),
                 [{k: v[rows] for k, v in batch.items()} for batch in single])


def test_an_iterator_started_at_a_step_continues_the_stream(source):
  uninterrupted = _batches(source, 11)
  for start in (1, 9, 10):  # Step 9 starts epoch 1.
    _assert_same(_batches(source, 1, start_step=start), uninterrupted[start:start + 1])


def _tiny_state(step: int) -> TrainState:
  return TrainState(step=jnp.int32(step), params={"w": jnp.zeros(2)}, batch_stats={},
                    opt_state={}, rng=jnp.zeros(2, jnp.uint32))


def test_a_restored_state_continues_the_stream(source, tmp_path):
  uninterrupted = _batches(source, 5)
  running = _iterator(source)
  _assert_same(list(itertools.islice(running, 3)), uninterrupted[:3])
  checkpointer = Checkpointer(tmp_path / "checkpoints", keep=1)
  checkpointer.save(_tiny_state(3), {"step": 3}, data=running)
  checkpointer.close()
  running.close()
  resumed = _iterator(source)
  assert Checkpointer(tmp_path / "checkpoints", keep=1).restore_data(resumed, 3)
  _assert_same(list(itertools.islice(resumed, 2)), uninterrupted[3:5])
  assert resumed.get_state() == {"step": 5, "seed": 0, "global_batch": 4}
  with pytest.raises(UserError, match="train.seed"):
    _iterator(source, seed=1).set_state(resumed.get_state())


@pytest.mark.slow
def test_worker_processes_give_the_in_process_batches(source):
  # ~10 s: each worker process starts a Python with Grain, JAX (Grain imports it) and TFDS.
  _assert_same(_batches(source, 3, workers=2), _batches(source, 3))


def test_targets_of_a_real_batch_peak_at_each_valid_joint(source):
  (batch,) = _batches(source, 1, seed=3)
  heatmaps = np.asarray(jax.jit(targets.prepare_batch)(batch)["heatmaps_2"])
  for index in range(4):
    people = batch["keypoints_2"][index].reshape(-1, 3)
    for x, y, valid in people:
      if valid:
        assert heatmaps[index][y, x].max() == pytest.approx(1.0)
    # Where no joint lies within 7 px, the target is exactly zero.
    far = np.ones((32, 32), bool)
    for x, y in people[people[:, 2] == 1, :2]:
      far[max(0, y - 7):y + 8, max(0, x - 7):x + 8] = False
    assert not heatmaps[index][far].any()


def test_bad_batch_and_missing_dataset_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="not divisible by the 3 processes"):
    pipeline.Stream(0, 4, N, 0, 3)
  with pytest.raises(UserError, match="run `ehrnet data"):
    coco_tfds.load_builder(tmp_path)


@pytest.mark.slow
def test_ehrnet_train_and_its_evaluation_run_without_tensorflow(tmp_path):
  """Once built (TensorFlow), the dataset is read for training and evaluation without it."""
  import os  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from ehrnet_jax import samples  # pylint: disable=import-outside-toplevel
  repo = pathlib.Path(__file__).resolve().parents[1]
  workdir = tmp_path / "run"
  coco_tfds.build(samples.coco_dir(), workdir / "tfds")  # Where `ehrnet train` builds it.
  script = tmp_path / "ehrnet.py"
  script.write_text("from ehrnet_jax.cli import main\nraise SystemExit(main())\n")
  settings = ["train.steps=2", "model.input_size=64", "run.log_every_steps=1",
              "run.checkpoint_every_steps=2", "run.eval_max_images=1"]
  result = subprocess.run(
      [sys.executable, str(repo / "tests" / "support" / "without_packages.py"), "tensorflow",
       str(script), "train", "--config", str(repo / "experiments" / "smoke.py"),
       "--workdir", str(workdir), *itertools.chain(*(("--set", s) for s in settings))],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo), "JAX_PLATFORMS": "cpu"},
      capture_output=True, text=True, timeout=900, check=False)  # a hang guard
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "eval/ap" in r] == [2]
  state = json.loads(next((workdir / "checkpoints" / "2" / "data").glob("*.json")).read_text())
  assert state == {"step": 2, "seed": 0, "global_batch": 2}
