"""Evaluation shared by devices and processes (JAX): `ehrnet evaluate` on 2 simulated CPU devices
and on 2 `jax.distributed` processes, and the trainer's `CocoEvaluator` on 2 devices, against one
process on one device.

The bundled H-4 weights (random) on the first 3 bundled images: 790 (test size 640x384), 129648
and 174375 (576x384), so 2 devices run one full batch and one padded batch, and 2 processes split
the images 2 + 1. The network's AP on the real annotations is 0; the AP is also computed against a
ground truth made of the single-process results (`coco_testing.ground_truth_of`: the 2 best
people of each image), where it is well above 0 (0.44; the other 500-odd people found per image
are false positives) and moves with the results.

The device count must be set before JAX starts, so the runs are subprocesses:
  python tests/test_evaluate_sharded.py coco-evaluator OUT.json COCO_ROOT CHECKPOINT
runs the `CocoEvaluator` part.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from support import coco_testing
from ehrnet_jax import cli, samples

HERE = pathlib.Path(__file__).resolve().parent
MAX_IMAGES = 3
# Only against a hung subprocess (e.g. a collective waiting forever), not a speed limit.
HANG_GUARD_S = 1200


def _env(devices: int) -> dict[str, str]:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}


def _evaluate_command(checkpoint, out, *flags) -> list[str]:
  return [sys.executable, "-m", "ehrnet_jax", "evaluate", "--variant", "H-4", "--checkpoint",
          str(checkpoint), "--coco-dir", str(samples.coco_dir()), "--split", samples.SPLIT,
          "--max-images", str(MAX_IMAGES), "--out", str(out), *flags]


def _outputs(out: pathlib.Path):
  """(metrics without timings and settings, results) written by `ehrnet evaluate`."""
  metrics = json.loads((out / "metrics.json").read_text())
  del metrics["ms_per_image"], metrics["settings"]
  return metrics, json.loads((out / "results.json").read_text())


def _images() -> list[dict]:
  annotations = json.loads(samples.annotation_file().read_text())
  return sorted(annotations["images"], key=lambda i: i["id"])[:MAX_IMAGES]


def _ground_truth_file(results, directory: pathlib.Path) -> pathlib.Path:
  """A COCO folder (annotations only: ground_truth_of the results) -> its annotation file."""
  path = directory / "annotations" / f"person_keypoints_{samples.SPLIT}.json"
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps(coco_testing.ground_truth_of(results, _images())))
  return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  directory = tmp_path_factory.mktemp("ckpt") / "H-4"
  assert cli.main(["convert", str(samples.reference_weights()), "--variant", "H-4",
                   "--out", str(directory)]) == 0
  return directory


@pytest.fixture(scope="module")
def single(checkpoint, tmp_path_factory):
  """`ehrnet evaluate` in one process on one device: (metrics, results, made-up ground truth)."""
  out = tmp_path_factory.mktemp("single")
  subprocess.run(_evaluate_command(checkpoint, out), env=_env(1), check=True,
                 capture_output=True, timeout=HANG_GUARD_S)
  metrics, results = _outputs(out)
  assert metrics["num_images"] == MAX_IMAGES and len(results) > 0
  assert {r["image_id"] for r in results} == {i["id"] for i in _images()}
  return metrics, results, _ground_truth_file(results, tmp_path_factory.mktemp("made_up"))


@pytest.mark.slow
def test_two_devices_give_the_one_device_evaluation(checkpoint, single, tmp_path):
  metrics, results, made_up = single
  out = tmp_path / "eval"
  subprocess.run(_evaluate_command(checkpoint, out), env=_env(2), check=True,
                 capture_output=True, timeout=HANG_GUARD_S)
  sharded_metrics, sharded = _outputs(out)
  assert json.loads((out / "metrics.json").read_text())["settings"]["batch_per_process"] == 2
  assert sharded_metrics == metrics and sharded_metrics["AP"] == coco_testing.keypoint_ap(
      samples.annotation_file(), sharded, [i["id"] for i in _images()])
  # The same people in the same order; their values may differ in the last bits: the 2-device
  # programs (batch 2 split over 2 devices) are compiled apart from the 1-device ones, and XLA
  # may round differently. 1e-3 px and 1e-5 in scores: far below any grouping decision.
  assert [(r["image_id"], len(r["keypoints"])) for r in sharded] == [
      (r["image_id"], len(r["keypoints"])) for r in results]
  for key, atol in (("keypoints", 1e-3), ("bbox", 1e-3), ("score", 1e-5)):
    np.testing.assert_allclose([r[key] for r in sharded], [r[key] for r in results], atol=atol,
                               rtol=0, err_msg=key)
  # Against the made-up ground truth the AP is far from 0, and differences of that size leave it
  # as it is.
  expected = coco_testing.keypoint_ap(made_up, results)
  assert expected > 0.3 and coco_testing.keypoint_ap(made_up, sharded) == expected


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_one_process_evaluation(checkpoint, single, tmp_path):
  """2 processes x 1 CPU device on localhost (gloo): each runs the single process's 1-device
  programs on its images, so the results are exactly the single process's; only process 0
  prints and writes."""
  metrics, results, _ = single
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      _evaluate_command(checkpoint, tmp_path / f"eval{i}", "--coordinator", coordinator,
                        "--num-processes", "2", "--process-id", str(i)),
      env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
  try:
    logs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, logs):
    assert p.returncode == 0, err.decode()[-3000:]
  # (gloo writes its own connection lines to stdout)
  assert b"wrote" in logs[0][0] and b"Average Precision" in logs[0][0]
  assert b"wrote" not in logs[1][0] and b"Average Precision" not in logs[1][0]
  # Process 1 writes only the stream of its own images (to resume them).
  assert [str(p.relative_to(tmp_path)) for p in (tmp_path / "eval1").rglob("*") if p.is_file()] \
      == ["eval1/partial/process-1.jsonl"]
  assert json.loads((tmp_path / "eval0" / "metrics.json").read_text())["settings"][
      "processes"] == 2
  assert _outputs(tmp_path / "eval0") == (metrics, results)


def _run_coco_evaluator(out: str, coco_root: str, checkpoint: str) -> None:
  """The trainer's evaluator on every local device, twice, with the COCO folder source in place
  of the TFDS one (tests/test_evaluate_tfds.py: both give the same images and ground truth);
  writes both metrics and the number of programs compiled by the second evaluation."""
  import jax
  from ehrnet_jax import weights
  from ehrnet_jax.inference import coco_evaluation
  from ehrnet_jax.training.evaluation import CocoEvaluator
  coco_evaluation.tfds_dataset = coco_evaluation.coco_folder
  variables, spec = weights.load_variables(checkpoint)
  evaluator = CocoEvaluator(coco_root, samples.SPLIT, spec.input_size, MAX_IMAGES)
  first = evaluator(variables, spec)
  compiled = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **_: compiled.append(event)
      if event == "/jax/core/compile/backend_compile_duration" else None)
  second = evaluator(variables, spec)
  pathlib.Path(out).write_text(json.dumps({
      "devices": jax.local_device_count(), "first": first, "second": second,
      "compiled": len(compiled)}))


@pytest.mark.slow
def test_coco_evaluator_on_two_devices_gives_the_one_device_metrics(checkpoint, single, tmp_path):
  """The 1-device truth: `ehrnet evaluate` (the same network, flip test and decoding) scored
  against the made-up ground truth, which the evaluator reads here."""
  _, results, made_up = single
  out = tmp_path / "metrics.json"
  root = made_up.parents[1]
  (root / samples.SPLIT).symlink_to(samples.coco_dir() / samples.SPLIT)
  subprocess.run([sys.executable, __file__, "coco-evaluator", str(out), str(root),
                  str(checkpoint)], env=_env(2), check=True, timeout=HANG_GUARD_S)
  written = json.loads(out.read_text())
  assert written["devices"] == 2
  stats = coco_testing.keypoint_stats(made_up, results)
  expected = {"ap": stats["AP"], "ap50": stats["AP50"], "ar": stats["AR"]}
  # Exact: differences in the last bits of the 2-device values leave the AP as is (see above).
  assert written["first"] == written["second"] == expected and expected["ap"] > 0.3
  assert written["compiled"] == 0   # the second evaluation reuses every compiled program


if __name__ == "__main__":
  if sys.argv[1] == "coco-evaluator":
    _run_coco_evaluator(*sys.argv[2:])
