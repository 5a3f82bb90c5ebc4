"""Graph passes that make jax2onnx's export of a convolutional network as lean as a PyTorch one.

jax2onnx writes every NHWC convolution as Transpose -> Conv (NCHW) -> Transpose and cancels the
pairs it can see through unary operators; the transposes around per-channel constants (a bias,
a batch-norm offset), sums of branches, upsampling, padding and pooling stay. `sink_transposes`
moves each Transpose towards the outputs through the layout-free operators between the
convolutions (transposing the constants it meets instead), merging and cancelling it with the
next one, so that the network computes in the convolutions' NCHW throughout; an NCHW export is
then free of layout transposes, an NHWC one keeps one at the input and one per output. With the
transposes gone, onnxruntime's constant folding (`onnx.fold_constants`) moves the biases into
the convolutions.

The other passes: `reduce_mean_axes_as_attribute` repairs jax2onnx 0.17.1's ReduceMean below
opset 18 (it writes the axes as an input, which only opset 18 has); `resize_scales_from_sizes`
turns a static Resize's `sizes` into `scales` (the same copies at any batch size);
`fold_affine_into_convolutions` puts a per-channel Mul or Add after a convolution into its
weights and bias (also for ConvTranspose, which onnxruntime does not fold);
`remove_no_op_slices_and_pads` drops what jax2onnx writes for slices that keep an axis whole
and pads of nothing; `global_average_pools` writes a ReduceMean over both spatial axes of an
NCHW map as GlobalAveragePool; `make_batch_dynamic` names the batch dimension of a graph traced at a fixed
batch after checking that no operator depends on it.

All passes work on `onnx.ModelProto`s whose tensors have static shapes, in place, and return
the model.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Elementwise operators: a transpose of all their tensor inputs is a transpose of their output.
UNARY = {"Relu", "Sigmoid", "Tanh", "Exp", "Neg", "Abs", "Sqrt", "Identity", "LeakyRelu", "Elu",
         "Softplus", "HardSigmoid"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min"}
# Operators whose `axis`-like parameters are rewritten when a transpose moves past them.
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"}
LAYOUT_AWARE = {"Concat", "Pad", "Slice", "Resize"} | REDUCE


class _Graph:
  """Producers, consumers and constants of a graph, rebuilt after each change."""

  def __init__(self, model: onnx.ModelProto):
    self.graph = model.graph
    self.producer = {o: n for n in self.graph.node for o in n.output}
    self.consumers = {}
    for node in self.graph.node:
      for name in node.input:
        self.consumers.setdefault(name, []).append(node)
    self.initializers = {i.name: i for i in self.graph.initializer}
    self.outputs = {o.name for o in self.graph.output}

  def constant(self, name: str) -> np.ndarray | None:
    if name in self.initializers:
      return numpy_helper.to_array(self.initializers[name])
    return None

  def add_constant(self, array: np.ndarray, hint: str) -> str:
    name, k = f"{hint}_lean", 0
    while name in self.initializers or name in self.producer:
      k += 1
      name = f"{hint}_lean{k}"
    tensor = numpy_helper.from_array(np.asarray(array), name)
    self.graph.initializer.append(tensor)
    self.initializers[name] = tensor
    return name


def _perm(node: onnx.NodeProto) -> list[int]:
  return list(helper.get_attribute_value(next(a for a in node.attribute if a.name == "perm")))


def _attribute(node: onnx.NodeProto, name: str, default=None):
  for a in node.attribute:
    if a.name == name:
      return helper.get_attribute_value(a)
  return default


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
  for k, a in enumerate(node.attribute):
    if a.name == name:
      del node.attribute[k]
      break
  node.attribute.append(helper.make_attribute(name, value))


def _opset(model: onnx.ModelProto) -> int:
  return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def reduce_mean_axes_as_attribute(model: onnx.ModelProto) -> onnx.ModelProto:
  """ReduceMean's axes as the attribute that opsets before 18 have, where jax2onnx wrote an
  input (onnxruntime and the checker reject the node as it is)."""
  if _opset(model) >= 18:
    return model
  g = _Graph(model)
  for node in g.graph.node:
    if node.op_type == "ReduceMean" and len(node.input) == 2:
      axes = g.constant(node.input[1])
      if axes is None:
        raise ValueError(f"ReduceMean {node.name}: axes are not a constant")
      _set_attribute(node, "axes", [int(a) for a in axes])
      del node.input[1]
  return remove_unused(model)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
  """{tensor name: static shape} from ONNX shape inference (value_info dropped first: jax2onnx
  writes some shapes the checker rejects)."""
  del model.graph.value_info[:]
  inferred = onnx.shape_inference.infer_shapes(model)
  shapes = {}
  for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
    dims = value.type.tensor_type.shape.dim
    if all(d.HasField("dim_value") for d in dims):
      shapes[value.name] = [d.dim_value for d in dims]
  return shapes


def resize_scales_from_sizes(model: onnx.ModelProto) -> onnx.ModelProto:
  """Every Resize given output `sizes` rewritten with the equivalent `scales` (output size /
  input size per axis), which hold at any batch size and move with a transpose."""
  shapes = _static_shapes(model)
  g = _Graph(model)
  for node in g.graph.node:
    if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
      continue
    sizes = g.constant(node.input[3])
    if sizes is None or node.input[0] not in shapes:
      raise ValueError(f"Resize {node.name}: needs constant sizes and a static input shape")
    scales = np.asarray(sizes, np.float32) / np.asarray(shapes[node.input[0]], np.float32)
    node.input[2] = g.add_constant(scales, "resize_scales")
    del node.input[3]
    if not node.input[1]:
      node.input[1] = ""
  return remove_unused(model)


def _inverse(perm: list[int]) -> list[int]:
  return [int(i) for i in np.argsort(perm)]


def _moved_constant(array: np.ndarray, perm: list[int]) -> np.ndarray:
  """The constant `c` with transpose(c, perm) == `array` broadcast to rank len(perm)."""
  if array.ndim == 0:
    return array
  array = array.reshape((1,) * (len(perm) - array.ndim) + array.shape)
  return array.transpose(_inverse(perm))


def _can_sink(g: _Graph, transpose: onnx.NodeProto, node: onnx.NodeProto) -> bool:
  """Whether `transpose` can move below `node` (every other tensor input of `node` a constant
  or a transpose with the same permutation; parameters constant)."""
  perm, out = _perm(transpose), transpose.output[0]

  def same_layout(name):
    if name == out:
      return True
    producer = g.producer.get(name)
    return producer is not None and producer.op_type == "Transpose" and _perm(producer) == perm

  if node.op_type in UNARY:
    return True
  if node.op_type in BINARY:
    return all(same_layout(n) or (g.constant(n) is not None and g.constant(n).ndim <= len(perm))
               for n in node.input)
  if node.op_type == "Concat":
    return all(same_layout(n) for n in node.input)
  if node.op_type in LAYOUT_AWARE:
    if node.input[0] != out or any(n == out for n in node.input[1:]):
      return False
    params = [n for n in node.input[1:] if n]
    if node.op_type == "Pad" and _attribute(node, "mode", b"constant") != b"constant":
      return False
    if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
      return False                                    # sizes: see resize_scales_from_sizes
    return all(g.constant(n) is not None for n in params)
  return False


def _rewrite_parameters(g: _Graph, node: onnx.NodeProto, perm: list[int]) -> list[int]:
  """Rewrites `node` (reading the transpose's input instead of its output) for the untransposed
  layout; returns the permutation its output then needs."""
  rank = len(perm)
  if node.op_type in BINARY:
    for k, name in enumerate(node.input):
      array = g.constant(name)
      if array is not None and array.ndim > 0:
        node.input[k] = g.add_constant(_moved_constant(array, perm), name)
  elif node.op_type == "Concat":
    _set_attribute(node, "axis", perm[_attribute(node, "axis") % rank])
  elif node.op_type == "Pad":
    pads = g.constant(node.input[1]).reshape(2, rank)
    moved = np.zeros_like(pads)
    moved[:, perm] = pads
    node.input[1] = g.add_constant(moved.reshape(-1), node.input[1])
  elif node.op_type == "Slice":
    starts = g.constant(node.input[1])
    axes = (g.constant(node.input[3]) if len(node.input) > 3 and node.input[3]
            else np.arange(len(starts)))
    moved = np.array([perm[int(a) % rank] for a in axes], np.int64)
    if len(node.input) < 4:
      node.input.extend([""] * (4 - len(node.input)))
    node.input[3] = g.add_constant(moved, "slice_axes")
  elif node.op_type == "Resize":
    scales = g.constant(node.input[2])
    moved = np.empty_like(scales)
    moved[perm] = scales
    node.input[2] = g.add_constant(moved, node.input[2])
  elif node.op_type in REDUCE:
    from_input = len(node.input) > 1 and node.input[1]
    axes = g.constant(node.input[1]) if from_input else _attribute(node, "axes")
    if axes is None:
      axes = range(rank)
    moved = sorted(perm[int(a) % rank] for a in axes)
    if from_input:
      node.input[1] = g.add_constant(np.array(moved, np.int64), node.input[1])
    else:
      _set_attribute(node, "axes", moved)
    if not _attribute(node, "keepdims", 1):
      kept = [p for p in perm if p not in moved]            # input axes, in output order
      return [int(i) for i in np.argsort(np.argsort(kept))]
  return perm


def _sink_once(g: _Graph) -> bool:
  """One change: a transpose merged into the next, or copied below those of its consumers it
  can pass (kept for the others: e.g. for the Mul of x * sigmoid(x) until the Sigmoid's output
  is transposed too)."""
  for transpose in g.graph.node:
    if transpose.op_type != "Transpose":
      continue
    source, out, perm = transpose.input[0], transpose.output[0], _perm(transpose)
    consumers = g.consumers.get(out, [])
    for consumer in consumers:
      if consumer.op_type == "Transpose":                # transpose(transpose(x, p), q)
        merged = [perm[q] for q in _perm(consumer)]
        consumer.input[0] = source
        _set_attribute(consumer, "perm", merged)
        return True
    sinkable = {id(c): c for c in consumers if _can_sink(g, transpose, c)}
    if not sinkable:
      continue
    nodes = list(g.graph.node)
    for consumer in sinkable.values():
      for k, name in enumerate(consumer.input):
        producer = g.producer.get(name)
        if name == out:
          consumer.input[k] = source
        elif producer is not None and producer.op_type == "Transpose" and producer is not \
            transpose and g.constant(name) is None:
          consumer.input[k] = producer.input[0]
      after = _rewrite_parameters(g, consumer, perm)
      result = consumer.output[0]
      consumer.output[0] = f"{result}_untransposed"
      moved = helper.make_node("Transpose", [consumer.output[0]], [result], perm=after,
                               name=f"{consumer.name or result}_transpose")
      nodes.insert(nodes.index(consumer) + 1, moved)
    if len(sinkable) == len({id(c) for c in consumers}) and out not in g.outputs:
      nodes.remove(transpose)
    del g.graph.node[:]
    g.graph.node.extend(nodes)
    return True
  return False


def _drop_identity_transposes(model: onnx.ModelProto) -> None:
  g = _Graph(model)
  for node in list(g.graph.node):
    if node.op_type == "Transpose" and _perm(node) == sorted(_perm(node)):
      _bypass(g, node)


def sink_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
  """Moves every Transpose down through the layout-free operators until it meets another one
  (merged; gone when they cancel), an operator that needs its layout (a convolution), or a
  graph output."""
  while True:
    _drop_identity_transposes(model)
    remove_unused(model)
    if not _sink_once(_Graph(model)):
      return model


def global_average_pools(model: onnx.ModelProto) -> onnx.ModelProto:
  """ReduceMean over axes 2 and 3 of a 4-d map, dimensions kept, as GlobalAveragePool (the same
  means; the operator a PyTorch export and TensorRT's pooling layer use)."""
  shapes = _static_shapes(model)
  g = _Graph(model)
  for node in g.graph.node:
    if node.op_type != "ReduceMean" or len(shapes.get(node.input[0], ())) != 4:
      continue
    axes = (g.constant(node.input[1]) if len(node.input) > 1 and node.input[1]
            else _attribute(node, "axes"))
    if axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3] and _attribute(
        node, "keepdims", 1):
      node.op_type = "GlobalAveragePool"
      del node.input[1:]
      del node.attribute[:]
  return remove_unused(model)


def _per_channel(array: np.ndarray | None, channels: int) -> np.ndarray | None:
  """`array` as `channels` values if it is a scalar or a (1, C, 1, 1) / (C, 1, 1) constant."""
  if array is None or (array.ndim and (array.size != channels or array.ndim > 4
                                       or array.shape[-3 if array.ndim >= 3 else 0] != channels)):
    return None
  return np.broadcast_to(array.reshape(-1), (channels,)).astype(np.float32)


def _fold_affine_once(g: _Graph) -> bool:
  for conv in g.graph.node:
    if conv.op_type not in ("Conv", "ConvTranspose") or conv.output[0] in g.outputs:
      continue
    consumers = g.consumers.get(conv.output[0], [])
    weight = g.constant(conv.input[1])
    transposed = conv.op_type == "ConvTranspose"
    if len(consumers) != 1 or consumers[0].op_type not in ("Mul", "Add") or weight is None or (
        transposed and _attribute(conv, "group", 1) != 1):
      continue
    follower = consumers[0]
    other = next((n for n in follower.input if n != conv.output[0]), None)
    channels = weight.shape[1] if transposed else weight.shape[0]
    values = _per_channel(g.constant(other), channels) if other else None
    if values is None:
      continue
    bias = (g.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2]
            else np.zeros(channels, np.float32))
    if follower.op_type == "Mul":
      shape = (1, channels, 1, 1) if transposed else (channels, 1, 1, 1)
      weight = weight * values.reshape(shape[:weight.ndim])
      conv.input[1] = g.add_constant(weight.astype(np.float32), conv.input[1])
      bias = bias * values
    else:
      bias = bias + values
    if len(conv.input) < 3:
      conv.input.append("")
    conv.input[2] = g.add_constant(bias.astype(np.float32), "conv_bias")
    conv.output[0] = follower.output[0]
    g.graph.node.remove(follower)
    return True
  return False


def fold_affine_into_convolutions(model: onnx.ModelProto) -> onnx.ModelProto:
  """A per-channel constant Mul or Add right after a Conv or ConvTranspose (its only consumer)
  folded into the convolution's weights and bias: the biases sit in the convolutions, as in a
  PyTorch export, and the batch norm after the head's transposed convolution disappears."""
  while _fold_affine_once(_Graph(model)):
    pass
  return remove_unused(model)


def remove_unused(model: onnx.ModelProto) -> onnx.ModelProto:
  """Drops nodes and initializers that no graph output depends on."""
  graph = model.graph
  needed = {o.name for o in graph.output}
  kept = []
  for node in reversed(graph.node):
    if any(o in needed for o in node.output):
      kept.append(node)
      needed.update(node.input)
  del graph.node[:]
  graph.node.extend(reversed(kept))
  initializers = [i for i in graph.initializer if i.name in needed]
  del graph.initializer[:]
  graph.initializer.extend(initializers)
  return model


# Operators that treat every batch element alike (given the checks in `_batch_free`).
BATCH_FREE = {"Conv", "ConvTranspose", "GlobalAveragePool", "Transpose", "Concat", "Pad",
              "Slice", "Resize", "Identity"} | UNARY | BINARY | REDUCE


def _batch_free(g: _Graph, node: onnx.NodeProto) -> bool:
  """Whether `node` (its constants) depends on the batch size, for a graph traced at batch 1."""
  if node.op_type not in BATCH_FREE:
    return False
  if node.op_type == "Transpose":
    return _perm(node)[0] == 0
  if node.op_type == "Concat":
    return _attribute(node, "axis") != 0
  if node.op_type == "Pad":
    pads = g.constant(node.input[1])
    return pads is not None and pads[0] == 0 and pads[len(pads) // 2] == 0
  if node.op_type == "Slice":
    axes = g.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    return axes is not None and 0 not in list(axes)
  if node.op_type == "Resize":
    scales = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return len(node.input) < 4 and scales is not None and scales[0] == 1
  if node.op_type in REDUCE:
    axes = g.constant(node.input[1]) if len(node.input) > 1 else _attribute(node, "axes")
    return axes is not None and 0 not in [int(a) for a in axes]
  if node.op_type in BINARY:
    return all(g.constant(n) is None or g.constant(n).ndim < 4 or g.constant(n).shape[0] == 1
               for n in node.input)
  return True


def _bypass(g: _Graph, node: onnx.NodeProto) -> None:
  """Removes `node`, its consumers reading its first input instead."""
  if node.output[0] in g.outputs:
    node.op_type = "Identity"
    del node.input[1:]
    del node.attribute[:]
    return
  for consumer in g.consumers.get(node.output[0], []):
    for k, name in enumerate(consumer.input):
      if name == node.output[0]:
        consumer.input[k] = node.input[0]
  g.graph.node.remove(node)


def remove_no_op_slices_and_pads(model: onnx.ModelProto) -> onnx.ModelProto:
  """Drops the axes a Slice keeps whole (start 0, step 1, end past the static size; jax2onnx
  lists every axis, the batch's included) and Pads of zeros (channel alignment 1's)."""
  shapes = _static_shapes(model)
  g = _Graph(model)
  for node in list(g.graph.node):
    params = [g.constant(n) for n in node.input[1:] if n]
    if node.op_type not in ("Slice", "Pad") or any(p is None for p in params):
      continue
    if node.op_type == "Pad":
      if not params[0].any():
        _bypass(g, node)
      continue
    shape = shapes.get(node.input[0])
    if shape is None:
      continue
    starts, ends = params[0], params[1]
    axes = (g.constant(node.input[3]) if len(node.input) > 3 and node.input[3]
            else np.arange(len(starts)))
    steps = (g.constant(node.input[4]) if len(node.input) > 4 and node.input[4]
             else np.ones(len(starts), np.int64))
    keep = [k for k in range(len(starts))
            if not (starts[k] == 0 and steps[k] == 1 and ends[k] >= shape[int(axes[k])])]
    if not keep:
      _bypass(g, node)
    elif len(keep) < len(starts):
      del node.input[1:]
      node.input.extend([g.add_constant(np.asarray(a, np.int64)[keep], name) for a, name in (
          (starts, "slice_starts"), (ends, "slice_ends"), (axes, "slice_axes"),
          (steps, "slice_steps"))])
  return remove_unused(model)


def make_batch_dynamic(model: onnx.ModelProto, name: str = "batch") -> onnx.ModelProto:
  """The first dimension of every graph input and output named `name` (a dynamic batch) in a
  graph traced at batch 1, after checking that no operator depends on it."""
  g = _Graph(model)
  fixed = sorted({n.op_type for n in g.graph.node if not _batch_free(g, n)})
  if fixed:
    raise ValueError(f"the graph has batch-dependent operators {fixed}; cannot make its batch "
                     "dynamic")
  for value in [*g.graph.input, *g.graph.output]:
    dim = value.type.tensor_type.shape.dim[0]
    if dim.dim_value != 1:
      raise ValueError(f"{value.name}: traced with batch {dim.dim_value}, expected 1")
    dim.Clear()
    dim.dim_param = name
  del g.graph.value_info[:]
  return model


def lean(model: onnx.ModelProto) -> onnx.ModelProto:
  """Resize scales, transposes sunk, per-channel affines folded into the convolutions, global
  average pools: for a graph whose shape arithmetic
  has been folded into constants (static shapes throughout)."""
  resize_scales_from_sizes(model)
  remove_no_op_slices_and_pads(model)
  sink_transposes(model)
  fold_affine_into_convolutions(model)
  return global_average_pools(model)
