"""ONNX export with jax2onnx: a checked graph of standard ONNX operators with metadata.

Steps: trace the network's export form (`network.export_model`) with jax2onnx at the requested
opset and at batch 1 (`jax.image.resize`, its upsampling, traces at a fixed batch only);
constant-fold the weight and shape arithmetic with onnxruntime's basic graph optimisations
(standard operators only: the BN scale multiplies and the rsqrt of the variances disappear into
the convolutions' weights); make the graph lean (`lean.lean`: no layout transposes inside,
Resize scales, GlobalAveragePool) and fold again (each bias Add, now right after its
convolution, goes into the convolution's bias); name the batch dimension if it
is dynamic (`lean.make_batch_dynamic` checks that no operator depends on it); drop `value_info`
(jax2onnx writes some shapes the full checker rejects; they are only hints); set the oldest IR
version of the opset (older parsers); store the metadata; run the full ONNX checker.

The model traces directly at opset 17 (converting down from 18 is not possible:
`onnx.version_converter` has no Pad 18 -> 17 adapter); the ReduceMean that jax2onnx 0.17.1
writes wrongly below opset 18 is repaired by `lean.reduce_mean_axes_as_attribute`.

Default opset 17: accepted by TensorRT 8.5 (JetPack 5.1, Xavier/Orin) and TensorRT 10
(JetPack 6, Orin) alike.
"""

import collections
import dataclasses
import os
import pathlib
import tempfile

import onnx
import onnxruntime
from jax2onnx import to_onnx

from ehrnet_jax.errors import UserError
from ehrnet_jax.export import lean, network
from ehrnet_jax.scaling import ScalingSpec

DEFAULT_OPSET = 17
OPSETS = (17, 18, 19, 20)


def export_onnx(spec: ScalingSpec, variables, options: network.ExportOptions,
                opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
  """The network for `spec` with `variables` as a checked ONNX model."""
  if opset not in OPSETS:
    raise UserError(f"--opset {opset} is not supported; choose one of {OPSETS}")
  fn = network.inference_fn(spec, options.layout, options.channel_align)
  traced = dataclasses.replace(options, batch=options.batch or 1)
  model = to_onnx(lambda images: fn(variables, images), [traced.input_shape()],
                  model_name=f"ehrnet_{spec.name}", opset=opset,
                  input_names=[network.INPUT_NAME], output_names=list(network.OUTPUT_NAMES))
  model = fold_constants(lean.reduce_mean_axes_as_attribute(model))
  model = fold_constants(lean.lean(model))
  if options.batch is None:
    model = lean.make_batch_dynamic(model)
  model.ir_version = ir_version(opset)
  model.producer_name = "ehrnet_jax"
  model.doc_string = f"EfficientHRNet {spec.name} (bottom-up pose estimation), eval mode"
  onnx.helper.set_model_props(model, network.metadata(spec, options))
  onnx.checker.check_model(model, full_check=True)
  return model


def ir_version(opset: int) -> int:
  """The oldest ONNX IR version that has `opset` (8 for 17 and 18), for older parsers."""
  return min(ir for _, ir, ai_onnx, *_ in onnx.helper.VERSION_TABLE if ai_onnx == opset)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
  """onnxruntime's basic (portable, standard-op) optimisations, saved back as ONNX.

  Keeps only the default-domain opset (onnxruntime lists all its domains) and no `value_info`.
  """
  with tempfile.TemporaryDirectory(prefix="ehrnet_export_") as tmp:
    path = os.path.join(tmp, "folded.onnx")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = path
    onnxruntime.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
    folded = onnx.load(path)
  foreign = {node.op_type for node in folded.graph.node if node.domain not in ("", "ai.onnx")}
  if foreign:
    raise RuntimeError(f"constant folding introduced non-standard operators: {sorted(foreign)}")
  opsets = [o for o in folded.opset_import if o.domain in ("", "ai.onnx")]
  del folded.opset_import[:]
  folded.opset_import.extend(opsets)
  del folded.graph.value_info[:]
  return folded


def operator_counts(model: onnx.ModelProto) -> dict[str, int]:
  """{op type: count} of the graph, most frequent first."""
  return dict(collections.Counter(node.op_type for node in model.graph.node).most_common())


def save(model: onnx.ModelProto, path) -> pathlib.Path:
  """Writes `model` to `path` (one file; weights inline) and returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  onnx.save(model, str(path))
  return path
