"""`ehrnet_jax.export.lean` on hand-built ONNX graphs (onnxruntime runs each graph before and
after a pass: same outputs), and the export form of the model against its default form."""

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from ehrnet_jax.export import lean

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, constants, opset=17):
  graph = helper.make_graph(
      nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
      [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
      [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
  model.ir_version = 8
  onnx.checker.check_model(model, full_check=True)
  return model


def _run(model, **feed):
  session = onnxruntime.InferenceSession(model.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
  return session.run(None, feed)


def _ops(model):
  return [n.op_type for n in model.graph.node]


def _copy(model):
  copy = onnx.ModelProto()
  copy.CopyFrom(model)
  return copy


def test_transposes_sink_through_layout_free_operators_and_cancel():
  """NCHW in -> NHWC (Transpose) -> bias Add -> Relu -> Concat with a second transposed branch
  -> channel Pad -> Slice -> nearest Resize -> Sigmoid * x -> spatial ReduceMean (kept dims)
  -> back to NCHW: the same numbers with no Transpose left."""
  to_nhwc, to_nchw = [0, 2, 3, 1], [0, 3, 1, 2]
  nodes = [
      helper.make_node("Transpose", ["x"], ["a"], perm=to_nhwc),
      helper.make_node("Add", ["a", "bias"], ["b"]),
      helper.make_node("Relu", ["b"], ["c"]),
      helper.make_node("Transpose", ["y"], ["d"], perm=to_nhwc),
      helper.make_node("Concat", ["c", "d"], ["e"], axis=3),
      helper.make_node("Pad", ["e", "pads", "zero"], ["f"]),
      helper.make_node("Slice", ["f", "starts", "ends", "axes"], ["g"]),
      helper.make_node("Resize", ["g", "", "scales"], ["h"], mode="nearest"),
      helper.make_node("Sigmoid", ["h"], ["i"]),
      helper.make_node("Mul", ["h", "i"], ["j"]),
      helper.make_node("ReduceMean", ["j"], ["k"], axes=[1, 2], keepdims=1),
      helper.make_node("Mul", ["j", "k"], ["l"]),
      helper.make_node("Transpose", ["l"], ["out"], perm=to_nchw),
  ]
  constants = {"bias": RNG.normal(size=3).astype(np.float32),
               "pads": np.array([0, 0, 0, 0, 0, 0, 0, 3], np.int64),
               "zero": np.array(0, np.float32),
               "starts": np.array([1], np.int64), "ends": np.array([5], np.int64),
               "axes": np.array([1], np.int64),
               "scales": np.array([1, 2, 2, 1], np.float32)}
  model = _model(nodes, [("x", [2, 3, 6, 4]), ("y", [2, 2, 6, 4])], [("out", [2, 8, 8, 8])],
                 constants)
  x = RNG.normal(size=(2, 3, 6, 4)).astype(np.float32)
  y = RNG.normal(size=(2, 2, 6, 4)).astype(np.float32)
  expected, = _run(model, x=x, y=y)
  found = lean.sink_transposes(_copy(model))
  onnx.checker.check_model(found, full_check=True)
  assert "Transpose" not in _ops(found), _ops(found)
  np.testing.assert_allclose(_run(found, x=x, y=y)[0], expected, rtol=1e-6, atol=1e-6)
  pooled = lean.global_average_pools(found)
  assert "GlobalAveragePool" in _ops(pooled) and "ReduceMean" not in _ops(pooled)
  np.testing.assert_allclose(_run(pooled, x=x, y=y)[0], expected, rtol=1e-6, atol=1e-6)


def test_a_transpose_before_a_graph_output_or_a_convolution_stays():
  nodes = [helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]),
           helper.make_node("Relu", ["a"], ["out"]),
           helper.make_node("Transpose", ["a"], ["b"], perm=[0, 3, 1, 2]),
           helper.make_node("Conv", ["b", "w"], ["conv"])]
  model = _model(nodes, [("x", [1, 2, 4, 4])], [("out", [1, 4, 4, 2]), ("conv", [1, 1, 4, 4])],
                 {"w": np.ones((1, 2, 1, 1), np.float32)})
  x = RNG.normal(size=(1, 2, 4, 4)).astype(np.float32)
  expected = _run(model, x=x)
  found = lean.sink_transposes(_copy(model))
  # One Transpose (to the NHWC output); the Conv reads x itself.
  assert _ops(found).count("Transpose") == 1
  assert next(n for n in found.graph.node if n.op_type == "Conv").input[0] == "x"
  for f, e in zip(_run(found, x=x), expected):
    np.testing.assert_allclose(f, e, rtol=1e-6)


def test_per_channel_affines_fold_into_conv_and_conv_transpose():
  nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
           helper.make_node("Mul", ["c", "scale"], ["d"]),
           helper.make_node("Add", ["d", "offset"], ["e"]),
           helper.make_node("ConvTranspose", ["e", "wt"], ["f"], strides=[2, 2], pads=[1, 1, 1, 1]),
           helper.make_node("Mul", ["f", "scale_t"], ["g"]),
           helper.make_node("Add", ["g", "offset_t"], ["out"])]
  constants = {"w": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32),
               "b": RNG.normal(size=4).astype(np.float32),
               "scale": RNG.normal(size=(1, 4, 1, 1)).astype(np.float32),
               "offset": RNG.normal(size=(4, 1, 1)).astype(np.float32),
               "wt": RNG.normal(size=(4, 5, 4, 4)).astype(np.float32),
               "scale_t": RNG.normal(size=(1, 5, 1, 1)).astype(np.float32),
               "offset_t": RNG.normal(size=(1, 5, 1, 1)).astype(np.float32)}
  model = _model(nodes, [("x", [1, 3, 6, 6])], [("out", [1, 5, 12, 12])], constants)
  x = RNG.normal(size=(1, 3, 6, 6)).astype(np.float32)
  expected, = _run(model, x=x)
  found = lean.fold_affine_into_convolutions(_copy(model))
  onnx.checker.check_model(found, full_check=True)
  assert _ops(found) == ["Conv", "ConvTranspose"]
  np.testing.assert_allclose(_run(found, x=x)[0], expected, rtol=1e-5, atol=1e-5)


def test_resize_sizes_become_scales_and_reduce_mean_axes_an_attribute():
  nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["a"], mode="nearest"),
           helper.make_node("ReduceMean", ["a"], ["out"], axes=[2, 3], keepdims=1)]
  model = _model(nodes, [("x", [1, 2, 3, 4])], [("out", [1, 2, 1, 1])],
                 {"sizes": np.array([1, 2, 6, 8], np.int64)})
  x = RNG.normal(size=(1, 2, 3, 4)).astype(np.float32)
  expected, = _run(model, x=x)
  found = lean.resize_scales_from_sizes(_copy(model))
  resize = found.graph.node[0]
  scales = next(i for i in found.graph.initializer if i.name == resize.input[2])
  assert len(resize.input) == 3 and numpy_helper.to_array(scales).tolist() == [1, 1, 2, 2]
  np.testing.assert_allclose(_run(found, x=x)[0], expected, rtol=1e-6)
  # jax2onnx 0.17.1 writes ReduceMean's axes as an input even below opset 18.
  del found.graph.node[1].attribute[:]
  found.graph.node[1].input.append("axes")
  found.graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
  repaired = lean.reduce_mean_axes_as_attribute(found)
  onnx.checker.check_model(repaired, full_check=True)
  np.testing.assert_allclose(_run(repaired, x=x)[0], expected, rtol=1e-6)


def test_batch_made_dynamic_only_where_no_operator_depends_on_it():
  """A Slice of every axis (as jax2onnx writes one) keeps only the axis it cuts; a Pad of
  nothing goes; then the batch can be dynamic. A Reshape to (1, 32) cannot."""
  conv = _model([helper.make_node("Conv", ["x", "w"], ["c"]),
                 helper.make_node("Pad", ["c", "no_pads"], ["p"]),
                 helper.make_node("Slice", ["p", "starts", "ends"], ["out"])],
                [("x", [1, 2, 4, 4])], [("out", [1, 1, 4, 4])],
                {"w": np.ones((3, 2, 1, 1), np.float32), "starts": np.zeros(4, np.int64),
                 "ends": np.array([1, 1, 4, 4], np.int64), "no_pads": np.zeros(8, np.int64)})
  lean.remove_no_op_slices_and_pads(conv)
  assert _ops(conv) == ["Conv", "Slice"]
  slice_axes = next(i for i in conv.graph.initializer if i.name == conv.graph.node[1].input[3])
  assert numpy_helper.to_array(slice_axes).tolist() == [1]
  dynamic = lean.make_batch_dynamic(_copy(conv))
  onnx.checker.check_model(dynamic, full_check=True)
  assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
  x = RNG.normal(size=(3, 2, 4, 4)).astype(np.float32)
  np.testing.assert_allclose(_run(dynamic, x=x)[0], x.sum(1, keepdims=True), rtol=1e-5)
  flat = _model([helper.make_node("Reshape", ["x", "shape"], ["out"])], [("x", [1, 2, 4, 4])],
                [("out", [1, 32])], {"shape": np.array([1, 32], np.int64)})
  with pytest.raises(ValueError, match=r"batch-dependent operators \['Reshape'\]"):
    lean.make_batch_dynamic(flat)
