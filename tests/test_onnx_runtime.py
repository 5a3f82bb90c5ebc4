"""`ehrnet_jax.onnx_runtime` on hand-built ONNX graphs: layouts, static batches, padding, errors.

The exported network itself is checked against JAX in `test_export.py` (including the black
padding); here a tiny graph with known outputs (average pooling of the images) tests the
runtime's bookkeeping.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ehrnet_jax import images as images_lib
from ehrnet_jax import onnx_runtime
from ehrnet_jax.errors import UserError


def _pooling_model(path, batch, layout, hw=(64, 32), metadata=True):
  """images -> (avg-pool 4, 2 * avg-pool 4, avg-pool 2) of the 3 channels, in `layout`."""
  h, w = hw
  b = batch or "batch"
  nchw = layout == "NCHW"
  shape = (lambda c, s: [b, c, h // s, w // s]) if nchw else (lambda c, s: [b, h // s, w // s, c])
  nodes = [] if nchw else [helper.make_node("Transpose", ["images"], ["x"], perm=[0, 3, 1, 2])]
  source = "images" if nchw else "x"
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
      [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape(3, s))
       for n, (_, s) in outputs.items()])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                            ir_version=8)
  if metadata:
    helper.set_model_props(model, {
        "ehrnet.variant": "H-4", "ehrnet.input_size": "384", "ehrnet.image_hw": f"{h}x{w}",
        "ehrnet.batch": str(batch or "dynamic"), "ehrnet.layout": layout})
  onnx.save(model, str(path))
  return path


def _pool(x, s):
  b, h, w, c = x.shape
  return x.reshape(b, h // s, s, w // s, s, c).mean((2, 4))


@pytest.mark.parametrize("batch, layout", [(None, "NHWC"), (2, "NCHW"), (1, "NHWC")])
def test_any_batch_and_smaller_images_give_nhwc_maps(tmp_path, batch, layout):
  network = onnx_runtime.OnnxNetwork(_pooling_model(tmp_path / "m.onnx", batch, layout))
  assert network.info.image_hw == (64, 32) and network.info.input_size == 384
  rng = np.random.default_rng(0)
  images = images_lib.normalize(rng.integers(0, 256, (3, 48, 24, 3), np.uint8))
  heatmaps_4, tags_4, heatmaps_2 = network(images)
  # Padded to 64x32 for the model, cropped back: pooling windows never mix the two.
  np.testing.assert_allclose(heatmaps_4, _pool(images, 4), atol=1e-5)
  np.testing.assert_allclose(tags_4, 2 * _pool(images, 4), atol=1e-5)
  np.testing.assert_allclose(heatmaps_2, _pool(images, 2), atol=1e-5)


def test_too_large_images_name_the_size_to_export(tmp_path):
  network = onnx_runtime.OnnxNetwork(_pooling_model(tmp_path / "m.onnx", None, "NHWC"))
  message = r"up to 32x64 \(WxH\) but this one needs 48x96.*--size 96x48"
  with pytest.raises(UserError, match=message):
    network(np.zeros((1, 96, 48, 3), np.float32))


def test_bad_model_files_are_named(tmp_path):
  with pytest.raises(UserError, match="no such ONNX file"):
    onnx_runtime.OnnxNetwork(tmp_path / "missing.onnx")
  (tmp_path / "garbage.onnx").write_bytes(b"not a model")
  with pytest.raises(UserError, match="garbage.onnx: onnxruntime cannot load"):
    onnx_runtime.OnnxNetwork(tmp_path / "garbage.onnx")
  plain = _pooling_model(tmp_path / "plain.onnx", None, "NHWC", metadata=False)
  with pytest.raises(UserError, match="plain.onnx: not an ONNX model written by `ehrnet export`"):
    onnx_runtime.OnnxNetwork(plain)
  with pytest.raises(UserError, match="holds variant H-4, not H0"):
    onnx_runtime.onnx_estimator(_pooling_model(tmp_path / "m.onnx", None, "NHWC"), "H0")


def test_unavailable_device_is_an_error():
  if "CUDAExecutionProvider" in onnx_runtime.onnxruntime.get_available_providers():
    pytest.skip("this onnxruntime has CUDA")
  with pytest.raises(UserError, match="--device cuda: onnxruntime here has no CUDA"):
    onnx_runtime.session_providers("cuda")
  assert onnx_runtime.session_providers("cpu") == ["CPUExecutionProvider"]
