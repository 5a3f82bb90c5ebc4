"""Import boundaries.

- The model, the training step, the decoder and the trainer's writer work without TensorFlow,
  TFDS, pycocotools and jax2onnx (as on a GPU machine with JAX only): those are imported only by
  data building, COCO evaluation and export. Everything but the ONNX export imports without the
  `export` extra of setup.cfg (the default install).
- The library's modules import each other without cycles, and the floors hold: `models` below
  the inference package, the inference package below `training` and `commands`; the inference
  core (image -> people with any backend) imports neither JAX nor onnxruntime nor a decoder of
  one. Checked on the source (`import_graph`), lazy imports included.
"""

import pathlib
import subprocess
import sys

import pytest

from support import import_graph
from support.without_packages import GPU_MACHINE_ABSENT

REPO = pathlib.Path(__file__).resolve().parents[1]

# Run by tests/support/without_packages.py, with the four packages absent.
SCRIPT = r'''
import json
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ehrnet_jax import config, counting, inference, losses, models, scaling
from ehrnet_jax.data import targets
from ehrnet_jax.inference import jax_decoder
from ehrnet_jax.training import optim, state, step, writers

tx = optim.make_optimizer(config.TrainConfig(), steps_per_epoch=10)

# H-4's spec and training state, shapes only.
spec = scaling.ScalingSpec.from_name("H-4")
abstract = state.abstract_train_state(models.EfficientHRNet(spec), tx)
assert counting.count_params(abstract.params) == 2_764_706


class Tiny(nn.Module):
  """Pose outputs at 1/4 and 1/2 from two strided convolutions: a step that compiles fast."""
  @nn.compact
  def __call__(self, images, train):
    quarter = nn.BatchNorm(use_running_average=not train)(
        nn.Conv(34, (4, 4), strides=(4, 4))(images))
    return models.PoseOutputs(quarter[..., :17], quarter[..., 17:],
                              nn.Conv(17, (2, 2), strides=(2, 2))(images))


# One training step: targets built on device, the pose loss, Adam.
keypoints = np.zeros((1, 30, 17, 3), np.int32)
keypoints[0, 0, :5] = (3, 4, 1)
host = {"image": np.zeros((1, 32, 32, 3), np.uint8), "mask_4": np.ones((1, 8, 8), np.uint8),
        "mask_2": np.ones((1, 16, 16), np.uint8), "keypoints_4": keypoints,
        "keypoints_2": keypoints}
train_step = jax.jit(step.make_train_step(Tiny(), tx, losses.pose_loss, freeze_backbone=False))
train_state = state.create_train_state(Tiny(), tx, jax.random.key(0))
train_state, metrics = train_step(train_state, targets.prepare_batch(host), jax.random.key(1))
assert int(train_state.step) == 1 and float(metrics["heatmap_4"]) > 0

# Decoding's device half (NMS, top-k) and an image through the host pipeline (warp, maps of a
# stand-in network with every joint at one spot, grouping, back to the image).
heatmaps = np.zeros((1, 17, 8, 8), np.float32)
heatmaps[0, :, 2, 3] = 0.9
xy, values, _ = jax_decoder.nms_top_k(jnp.asarray(heatmaps), jnp.zeros((1, 17, 8, 8, 1)), 2, 3)
assert xy[0, 0, 0].tolist() == [3, 2] and float(values[0, 0, 0]) == np.float32(0.9)


def network(images):
  quarter = np.zeros((len(images), 16, 16, 17), np.float32)
  quarter[:, 4, 8] = 0.9
  return quarter, np.zeros_like(quarter), np.zeros((len(images), 32, 32, 17), np.float32)


estimator = inference.PoseEstimator(inference.HostDecoder(network), input_size=64)
(poses,) = estimator([np.zeros((64, 64, 3), np.uint8)])
assert poses.people.shape[:2] == (1, 17)

# The trainer's metrics: metrics.jsonl and TensorBoard events.
with tempfile.TemporaryDirectory() as workdir:
  writer = writers.MetricWriter(workdir)
  writer.write(3, {"loss": 0.5})
  writer.close()
  with open(f"{workdir}/metrics.jsonl", encoding="utf-8") as f:
    assert json.loads(f.read())["loss"] == 0.5

'''


@pytest.mark.slow
def test_model_step_decoder_and_writer_work_without_tf_tfds_pycocotools_jax2onnx(tmp_path):
  script = tmp_path / "script.py"
  script.write_text(SCRIPT)
  result = subprocess.run([sys.executable, str(REPO / "tests" / "support" / "without_packages.py"),
                           ",".join(GPU_MACHINE_ABSENT), str(script)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,  # a hang guard
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]


GRAPH = import_graph.project_graph()
INFERENCE = "ehrnet_jax.inference"
BACKENDS = {f"{INFERENCE}.jax_decoder", f"{INFERENCE}.device_maps", f"{INFERENCE}.onnx_decoder"}
# Reads COCO evaluation images from the TFDS build through the TensorFlow input pipeline (which
# uses JAX) when asked to; its own imports are checked below.
TFDS_SOURCE = f"{INFERENCE}.coco_evaluation"
CORE = sorted(m for m in GRAPH if m.split(".")[:2] == ["ehrnet_jax", "inference"]
              and m not in BACKENDS | {TFDS_SOURCE})


def _floor(module: str) -> str:
  return module.split(".")[1] if "." in module else module


def test_the_library_has_no_import_cycles():
  assert import_graph.cycles(GRAPH) == []


def test_the_checker_finds_a_cycle_through_a_lazy_import(tmp_path, monkeypatch):
  package = tmp_path / "ehrnet_jax"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "a.py").write_text("from ehrnet_jax import b\n")
  (package / "b.py").write_text("def f():\n  from ehrnet_jax.a import g\n")
  monkeypatch.setattr(import_graph, "ROOT", package)
  assert import_graph.cycles(import_graph.project_graph()) == [["ehrnet_jax.a", "ehrnet_jax.b"]]


@pytest.mark.parametrize("floor, above", [
    ("models", {"inference", "training", "commands", "export"}),
    ("inference", {"training", "commands"}),
])
def test_lower_floors_do_not_import_higher_ones(floor, above):
  crossing = sorted((m, t) for m, targets in GRAPH.items() if _floor(m) == floor
                    for t in targets if _floor(t) in above)
  assert crossing == []


@pytest.mark.parametrize("module", CORE)
def test_the_inference_core_imports_no_backend(module):
  reached = import_graph.reachable(GRAPH, module) | {module}
  assert reached & BACKENDS == set()
  imports = import_graph.imports()
  third_party = set().union(*(imports[m] for m in reached))
  assert third_party & {"jax", "jaxlib", "flax", "onnxruntime"} == set()


def test_coco_evaluation_imports_jax_only_for_the_tfds_source():
  imports = import_graph.imports()[TFDS_SOURCE]
  assert imports & (BACKENDS | {"jax", "flax", "onnxruntime"}) == set()


# The packages only the `export` extra installs, and the modules that may import them.
EXPORT_EXTRA = ("jax2onnx", "onnx")
EXPORT_EXTRA_MODULES = ("ehrnet_jax.export.lean", "ehrnet_jax.export.onnx",
                        "ehrnet_jax.export.tensorrt")

# Run by tests/support/without_packages.py with the export extra's packages absent; argv[1:] are
# the modules that need them.
IMPORT_ALL_SCRIPT = r'''
import importlib
import pkgutil
import sys

import ehrnet_jax

needing_the_extra = set(sys.argv[1:])
modules = sorted(info.name for info in pkgutil.walk_packages(ehrnet_jax.__path__, "ehrnet_jax.")
                 if not info.name.endswith(".__main__"))   # __main__ runs the CLI
assert len(modules) > 50 and needing_the_extra <= set(modules), modules
for name in modules:
  if name not in needing_the_extra:
    importlib.import_module(name)
for name in needing_the_extra:
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as error:
    assert error.name in ("jax2onnx", "onnx"), (name, error.name)
  else:
    raise AssertionError(f"{name} imports without the export extra: drop it from the list")
'''


@pytest.mark.slow
def test_everything_but_the_onnx_export_imports_without_the_export_extra(tmp_path):
  script = tmp_path / "import_all.py"
  script.write_text(IMPORT_ALL_SCRIPT)
  result = subprocess.run([sys.executable, str(REPO / "tests" / "support" / "without_packages.py"),
                           ",".join(EXPORT_EXTRA), str(script), *EXPORT_EXTRA_MODULES], cwd=REPO,
                          capture_output=True, text=True, timeout=600,  # a hang guard
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]


# What `ehrnet predict --backend jax` imports: the CLI, the command, the JAX decoder and the
# checkpoint reader, then JAX's backend, as the command does before its first image.
PREDICT_IMPORTS = r'''
import sys
from ehrnet_jax import cli
from ehrnet_jax.commands import _runtime, predict
from ehrnet_jax.inference import jax_decoder, predict as predict_lib
from ehrnet_jax import weights
import jax
jax.devices()
print(",".join(sorted(m for m in ("tensorflow", "tensorflow_datasets", "grain", "pycocotools",
                                  "optax") if m in sys.modules)))
'''


def test_predict_imports_no_tensorflow_tfds_grain_pycocotools_or_optax():
  """They cost seconds at start-up (TensorFlow alone several) and predict needs none of them."""
  result = subprocess.run([sys.executable, "-c", PREDICT_IMPORTS], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=True)  # a hang guard
  assert result.stdout.strip() == ""
