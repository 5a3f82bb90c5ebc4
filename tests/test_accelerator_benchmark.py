"""benchmarks/accelerator.py runs without TensorFlow, TFDS, pycocotools and jax2onnx (as on the GPU
machines) and measures both frameworks; here on the CPU at tiny sizes (the GPU's figures are in
BENCHMARKS.md once a GPU has run it)."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

from support.without_packages import GPU_MACHINE_ABSENT

pytest.importorskip("torch", reason="the reference rows need PyTorch (extra 'torch')")

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accelerator.py"
# Only against a hung subprocess, not a speed limit (~1-2 minutes on an idle 2-core machine).
HANG_GUARD_S = 1800


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO / "tests" / "support" / "without_packages.py"),
                         ",".join(GPU_MACHINE_ABSENT), str(SCRIPT), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=HANG_GUARD_S)


def test_help():
  result = _run("--help")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--budget-s" in result.stdout and "--allow-cpu" in result.stdout


def test_refuses_the_cpu_unless_allowed():
  result = _run("--frameworks", "jax", "--out", "/dev/null")
  assert result.returncode != 0
  assert "JAX runs on the CPU" in result.stderr and "--allow-cpu" in result.stderr


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
  """The main rows in bf16 only: fp32 training is what the rest of the suite compiles, and each
  H-4 training step costs ~40 s of XLA:CPU compilation."""
  out = tmp_path_factory.mktemp("accelerator") / "table.json"
  result = _run("--allow-cpu", "--variants", "H-4", "--size", "64", "--train-batch", "2",
                "--infer-batches", "1", "--steps", "2", "--warmup", "1", "--precisions", "bf16",
                "--sections", "train,inference", "--out", str(out))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.mark.slow
def test_cpu_smoke_run_holds_the_jax_and_pytorch_rows(table):
  environment = table["environment"]
  assert environment["backend"] == "cpu" and environment["jax"]
  assert environment["pytorch"]["torch"] and environment["pytorch"]["gpu"] is None
  rows = {(r["kind"], r["framework"]): r for r in table["rows"]}
  assert set(rows) == {(kind, framework) for kind in ("train", "inference")
                       for framework in ("jax", "pytorch")}
  for key, row in rows.items():
    assert "error" not in row and "skipped" not in row, (key, row)
    assert (row["variant"], row["size"], row["precision"]) == ("H-4", 64, "bf16")
    assert row["median_s"] > 0 and row["images_per_second"] == pytest.approx(
        row["batch"] / row["median_s"], abs=0.01), key  # rounded to 2 decimals
  jax_row = rows[("train", "jax")]
  # XLA's FLOP count of the step: H-4's forward at 64x64 is ~3.63 GFLOPs x (64/384)^2 per image
  # (README), the backward about twice that: 3x forward x 2 images, within a factor 2.
  forward = 3.63e9 * (64 / 384) ** 2 * 2
  assert 1.5 * forward < jax_row["xla_flops"] < 6 * forward
  assert jax_row["program_memory_gb"] > 0 and jax_row["matmul_precision"] == "highest"
  assert rows[("train", "pytorch")]["precision_settings"]["autocast"] == "bfloat16"
  # Both frameworks train the same network on random targets from their own initialisations:
  # a finite, positive loss of the same kind (heatmap MSE dominates), not the same number.
  for framework in ("jax", "pytorch"):
    loss = rows[("train", framework)]["loss"]
    assert math.isfinite(loss) and loss > 0
  (goal,) = table["goals"]
  assert goal["precision"] == "bf16" and goal["value"] == pytest.approx(
      jax_row["images_per_second"] / rows[("train", "pytorch")]["images_per_second"], rel=1e-2)


def test_no_row_starts_without_budget(tmp_path):
  out = tmp_path / "table.json"
  result = _run("--allow-cpu", "--budget-s", "0", "--variants", "H-4", "--out", str(out))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  assert rows and all(row["skipped"] == "time budget" for row in rows)
  # Most important first: H-4 training fp32 and bf16, JAX then PyTorch, then inference.
  assert [(r["kind"], r["framework"], r["precision"]) for r in rows[:5]] == [
      ("train", "jax", "fp32"), ("train", "pytorch", "fp32"), ("train", "jax", "bf16"),
      ("train", "pytorch", "bf16"), ("inference", "jax", "fp32")]


def _accelerator_module():
  sys.path.insert(0, str(SCRIPT.parent))
  try:
    spec = importlib.util.spec_from_file_location("accelerator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  finally:
    sys.path.remove(str(SCRIPT.parent))


def test_goals_from_hand_made_rows():
  accelerator = _accelerator_module()
  row = lambda framework, kind, precision, **figures: {
      "framework": framework, "kind": kind, "variant": "H0", "precision": precision,
      "batch": figures.pop("batch", 16), "form": figures.pop("form", "default"),
      "freeze_backbone": figures.pop("frozen", False), "median_s": 1.0, **figures}
  rows = [row("jax", "train", "bf16", images_per_second=300.0, fraction_of_bf16_peak=0.2),
          row("jax", "train", "bf16", batch=32, images_per_second=330.0,
              fraction_of_bf16_peak=0.25),
          row("jax", "train", "bf16", frozen=True, images_per_second=900.0),  # not a goal's row
          row("pytorch", "train", "bf16", images_per_second=100.0),
          row("pytorch", "train", "bf16", form="channels_last", images_per_second=150.0),
          row("jax", "train", "fp32", images_per_second=50.0),
          row("jax", "inference", "bf16", batch=1, latency_ms=2.0),
          row("jax", "inference", "bf16", batch=8, latency_ms=1.0),       # throughput, not latency
          row("pytorch", "inference", "fp32", batch=1, latency_ms=5.0),
          {"framework": "pytorch", "kind": "train", "variant": "H0", "precision": "fp32",
           "skipped": "time budget"}]
  goals = {(g["goal"].split(",")[0], g.get("precision")): g["value"]
           for g in accelerator.goals(rows)}
  # 330 / max(100, 150); no fp32 pair (PyTorch's was skipped); best fraction 0.25; 2 / 5.
  assert goals == {("training images/s", "bf16"): 2.2, ("H0 bf16 training", None): 0.25,
                   ("batch-1 latency", None): 0.4}


def test_peak_fraction_uses_the_device_table():
  accelerator = _accelerator_module()
  row = accelerator.Row("train", "jax", "H0", 32, "bf16")
  result = accelerator.with_peak_fraction({"xla_flops": 2.0e12, "median_s": 0.01}, row,
                                          "NVIDIA H100 80GB HBM3")
  devices = accelerator.jax.local_device_count()
  assert result["achieved_tflops"] == pytest.approx(200.0 * devices)
  assert result["fraction_of_bf16_peak"] == pytest.approx(200.0 / 989.4, abs=1e-4)
  assert accelerator.with_peak_fraction({"xla_flops": 1.0, "median_s": 1.0}, row,
                                        "AMD EPYC").keys() == {"xla_flops", "median_s",
                                                               "achieved_tflops"}
