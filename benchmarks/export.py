"""Export parity and latency: ONNX (onnxruntime CPU) and the jitted JAX model, per variant.

For each variant: export ONNX at the variant's square input size with batch 1 (static) and at
the test-time size of a sample photo with a dynamic batch; report the max abs error of every
output against the JAX model (batch 1 and a flip-test batch of 2), whether the people found on
the photo are the same (decoding + grouping on the host), the operator counts, and the median
batch-1 latency of onnxruntime (CPU) and of the jitted JAX model (its fastest CPU form). The
errors are against the JAX model as exported (grouped depthwise convs); "joints moved" is the
share of joints of the people found on the photo (same count, same order) that land more than
1e-3 px away from where the JAX network puts them (float32 near-ties on random-weight maps).

  python benchmarks/export.py --variants H-4,H-3 --repeats 10
  python benchmarks/export.py --variants H-4 --checkpoint /tmp/ckpt_h4     # trained weights

Without --checkpoint: the fixture weights where `--reference-dir` has them (H-4, H-2), else
PyTorch-like random weights (latency does not depend on them; parity is measured at realistic
output magnitudes).
With --tensorrt (on a GPU machine with trtexec), FP32 and FP16 engines are built from the
batch-1 ONNX and timed by trtexec.

With --against-pytorch: the authors' network rebuilt in PyTorch (`reference_step.py`), with
PyTorch-like random weights and batch-norm statistics, is exported by torch.onnx (TorchScript
exporter, opset 17, eval mode, constant folding) and ours with the same weights (converted by
`ehrnet_jax.convert`) as NCHW batch 1 at opset 17; for each variant the table gives both
graphs' operator counts, the largest output difference, and onnxruntime's median batch-1
latency (CPU, 2 intra-op threads, the two sessions timed alternately). --align-variants adds
our export with channel alignment 1 and 8 to those variants' rows (timed in the same rotation).

  python benchmarks/export.py --against-pytorch --repeats 30 --align-variants H0,H-4
"""

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import tempfile
import time

import jax
import numpy as np
import onnx
import onnxruntime

from ehrnet_jax import convert, inference, keypoints, samples, weights
from ehrnet_jax.export import network, onnx as onnx_export, tensorrt
from ehrnet_jax.inference import transforms
from ehrnet_jax.inference.onnx_decoder import OnnxNetwork
from ehrnet_jax.models import EfficientHRNet, ExecutionForm, fold_batch_norm, init_variables
from ehrnet_jax.scaling import ScalingSpec
from ehrnet_jax.xla_options import inference_compiler_options


def variables_for(spec, checkpoint, reference_dir):
  """A checkpoint's weights, else the fixture's (the authors' model, random weights), else
  `torch_like_random` weights."""
  if checkpoint:
    return weights.load_variables(checkpoint, spec)[0]
  fixture = pathlib.Path(reference_dir) / f"{spec.name}_state_dict.npz"
  if fixture.is_file():
    return convert.convert_state_dict(convert.load_state_dict(fixture), spec)
  return torch_like_random(init_variables(EfficientHRNet(spec), jax.random.key(0)))


def torch_like_random(variables, seed=0):
  """Every weight redrawn like PyTorch's default init (uniform, bound 1/sqrt(fan in)), BN
  statistics and affine terms around their neutral values: outputs of order 1-10 like the
  fixture's, where the model's own init (N(0, 0.001) in the HRNet and head) gives ~1e-17."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if leaf.ndim > 1:
      bound = 1 / np.sqrt(np.prod(leaf.shape[:-1]))
      return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
    low, high = {"scale": (0.5, 1.5), "var": (0.5, 1.5)}.get(name, (-0.1, 0.1))
    return rng.uniform(low, high, leaf.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, variables)


def median_ms(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def max_errors(onnx_outputs, jax_outputs):
  return max(float(np.abs(a - np.asarray(b)).max()) for a, b in zip(onnx_outputs, jax_outputs))


def people_agreement(a, b, atol=1e-3):
  """(same number of people, fraction of joints more than `atol` px apart) of two `Poses`."""
  if a.people.shape != b.people.shape:
    return False, 1.0
  moved = np.abs(a.people[..., :2] - b.people[..., :2]).max(-1) > atol
  return True, float(moved.mean()) if moved.size else 0.0


def run_variant(name, checkpoint, reference_dir, repeats, tmp, use_tensorrt):
  spec = ScalingSpec.from_name(name)
  variables = variables_for(spec, checkpoint, reference_dir)
  size = spec.input_size
  model = EfficientHRNet(spec, ExecutionForm.export())
  exact = jax.jit(lambda x: model.apply(variables, x, train=False))
  folded = fold_batch_norm(variables)
  fastest = jax.jit(lambda x: EfficientHRNet(spec, ExecutionForm.cpu_inference()).apply(
      folded, x, train=False),
                    compiler_options=inference_compiler_options())
  rng = np.random.default_rng(0)

  start = time.perf_counter()
  static = onnx_export.export_onnx(spec, variables, network.ExportOptions((size, size), 1))
  export_s = time.perf_counter() - start
  static_path = onnx_export.save(static, tmp / f"{name}_b1.onnx")
  x1 = rng.normal(size=(1, size, size, 3)).astype(np.float32)
  session = onnxruntime.InferenceSession(str(static_path), providers=["CPUExecutionProvider"])
  static_error = max_errors(session.run(None, {"images": x1}), exact(x1))

  image = inference.read_image(samples.images()[0])
  warp = transforms.pyramid_sizes(image.shape[1::-1], size, (1.0,))[0][1].size_wh
  dynamic = onnx_export.export_onnx(spec, variables, network.ExportOptions(warp[::-1]))
  dynamic_path = onnx_export.save(dynamic, tmp / f"{name}_dynamic.onnx")
  onnx_net = OnnxNetwork(dynamic_path)
  x2 = rng.normal(size=(2, warp[1], warp[0], 3)).astype(np.float32)
  dynamic_error = max_errors(onnx_net(x2), exact(x2))
  flip = keypoints.COCO.flip_index
  people = [inference.PoseEstimator(inference.HostDecoder(backend, flip), size)([image])[0]
            for backend in (onnx_net, lambda x: tuple(map(np.asarray, exact(x))))]
  same_count, moved = people_agreement(*people)

  row = {"variant": name, "size": f"{size}x{size}", "export_s": export_s,
         "err_static_b1": static_error, "err_dynamic_b2": dynamic_error,
         "people": len(people[0].scores), "same_count": same_count, "moved": moved,
         "onnx_ms": median_ms(lambda: session.run(None, {"images": x1}), repeats),
         "jax_ms": median_ms(lambda: jax.block_until_ready(fastest(x1)), repeats),
         "ops": onnx_export.operator_counts(static)}
  if use_tensorrt:
    row["tensorrt"] = {p: trtexec_figures(static_path, tmp / f"{name}_{p}.engine", p)
                       for p in tensorrt.PRECISIONS}
  return row


LEAN_OPS = ("Conv", "ConvTranspose", "Transpose", "Reshape", "Expand", "Resize",
            "GlobalAveragePool", "ReduceMean", "ReduceSum", "Gemm", "Add", "Mul", "Pad", "Slice")


def pytorch_export(spec, path):
  """The authors' network with random weights exported by torch.onnx (opset 17, NCHW, batch 1),
  and the same weights as our variables."""
  import torch  # pylint: disable=import-outside-toplevel
  import reference_step  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = reference_step.build_reference(reference_step.variant_phi(spec.name)).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.1, 0.1)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.1, 0.1)
  size = spec.input_size
  torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                    opset_version=17, input_names=["images"],
                    output_names=["heatmaps_and_tags_4", "heatmaps_2"], do_constant_folding=True)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  return convert.convert_state_dict(state, spec)


def ort_session(path, threads=2):
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
  return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_ms(sessions, feed, repeats):
  """{name: median ms} of `sessions` run one after the other, `repeats` rounds (after one
  warm-up round), so that the machine's load falls on all of them alike."""
  times = {name: [] for name in sessions}
  for round_ in range(repeats + 1):
    for name, session in sessions.items():
      start = time.perf_counter()
      session.run(None, feed)
      if round_:
        times[name].append(time.perf_counter() - start)
  return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def against_pytorch(name, repeats, aligns, tmp):
  """One variant: op counts, output agreement and interleaved latencies of torch.onnx's export
  and ours (at each channel alignment in `aligns`)."""
  spec = ScalingSpec.from_name(name)
  size = spec.input_size
  torch_path = tmp / f"{name}_torch.onnx"
  variables = pytorch_export(spec, torch_path)
  paths = {"pytorch": torch_path}
  ops = {"pytorch": onnx_export.operator_counts(onnx.load(str(torch_path)))}
  for align in aligns:
    options = network.ExportOptions((size, size), 1, "NCHW", channel_align=align)
    model = onnx_export.export_onnx(spec, variables, options)
    key = f"ours_align{align}"
    paths[key] = onnx_export.save(model, tmp / f"{name}_{key}.onnx")
    ops[key] = onnx_export.operator_counts(model)
  sessions = {key: ort_session(path) for key, path in paths.items()}
  feed = {"images": np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)}
  reference = sessions["pytorch"].run(None, feed)
  reference = [reference[0][:, :spec.num_joints], reference[0][:, spec.num_joints:],
               reference[1]]
  errors = {key: max_errors(s.run(None, feed), reference) for key, s in sessions.items()
            if key != "pytorch"}
  return {"variant": name, "size": size, "ops": ops, "errors": errors,
          "ms": interleaved_ms(sessions, feed, repeats)}


def print_against_pytorch_header():
  print("| variant | graph | " + " | ".join(LEAN_OPS) + " | other ops | max diff vs PyTorch "
        "| ORT ms (median) | ratio to PyTorch |")
  print("|---|---|" + "---|" * (len(LEAN_OPS) + 4))


def print_against_pytorch(rows):
  for row in rows:
    for key in ["pytorch", *[k for k in row["ops"] if k != "pytorch"]]:
      ops = row["ops"][key]
      other = sum(v for k, v in ops.items() if k not in LEAN_OPS)
      diff = f"{row['errors'][key]:.1e}" if key in row["errors"] else "-"
      print(f"| {row['variant']} ({row['size']}) | {key} | "
            + " | ".join(str(ops.get(op, 0)) for op in LEAN_OPS)
            + f" | {other} | {diff} | {row['ms'][key]:.1f} | "
            f"{row['ms'][key] / row['ms']['pytorch']:.2f} |", flush=True)


def trtexec_figures(onnx_path, engine_path, precision):
  """Builds and times an engine with trtexec: median GPU compute ms and throughput (qps)."""
  command = tensorrt.trtexec_command(onnx_path, engine_path, precision) + [
      "--useCudaGraph", "--noDataTransfers", "--iterations=500", "--warmUp=2000"]
  log = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  median = re.search(r"GPU Compute Time: .*?median = ([\d.]+) ms", log)
  throughput = re.search(r"Throughput: ([\d.]+) qps", log)
  return {"median_ms": float(median[1]), "fps": float(throughput[1])}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default="H-4,H-3,H-2,H-1,H0")
  parser.add_argument("--checkpoint", help="checkpoint directory (one variant only)")
  parser.add_argument("--reference-dir", default="../shared/fixtures/reference",
                      help="where <variant>_state_dict.npz fixtures are (used if present)")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--tensorrt", action="store_true", help="also time TensorRT engines")
  parser.add_argument("--against-pytorch", action="store_true",
                      help="compare with torch.onnx's export of the authors' network instead")
  parser.add_argument("--align-variants", default="",
                      help="with --against-pytorch: variants also exported with alignment 8")
  args = parser.parse_args()
  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, device {jax.devices()[0].device_kind}")
  if args.against_pytorch:
    print_against_pytorch_header()
    with tempfile.TemporaryDirectory(prefix="export_bench_") as tmp:
      for name in args.variants.split(","):
        aligns = (1, 8) if name in args.align_variants.split(",") else (
            network.EXPORT_CHANNEL_ALIGN,)
        print_against_pytorch([against_pytorch(name, args.repeats, aligns, pathlib.Path(tmp))])
        print(f"<!-- {name}: load average {os.getloadavg()} -->", flush=True)
    return
  print("| variant | size | export s | max err b1 static | max err b2 dynamic | people (same "
        "count) | joints moved | onnxruntime ms | JAX jit ms |")
  print("|---|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory(prefix="export_bench_") as tmp:
    for name in args.variants.split(","):
      row = run_variant(name, args.checkpoint, args.reference_dir, args.repeats,
                        pathlib.Path(tmp), args.tensorrt)
      print(f"| {row['variant']} | {row['size']} | {row['export_s']:.0f} | "
            f"{row['err_static_b1']:.1e} | {row['err_dynamic_b2']:.1e} | {row['people']} "
            f"({row['same_count']}) | {100 * row['moved']:.2f}% | {row['onnx_ms']:.1f} | "
            f"{row['jax_ms']:.1f} |", flush=True)
      print(f"<!-- {name} operators: {row['ops']} {row.get('tensorrt', '')} "
            f"load {os.getloadavg()} -->", flush=True)


if __name__ == "__main__":
  main()
