"""`ehrnet evaluate` end to end on coco-mini with the fixture-converted H-4 weights (random), and
the sharding of `coco_evaluation.evaluate` (size buckets, batches, processes) on a host network.

Multi-device and multi-process runs of the JAX path: tests/test_evaluate_sharded.py.
"""

import concurrent.futures
import json
import threading

import numpy as np
import pytest
from pycocotools.coco import COCO

from support import coco_testing, host_pose
from ehrnet_jax import cli, inference, keypoints, samples
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import coco_evaluation, grouping, jax_decoder, transforms

# Two coco-mini images of the same size (one network compilation): 640x427 -> 576x384.
IMAGE_IDS = (183872, 211325)


@pytest.fixture(scope="module")
def checkpoint(reference_dir, tmp_path_factory):
  directory = tmp_path_factory.mktemp("ckpt") / "H-4"
  assert cli.main(["convert", str(reference_dir / "H-4_state_dict.npz"), "--variant", "H-4",
                   "--out", str(directory)]) == 0
  return directory


@pytest.fixture(scope="module")
def mini_split(coco_mini_dir, tmp_path_factory):
  """A COCO folder with just IMAGE_IDS, so that the CLI runs on exactly those images."""
  root = tmp_path_factory.mktemp("coco")
  annotations = json.loads(
      (coco_mini_dir / "annotations" / "person_keypoints_train2017.json").read_text())
  annotations["images"] = [i for i in annotations["images"] if i["id"] in IMAGE_IDS]
  annotations["annotations"] = [a for a in annotations["annotations"]
                                if a["image_id"] in IMAGE_IDS]
  (root / "annotations").mkdir()
  (root / "annotations" / "person_keypoints_mini.json").write_text(json.dumps(annotations))
  (root / "mini").symlink_to(coco_mini_dir / "train2017")
  return root


@pytest.mark.slow
def test_evaluate_command_writes_results_and_metrics(checkpoint, mini_split, tmp_path, capsys):
  out = tmp_path / "eval"
  assert cli.main(["evaluate", "--variant", "H-4", "--checkpoint", str(checkpoint),
                   "--coco-dir", str(mini_split), "--split", "mini", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "network" in printed and "grouping" in printed
  metrics = json.loads((out / "metrics.json").read_text())
  results = json.loads((out / "results.json").read_text())
  assert metrics["num_images"] == 2 and metrics["num_people"] == len(results) > 0
  assert set(metrics["ms_per_image"]) == {"network", "decode", "grouping", "total"}
  # The metrics are pycocotools' on the written results.
  ground_truth = COCO(str(mini_split / "annotations" / "person_keypoints_mini.json"))
  from ehrnet_jax.inference import coco_results  # pylint: disable=import-outside-toplevel
  expected = coco_results.evaluate_keypoints(ground_truth, results)
  assert {k: metrics[k] for k in coco_results.STAT_NAMES} == expected
  assert {r["image_id"] for r in results} <= set(IMAGE_IDS)
  for entry in results[:50]:
    assert len(entry["keypoints"]) == 51 and entry["category_id"] == 1
    xs = entry["keypoints"][0::3]
    assert entry["bbox"][0] == pytest.approx(min(xs)) and entry["bbox"][2] >= 0


@pytest.mark.slow
def test_device_candidates_give_the_same_people_as_host_grouping(checkpoint, coco_mini_dir):
  """The JAX path (NMS/top-k on device) equals grouping the same maps entirely on the host."""
  estimator = jax_decoder.jax_estimator(checkpoint, "H-4")
  image = inference.read_image(coco_mini_dir / "train2017" / "000000183872.jpg")
  poses = estimator([image])[0]
  size = transforms.multi_scale_size(image.shape[1::-1], 384, 1.0, 1.0)
  maps = estimator.decoder([(1.0, transforms.warp_image(image, size)[None])], size.size_wh[::-1])
  host = maps.images[0].to_host()
  people, scores = grouping.parse(host.heatmaps, host.tags)
  assert len(people) > 0
  np.testing.assert_array_equal(scores, poses.scores)
  np.testing.assert_allclose(transforms.map_to_image(people, size.center, size.scale,
                                                     size.size_wh), poses.people, atol=1e-4)


def test_checkpoint_of_another_variant_is_a_clear_error(checkpoint, mini_split, tmp_path, capsys):
  assert cli.main(["evaluate", "--variant", "H-2", "--checkpoint", str(checkpoint),
                   "--coco-dir", str(mini_split), "--split", "mini", "--out", str(tmp_path)]) == 2
  error = capsys.readouterr().err
  assert str(checkpoint) in error and "H-4" in error and "H-2" in error


def test_missing_split_names_the_annotation_file(tmp_path):
  with pytest.raises(UserError, match="person_keypoints_val2017.json"):
    coco_evaluation.coco_folder(tmp_path, "val2017")


@pytest.mark.parametrize("scales, message", [("0.5,1.5", "must include 1"),
                                             ("0.6,1", "multiple of 32"), ("a,b", "numbers")])
def test_bad_scales_are_user_errors(scales, message):
  from ehrnet_jax.commands._runtime import parse_scales  # pylint: disable=import-outside-toplevel
  with pytest.raises(UserError, match=message):
    transforms.pyramid_sizes((640, 480), 384, parse_scales(scales))


def _host_estimator(batch_size: int) -> inference.PoseEstimator:
  return host_pose.estimator(batch_size=batch_size)


def test_images_of_one_test_size_run_as_one_batch():
  """640x427 and 640x430 both warp to 128x64: one call gives each image's own people."""
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (h, 640, 3), np.uint8) for h in (427, 430)]
  estimator = _host_estimator(batch_size=2)
  assert estimator.input_sizes((427, 640)) == estimator.input_sizes((430, 640)) == ((128, 64),)
  together = estimator(images)
  for image, poses in zip(images, together):
    (alone,) = estimator([image])
    # Exact: the host backend and NumPy decoding treat every image of a batch on its own.
    np.testing.assert_array_equal(poses.people, alone.people)
    np.testing.assert_array_equal(poses.scores, alone.scores)
  with pytest.raises(ValueError, match="one network input size"):
    estimator([images[0], rng.integers(0, 255, (640, 427, 3), np.uint8)])


def test_coco_folder_reads_the_ids_asked_for_in_that_order():
  source = coco_evaluation.coco_folder(samples.coco_dir(), samples.SPLIT)
  ids = [source.image_ids[3], source.image_ids[0]]
  read = list(source.images(ids))
  assert [image_id for image_id, _ in read] == ids
  for image_id, image in read:
    info = source.ground_truth.imgs[image_id]
    assert image.shape == (info["height"], info["width"], 3)


class _ThreadProcesses:
  """`coco_evaluation.Processes` for thread `index` of `count` threads of this process: the
  exchanges go through shared `slots` between two waits on a shared barrier."""

  def __init__(self, index: int, count: int, slots: list, barrier: threading.Barrier):
    self.index, self.count = index, count
    self._slots, self._barrier = slots, barrier

  def gather(self, data: bytes) -> list[bytes]:
    self._slots[self.index] = data
    self._barrier.wait()
    everyone = list(self._slots)
    self._barrier.wait()
    return everyone

  def share(self, data: bytes) -> bytes:
    return self.gather(data)[0]


def test_processes_share_the_images_and_all_return_the_one_process_evaluation():
  """3 "processes" (threads), batches of 2 per size bucket: the same results, in image id order,
  and the same stats everywhere as one process running every image."""
  folder = coco_evaluation.coco_folder(samples.coco_dir(), samples.SPLIT)
  first = coco_evaluation.evaluate(_host_estimator(1), folder, progress=False)
  # Ground truth made of the people found, so that the AP is not 0 (pycocotools checks it).
  dataset = coco_testing.ground_truth_of(first.results, list(folder.ground_truth.imgs.values()))
  ground_truth = COCO()
  ground_truth.dataset = dataset
  ground_truth.createIndex()
  source = coco_evaluation.Source(ground_truth, folder.image_ids, folder.images)
  one = coco_evaluation.evaluate(_host_estimator(1), source, progress=False)
  assert one.results == first.results and one.stats["AP"] > 0.5
  assert [r["image_id"] for r in one.results] == sorted(r["image_id"] for r in one.results)
  slots, barrier = [b""] * 3, threading.Barrier(3)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    shared = list(pool.map(lambda i: coco_evaluation.evaluate(
        _host_estimator(2), source, progress=False,
        processes=_ThreadProcesses(i, 3, slots, barrier)), range(3)))
  for evaluation in shared:
    # Exact: the host path computes every image alone (see host_pose.content_backend), and the
    # results travel as their float32 values.
    assert evaluation.results == one.results
    assert evaluation.stats == one.stats
    assert len(evaluation.seconds) == len(source.image_ids)


def test_onnx_backend_evaluates_in_one_process(tmp_path, capsys):
  assert cli.main(["evaluate", "--backend", "onnx", "--checkpoint", str(tmp_path / "m.onnx"),
                   "--coco-dir", str(samples.coco_dir()), "--split", samples.SPLIT,
                   "--out", str(tmp_path), "--coordinator", "127.0.0.1:1234",
                   "--num-processes", "2", "--process-id", "0"]) == 2
  assert "--backend onnx evaluates in one process" in capsys.readouterr().err
