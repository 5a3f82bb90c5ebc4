"""`ehrnet export`: ONNX and SavedModel graphs match the JAX model; TensorRT's message where
there is no GPU; bad flags."""

import json

import cv2
import jax
import numpy as np
import onnx
import onnxruntime
import pytest

from ehrnet_jax import cli, samples, weights
from ehrnet_jax import images as images_lib
from ehrnet_jax.errors import UserError
from ehrnet_jax.export import network, tensorrt
from ehrnet_jax.export import onnx as onnx_export
from ehrnet_jax.inference import onnx_decoder
from ehrnet_jax.models import EfficientHRNet, ExecutionForm
from ehrnet_jax.scaling import ScalingSpec
from support import coco_testing
from support import tolerances

SPEC = ScalingSpec.from_name("H-4")
# Operators the exported graph may use (all in the default ONNX domain): those of a PyTorch
# export of the network (Transpose only at an NHWC graph's input and outputs; Slice to split the
# 1/4-resolution maps into heatmaps and tags, Slice and Pad for the zero channels of channel
# alignment, all on the channel axis alone).
STANDARD_OPS = {"Conv", "ConvTranspose", "Relu", "Sigmoid", "Add", "Mul", "Concat", "Slice",
                "Pad", "Resize", "GlobalAveragePool", "Transpose"}


def assert_lean(model: onnx.ModelProto, layout: str) -> None:
  """The graph a deployment runtime wants: standard operators only; no layout Transpose inside
  (NCHW: none at all; NHWC: one after the input, one before each output); upsampling as Resize
  and squeeze-excitation pooling as GlobalAveragePool (no Reshape, Expand, Gemm, ReduceSum);
  every bias and batch-norm affine inside its convolution (no Add or Mul of a constant right
  after a Conv or ConvTranspose)."""
  ops = [node.op_type for node in model.graph.node]
  assert set(ops) <= STANDARD_OPS and {"Conv", "ConvTranspose", "Resize",
                                       "GlobalAveragePool"} <= set(ops), set(ops)
  transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
  if layout == "NCHW":
    assert not transposes
  else:
    ends = {model.graph.input[0].name} | {o.name for o in model.graph.output}
    assert len(transposes) == 4 and all({*t.input, *t.output} & ends for t in transposes)
  constants = {i.name for i in model.graph.initializer}
  values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
  for node in model.graph.node:  # inside the graph, channels are axis 1
    if node.op_type == "Slice":
      assert values[node.input[3]].tolist() == [1]
    if node.op_type == "Pad":
      assert values[node.input[1]].reshape(2, 4)[:, [0, 2, 3]].tolist() == [[0] * 3] * 2
  producer = {o: n for n in model.graph.node for o in n.output}
  for node in model.graph.node:
    if node.op_type in ("Add", "Mul") and set(node.input) & constants:
      sources = [producer.get(i) for i in node.input if i not in constants]
      assert not any(s is not None and s.op_type.startswith("Conv") for s in sources), node


def jax_outputs(variables, images):
  """The model as exported (grouped depthwise convs), NHWC, as NumPy."""
  apply = jax.jit(lambda x: EfficientHRNet(SPEC, ExecutionForm.export()).apply(variables, x,
                                                                               train=False))
  return [np.asarray(o) for o in apply(images)]


def assert_close(found, expected):
  """Float32 agreement of onnxruntime and JAX: max abs error <= `tolerances.EXPORT` x the
  largest output (at least 1); the reason is given there."""
  np.testing.assert_allclose(found, expected, rtol=0,
                             atol=tolerances.scaled_atol(expected, tolerances.EXPORT))


@pytest.fixture(scope="module")
def h4_checkpoint(h4_variables, tmp_path_factory):
  return weights.save_variables(tmp_path_factory.mktemp("export") / "ckpt", h4_variables,
                                    SPEC)


@pytest.fixture(scope="module")
def h4_onnx(h4_checkpoint, tmp_path_factory):
  """H-4 exported by the CLI at 384x576 (HxW, a landscape photo's test size), dynamic batch."""
  path = tmp_path_factory.mktemp("export") / "h4.onnx"
  assert cli.main(["export", "--variant", "H-4", "--checkpoint", str(h4_checkpoint), "--format",
                   "onnx", "--size", "384x576", "--out", str(path)]) == 0
  return path


@pytest.mark.slow
def test_onnx_graph_is_standard_ops_with_metadata(h4_onnx):
  model = onnx.load(str(h4_onnx))
  onnx.checker.check_model(model, full_check=True)
  assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
  assert_lean(model, "NHWC")
  assert all(node.domain == "" for node in model.graph.node)
  dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
          for value in [*model.graph.input, *model.graph.output]]
  assert dims == [["batch", 384, 576, 3], ["batch", 96, 144, 17], ["batch", 96, 144, 17],
                  ["batch", 192, 288, 17]]
  props = {p.key: p.value for p in model.metadata_props}
  assert props["ehrnet.variant"] == "H-4" and props["ehrnet.input_size"] == "384"
  assert (props["ehrnet.image_hw"], props["ehrnet.batch"], props["ehrnet.layout"]) == (
      "384x576", "dynamic", "NHWC")
  assert props["ehrnet.outputs"] == "heatmaps_4,tags_4,heatmaps_2"


@pytest.mark.slow
def test_onnx_dynamic_batch_matches_jax(h4_onnx, h4_variables):
  session = onnxruntime.InferenceSession(str(h4_onnx), providers=["CPUExecutionProvider"])
  images = np.random.default_rng(0).normal(size=(2, 384, 576, 3)).astype(np.float32)
  expected = jax_outputs(h4_variables, images)
  for batch in (images, images[1:]):
    found = session.run(None, {"images": batch})
    for f, e in zip(found, expected):
      assert_close(f, e[-len(batch):])


@pytest.mark.slow
def test_onnx_is_as_close_to_the_exact_model_as_jax_float32_is(h4_onnx, h4_variables):
  """Against the network computed in float64: onnxruntime's error is within 2e-4 and at most
  twice JAX's own float32 error (rounding, not a different graph, which is off by O(1)).

  Measured: JAX 6.9e-5, onnxruntime 9.6e-5 with its graph optimisations off and 1.13e-4 at its
  default level, whose NCHWc kernels (blocked channels, fused residual sums) run the whole lean
  graph (outputs up to 16)."""
  session = onnxruntime.InferenceSession(str(h4_onnx), providers=["CPUExecutionProvider"])
  images = np.random.default_rng(3).normal(size=(1, 384, 576, 3)).astype(np.float32)
  float32 = jax_outputs(h4_variables, images)
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), h4_variables)
    model = EfficientHRNet(SPEC, ExecutionForm.export(), dtype=np.float64)
    exact = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                                  images.astype(np.float64))
    exact = [np.asarray(o) for o in exact]
  for found, jax32, truth in zip(session.run(None, {"images": images}), float32, exact):
    onnx_error, jax_error = np.abs(found - truth).max(), np.abs(jax32 - truth).max()
    assert onnx_error <= 2e-4 and onnx_error <= 2 * jax_error, (onnx_error, jax_error)


@pytest.mark.slow
def test_onnx_static_nchw_through_the_runtime_matches_jax(h4_variables, tmp_path):
  """Batch 1, NCHW, opset 18, channel alignment 8: no layout Transpose; the runtime splits a
  batch of 2, pads smaller images with black."""
  options = network.ExportOptions((128, 96), batch=1, layout="NCHW", channel_align=8)
  model = onnx_export.export_onnx(SPEC, h4_variables, options, opset=18)
  assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 128, 96]
  assert not {node.op_type for node in model.graph.node} & {"BatchNormalization", "Sqrt"}
  assert_lean(model, "NCHW")
  backend = onnx_decoder.OnnxNetwork(onnx_export.save(model, tmp_path / "h4.onnx"))
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 96, 64, 3), np.uint8)
  padded = np.zeros((2, 128, 96, 3), np.uint8)
  padded[:, :96, :64] = images
  expected = jax_outputs(h4_variables, images_lib.normalize(padded))
  found = backend(images_lib.normalize(images))
  for f, e, stride in zip(found, expected, (4, 4, 2)):
    assert_close(f, e[:, :96 // stride, :64 // stride])


@pytest.mark.slow
def test_savedmodel_matches_jax(h4_checkpoint, tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = tmp_path / "saved"
  assert cli.main(["export", "--variant", "H-4", "--checkpoint", str(h4_checkpoint), "--format",
                   "savedmodel", "--size", "128x96", "--out", str(out)]) == 0
  serve = tf.saved_model.load(str(out)).signatures["serving_default"]
  assert serve.structured_input_signature[1]["images"].shape.as_list() == [None, 128, 96, 3]
  images = np.random.default_rng(2).normal(size=(3, 128, 96, 3)).astype(np.float32)
  found = serve(images=tf.constant(images))
  variables, _ = weights.load_variables(h4_checkpoint)
  for name, expected in zip(network.OUTPUT_NAMES, jax_outputs(variables, images)):
    assert_close(found[name].numpy(), expected)
  metadata = json.loads((out / "assets.extra" / "ehrnet.json").read_text())
  assert metadata["ehrnet.variant"] == "H-4" and metadata["ehrnet.image_hw"] == "128x96"


@pytest.mark.slow
def test_tensorrt_without_gpu_says_what_to_run(h4_onnx, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(tensorrt.importlib.util, "find_spec", lambda name: None)
  monkeypatch.setattr(tensorrt.shutil, "which", lambda name: None)
  engine = tmp_path / "h4.engine"
  with pytest.raises(UserError, match="TensorRT is not available") as error:
    tensorrt.build_engine(h4_onnx, engine, "fp16", max_batch=2)
  assert (f"trtexec --onnx={h4_onnx} --saveEngine={engine} --fp16 "
          "--minShapes=images:1x384x576x3 --optShapes=images:2x384x576x3 "
          "--maxShapes=images:2x384x576x3") in str(error.value)
  assert cli.main(["export", "--format", "tensorrt", "--onnx", str(h4_onnx), "--precision",
                   "fp32", "--out", str(engine)]) == 2
  assert "docs/deployment.md" in capsys.readouterr().err and not engine.exists()


@pytest.mark.parametrize("flags, message", [
    (["--size", "100x96"], "multiples of 32"),
    (["--size", "384"], "HxW"),
    (["--batch", "0"], "positive integer"),
    (["--opset", "13"], "--opset 13"),
])
def test_bad_export_flags_are_named(h4_checkpoint, tmp_path, flags, message, capsys):
  assert cli.main(["export", "--variant", "H-4", "--checkpoint", str(h4_checkpoint), "--format",
                   "onnx", "--out", str(tmp_path / "m.onnx"), *flags]) == 2
  assert message in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_export_checks_the_variant(h4_checkpoint, tmp_path, capsys):
  assert cli.main(["export", "--variant", "H-3", "--checkpoint", str(h4_checkpoint), "--format",
                   "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
  assert "holds variant H-4" in capsys.readouterr().err


def _predict(args):
  return cli.main(["predict", "--no-draw", *args])


def _assert_same_people(found_entries, expected_entries):
  """The same people in the same images (COCO entries of `ehrnet predict`), up to near-ties.

  The bundled random weights find ~500 "people" per photo on noisy maps, where near-ties
  abound: float32 noise moves 0.84% of the joints to another pixel (measured with the lean graph,
  which onnxruntime's NCHWc kernels run whole; 0.2% with the earlier graph; JAX's own host and
  device decoders, fed the same network outputs, disagree on 0.04%). Everything else is equal
  within 1e-3 px; a wrong model, warp or decoding would move most joints.
  """
  assert len(found_entries) == len(expected_entries) > 0
  assert [(e["image_id"], e["file_name"]) for e in found_entries] == [
      (e["image_id"], e["file_name"]) for e in expected_entries]
  found, expected = (np.array([e["keypoints"] for e in entries]).reshape(-1, 17, 3)
                     for entries in (found_entries, expected_entries))
  moved = np.abs(found[..., :2] - expected[..., :2]).max(-1) > 1e-3
  assert moved.mean() < 0.02, moved.mean()
  # A person's score is the mean of its joints' values before refine, where a near tie can pick
  # another candidate that refine then moves to the same place: up to 6.5e-4 apart (measured,
  # scores ~3); a wrong graph is off by O(1).
  np.testing.assert_allclose([e["score"] for e in found_entries],
                             [e["score"] for e in expected_entries], rtol=1e-4, atol=1e-3)


def _entries(out_dir):
  return json.loads((out_dir / "predictions.json").read_text())


@pytest.mark.slow
def test_predict_onnx_backend_gives_the_jax_json(h4_onnx, h4_checkpoint, coco_mini_dir, tmp_path):
  """Photos whose test size is the exported 576x384 and holds them whole (640x427): the same
  people as the JAX backend, which runs the reference's test size (the ONNX model's fit into its
  size is then that warp)."""
  images = [str(coco_mini_dir / "train2017" / name)
            for name in ("000000070133.jpg", "000000211325.jpg")]
  assert _predict(["--variant", "H-4", "--checkpoint", str(h4_checkpoint), "--out",
                   str(tmp_path / "jax"), *images]) == 0
  assert _predict(["--backend", "onnx", "--out", str(tmp_path / "onnx"), str(h4_onnx),
                   *images]) == 0
  assert {e["image_id"] for e in _entries(tmp_path / "jax")} == {1, 2}
  _assert_same_people(_entries(tmp_path / "onnx"), _entries(tmp_path / "jax"))


@pytest.mark.slow
def test_frames_of_any_shape_fit_the_model_with_both_backends(h4_onnx, h4_checkpoint, tmp_path,
                                                              capsys):
  """A 640x360 frame (test size 704x384) and a portrait photo (448x384), too large for the
  384x576 (HxW) model before: fitted in, the same people with onnxruntime (by default) and JAX
  (`--input-size 384x576`); an input size larger than the model is refused, naming the sizes."""
  photo = next(p for p in samples.images() if p.name == "000000129648.jpg")   # 640x427
  frame = cv2.imread(str(photo))[:360]
  cv2.imwrite(str(tmp_path / "frame.png"), frame)
  portrait = next(p for p in samples.images() if p.name == "000000256353.jpg")
  images = [str(tmp_path / "frame.png"), str(portrait)]
  assert _predict(["--variant", "H-4", "--checkpoint", str(h4_checkpoint), "--input-size",
                   "384x576", "--out", str(tmp_path / "jax"), *images]) == 0
  assert _predict(["--backend", "onnx", "--out", str(tmp_path / "onnx"), str(h4_onnx),
                   *images]) == 0
  _assert_same_people(_entries(tmp_path / "onnx"), _entries(tmp_path / "jax"))
  assert _predict(["--backend", "onnx", str(h4_onnx), str(portrait), "--input-size", "448x576",
                   "--out", str(tmp_path / "large")]) == 2
  assert ("takes network inputs up to 384x576 (HxW), but 448x576 at scale 1 needs 448x576"
          in capsys.readouterr().err)


@pytest.mark.slow
def test_evaluate_onnx_backend_scores_the_exported_model(h4_onnx, tmp_path):
  """`ehrnet evaluate --backend onnx`: pycocotools metrics of the exported model, whose people are
  those `ehrnet predict --backend onnx` finds (one sample photo with a 384x576 test size)."""
  name, image_id = "000000129648.jpg", 129648
  coco = tmp_path / "coco"
  (coco / "annotations").mkdir(parents=True)
  (coco / samples.SPLIT).mkdir()
  (coco / samples.SPLIT / name).symlink_to(samples.coco_dir() / samples.SPLIT / name)
  annotations_file = f"annotations/person_keypoints_{samples.SPLIT}.json"
  dataset = json.loads((samples.coco_dir() / annotations_file).read_text())
  dataset["images"] = [i for i in dataset["images"] if i["id"] == image_id]
  dataset["annotations"] = [a for a in dataset["annotations"] if a["image_id"] == image_id]
  (coco / annotations_file).write_text(json.dumps(dataset))
  assert cli.main(["evaluate", "--backend", "onnx", "--checkpoint", str(h4_onnx), "--coco-dir",
                   str(coco), "--split", samples.SPLIT, "--out", str(tmp_path / "eval")]) == 0
  metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert metrics["settings"]["backend"] == "onnx" and metrics["num_images"] == 1
  assert metrics["num_people"] == len(evaluated) > 0
  # The AP is pycocotools' own on the written results (the same NumPy computation: exact).
  assert metrics["AP"] == coco_testing.keypoint_ap(coco / annotations_file, evaluated)
  assert _predict(["--backend", "onnx", str(h4_onnx), str(coco / samples.SPLIT / name), "--out",
                   str(tmp_path / "predict")]) == 0
  predicted = json.loads((tmp_path / "predict" / "predictions.json").read_text())
  assert [e["image_id"] for e in evaluated] == [image_id] * len(predicted)
  np.testing.assert_allclose([e["keypoints"] for e in evaluated],
                             [e["keypoints"] for e in predicted], atol=1e-3)
  np.testing.assert_allclose([e["score"] for e in evaluated], [e["score"] for e in predicted],
                             atol=1e-6)
