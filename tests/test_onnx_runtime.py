"""`ehrnet_jax.inference.onnx_decoder` on hand-built ONNX graphs: layouts, static batches,
padding, errors.

The exported network itself is checked against JAX in `test_export.py` (including the black
padding); here a tiny graph with known outputs (average pooling of the images) tests the
runtime's bookkeeping, and `ehrnet predict --backend onnx` on a runtime-only install (no JAX,
no TensorFlow: requirements-runtime.txt).
"""

import importlib.metadata
import json
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ehrnet_jax import cli, samples
from ehrnet_jax import images as images_lib
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import onnx_decoder

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pooling_model(path, batch, layout, hw=(64, 32), metadata=True, joints=3, bright=False):
  """images -> (avg-pool 4, 2 * avg-pool 4, avg-pool 2) of the 3 channels, in `layout`.

  With `joints` != 3, a fixed random 1x1 convolution first maps the 3 channels to `joints`, with
  small weights: no joint reaches the detection threshold, so that grouping takes no time. With
  `bright`, that convolution averages the channels instead: every joint of one person where the
  image is bright (normalised white is ~2.5, black ~-2, below the threshold).
  """
  h, w = hw
  b = batch or "batch"
  nchw = layout == "NCHW"
  shape = (lambda c, s: [b, c, h // s, w // s]) if nchw else (lambda c, s: [b, h // s, w // s, c])
  nodes = [] if nchw else [helper.make_node("Transpose", ["images"], ["x"], perm=[0, 3, 1, 2])]
  source = "images" if nchw else "x"
  weights = np.random.default_rng(0).normal(0, 0.01, (joints, 3, 1, 1)).astype(np.float32)
  if bright:
    weights = np.full((joints, 3, 1, 1), 1 / 3, np.float32)
  initializers = [numpy_helper.from_array(weights, "w")] if joints != 3 else []
  if initializers:
    nodes.append(helper.make_node("Conv", [source, "w"], ["c"]))
    source = "c"
  pools = {"p4": 4, "p2": 2}
  nodes += [helper.make_node("AveragePool", [source], [name], kernel_shape=[s, s], strides=[s, s])
            for name, s in pools.items()]
  nodes.append(helper.make_node("Add", ["p4", "p4"], ["t4"]))
  outputs = {"heatmaps_4": ("p4", 4), "tags_4": ("t4", 4), "heatmaps_2": ("p2", 2)}
  for name, (value, _) in outputs.items():
    perm = [0, 1, 2, 3] if nchw else [0, 2, 3, 1]
    nodes.append(helper.make_node("Transpose", [value], [name], perm=perm))
  graph = helper.make_graph(
      nodes, "pool", [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape(3, 1))],
      [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape(joints, s))
       for n, (_, s) in outputs.items()], initializer=initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                            ir_version=8)
  if metadata:
    helper.set_model_props(model, {
        "ehrnet.variant": "H-4", "ehrnet.phi": "-4", "ehrnet.input_size": "384",
        "ehrnet.image_hw": f"{h}x{w}", "ehrnet.batch": str(batch or "dynamic"),
        "ehrnet.layout": layout})
  onnx.save(model, str(path))
  return path


def _pool(x, s):
  b, h, w, c = x.shape
  return x.reshape(b, h // s, s, w // s, s, c).mean((2, 4))


@pytest.mark.parametrize("batch, layout", [(None, "NHWC"), (2, "NCHW"), (1, "NHWC")])
def test_any_batch_and_smaller_images_give_nhwc_maps(tmp_path, batch, layout):
  network = onnx_decoder.OnnxNetwork(_pooling_model(tmp_path / "m.onnx", batch, layout))
  assert network.info.image_hw == (64, 32) and network.info.input_size == 384
  rng = np.random.default_rng(0)
  images = images_lib.normalize(rng.integers(0, 256, (3, 48, 24, 3), np.uint8))
  heatmaps_4, tags_4, heatmaps_2 = network(images)
  # Padded to 64x32 for the model, cropped back: pooling windows never mix the two.
  np.testing.assert_allclose(heatmaps_4, _pool(images, 4), atol=1e-5)
  np.testing.assert_allclose(tags_4, 2 * _pool(images, 4), atol=1e-5)
  np.testing.assert_allclose(heatmaps_2, _pool(images, 2), atol=1e-5)


def test_too_large_images_name_the_size_to_export(tmp_path):
  network = onnx_decoder.OnnxNetwork(_pooling_model(tmp_path / "m.onnx", None, "NHWC"))
  message = r"up to 32x64 \(WxH\) but this one needs 48x96.*--size 96x48"
  with pytest.raises(UserError, match=message):
    network(np.zeros((1, 96, 48, 3), np.float32))


def _blob_frame(xy, hw=(360, 640)):
  """A black BGR frame with a white Gaussian blob (sigma 8 px) centred at `xy`: one brightest
  point."""
  ys, xs = np.mgrid[:hw[0], :hw[1]]
  blob = 255 * np.exp(-((xs - xy[0]) ** 2 + (ys - xy[1]) ** 2) / (2 * 8.0 ** 2))
  return np.repeat(np.round(blob)[..., None], 3, -1).astype(np.uint8)


def test_a_16_9_clip_runs_through_the_default_square_export(tmp_path):
  """640x360 frames with the model at H-4's default export size, 384x384: refused before (their
  test size is 704x384), now each frame is fitted in and the person found at the bright blob
  maps back onto it."""
  model = _pooling_model(tmp_path / "m.onnx", None, "NHWC", hw=(384, 384), joints=17,
                         bright=True)
  discs = [(100, 60), (320, 180), (560, 300)]
  writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5,
                           (640, 360))
  for xy in discs:
    writer.write(_blob_frame(xy))
  writer.release()
  assert cli.main(["predict", "--backend", "onnx", str(model), str(tmp_path / "clip.mp4"),
                   "--out", str(tmp_path / "out")]) == 0
  records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").open()]
  assert [r["frame"] for r in records] == [0, 1, 2]
  for record, xy in zip(records, discs):
    (person,) = record["people"]
    joints = np.asarray(person["keypoints"]).reshape(17, 3)
    # Within one pixel of the fitted input (zoom 0.6: 1.67 image pixels): the pooling's
    # half-pixel offset and the decoder's quarter-pixel adjustment put it 0.75 input pixels off
    # (measured); a wrong centre, zoom or band moves it by tens of pixels.
    np.testing.assert_allclose(joints[:, :2], np.broadcast_to(xy, (17, 2)), atol=1 / 0.6)
  run = json.loads((tmp_path / "out" / "run.json").read_text())
  assert run["input_size_hw"] == [384, 384]


def test_input_size_fits_images_into_a_part_of_the_model(tmp_path, capsys):
  """`--input-size` smaller than the model: the image is fitted into it, then padded to the
  model's size; larger (or larger at the largest scale) is refused before any image runs."""
  model = _pooling_model(tmp_path / "m.onnx", None, "NHWC", hw=(384, 384), joints=17,
                         bright=True)
  cv2.imwrite(str(tmp_path / "a.png"), _blob_frame((500, 100)))
  assert cli.main(["predict", "--backend", "onnx", str(model), str(tmp_path / "a.png"), "--out",
                   str(tmp_path / "out"), "--input-size", "192x320", "--no-draw"]) == 0
  assert "every image fitted into 192x320 (HxW)" in capsys.readouterr().err
  (person,) = json.loads((tmp_path / "out" / "predictions.json").read_text())
  # Within one input pixel, as above, at zoom 0.5.
  np.testing.assert_allclose(np.reshape(person["keypoints"], (17, 3))[:, :2],
                             np.broadcast_to((500, 100), (17, 2)), atol=1 / 0.5)
  for flags in (["--input-size", "416x384"], ["--input-size", "320x320", "--scales", "1,1.5"]):
    assert cli.main(["predict", "--backend", "onnx", str(model), str(tmp_path / "a.png"),
                     "--out", str(tmp_path / "big"), *flags]) == 2
    assert "takes network inputs up to 384x384 (HxW)" in capsys.readouterr().err
  assert not (tmp_path / "big" / "predictions.json").exists()


def test_bad_model_files_are_named(tmp_path):
  with pytest.raises(UserError, match="no such ONNX file"):
    onnx_decoder.OnnxNetwork(tmp_path / "missing.onnx")
  (tmp_path / "garbage.onnx").write_bytes(b"not a model")
  with pytest.raises(UserError, match="garbage.onnx: onnxruntime cannot load"):
    onnx_decoder.OnnxNetwork(tmp_path / "garbage.onnx")
  plain = _pooling_model(tmp_path / "plain.onnx", None, "NHWC", metadata=False)
  with pytest.raises(UserError, match="plain.onnx: not an ONNX model written by `ehrnet export`"):
    onnx_decoder.OnnxNetwork(plain)
  with pytest.raises(UserError, match="holds variant H-4, not H0"):
    onnx_decoder.onnx_estimator(_pooling_model(tmp_path / "m.onnx", None, "NHWC"), "H0")


def test_unavailable_device_is_an_error():
  if "CUDAExecutionProvider" in onnx_decoder.onnxruntime.get_available_providers():
    pytest.skip("this onnxruntime has CUDA")
  with pytest.raises(UserError, match="--device cuda: onnxruntime here has no CUDA"):
    onnx_decoder.session_providers("cuda")
  assert onnx_decoder.session_providers("cpu") == ["CPUExecutionProvider"]


# Runs `ehrnet` with the given top-level modules unimportable; prints the exit code and the
# top-level modules the command imported. argv: the blocked names (comma-separated), then the
# command line.
RUNTIME_ONLY = """
import json, sys
blocked = set(sys.argv[1].split(","))

class Uninstalled:
  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] in blocked:
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Uninstalled())
before = set(sys.modules)
from ehrnet_jax import cli
code = cli.main(sys.argv[2:])
imported = {name.partition(".")[0] for name in set(sys.modules) - before}
print(json.dumps({"code": code, "imported": sorted(imported)}))
"""


def _installed_modules() -> dict[str, set[str]]:
  """{top-level module: the installed packages providing it}, ehrnet_jax left out."""
  return {module: {canonicalize_name(owner) for owner in owners}
          for module, owners in importlib.metadata.packages_distributions().items()
          if module != "ehrnet_jax"}


def _runtime_packages() -> set[str]:
  """requirements-runtime.txt's packages and their dependencies (no extras), closed."""
  lines = (REPO / "requirements-runtime.txt").read_text().splitlines()
  pending = [Requirement(line).name for line in lines if line.strip() and not line.startswith("#")]
  packages = set()
  while pending:
    name = canonicalize_name(pending.pop())
    if name not in packages:
      packages.add(name)
      requirements = map(Requirement, importlib.metadata.requires(name) or [])
      pending += [r.name for r in requirements if not r.marker or r.marker.evaluate({"extra": ""})]
  return packages


def _run_runtime_only(*argv) -> tuple[dict, str, set[str]]:
  """`ehrnet *argv` as on a runtime-only install: every installed module that no package of
  requirements-runtime.txt provides is unimportable. Returns the subprocess's report, its stderr
  and the modules that were blocked."""
  runtime = _runtime_packages()
  blocked = {module for module, owners in _installed_modules().items() if not owners & runtime}
  result = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, ",".join(sorted(blocked)),
                           *map(str, argv)], capture_output=True, text=True, check=True)
  return json.loads(result.stdout.splitlines()[-1]), result.stderr, blocked


def test_onnx_predict_needs_only_the_runtime_requirements(tmp_path):
  """README: `pip install --no-deps -e . && pip install -r requirements-runtime.txt` runs
  `ehrnet predict --backend onnx`; every module it imports is the standard library's or comes
  from requirements-runtime.txt (numpy's optional imports, absent there, are blocked)."""
  model = _pooling_model(tmp_path / "m.onnx", None, "NHWC", hw=(384, 576), joints=17)
  image = next(p for p in samples.images() if p.name == "000000129648.jpg")   # 576x384 test size
  report, stderr, blocked = _run_runtime_only("predict", "--backend", "onnx", model, image,
                                              "--out", tmp_path / "out")
  assert {"jax", "flax", "tensorflow", "torch", "pycocotools"} <= blocked
  assert report["code"] == 0, stderr
  imported = set(report["imported"])
  assert not imported & blocked
  assert {"onnxruntime", "cv2", "numpy", "tqdm", "ehrnet_jax"} <= imported
  assert isinstance(json.loads((tmp_path / "out" / "predictions.json").read_text()), list)
  assert (tmp_path / "out" / "000000129648.jpg").is_file()


def test_jax_commands_on_a_runtime_only_install_say_what_to_install(tmp_path):
  report, stderr, _ = _run_runtime_only("evaluate", "--variant", "H-4", "--checkpoint", tmp_path,
                                        "--coco-dir", samples.coco_dir(), "--split", "train2017",
                                        "--out", tmp_path / "eval")
  assert report["code"] == 2 and "Traceback" not in stderr
  assert "needs the Python package '" in stderr and "`pip install -e .`" in stderr
