"""The network and its training step on an accelerator, side by side with the authors' network.

One run measures, on whatever backend JAX finds (a GPU or TPU; the CPU only with --allow-cpu):
- training-step throughput (forward + loss + backward + Adam, targets built on device from the
  input pipeline's format, as the trainer runs it) of H0 at per-device batch 16 and 32 and H-4
  at 48 and 96, backbone trained and frozen, fp32 and bf16, with XLA's FLOPs per step, the
  achieved fraction of the device's peak and the step program's device memory;
- inference latency (batch 1) and throughput (batch 8 and 32) of the jitted network (batch norm
  folded) at the native sizes, fp32 and bf16;
- the same settings for the authors' network in PyTorch (`reference_step.py`'s rebuild, checked
  against their outputs by tests/test_reference_step.py): fp32 and autocast bf16, channels_last,
  and torch.compile;
- the JAX execution forms that matter on an accelerator, side by side (depthwise as a grouped
  convolution or shifted slices, the head's transposed convolution plain or sub-pixel, channel
  alignment 8 or 1, the hand-written gradients or autodiff, all plain: `ExecutionForm`s), so that
  the accelerator's form is chosen from figures.

Precisions: "fp32" is true float32 everywhere (JAX `default_matmul_precision("highest")`, the
trainer's default; PyTorch without TF32), "tf32" lets both use TF32 for float32 convolutions and
products (JAX's "default"), "bf16" computes
in bfloat16 (JAX: the model's compute dtype; PyTorch: autocast) with float32 parameters,
batch-norm statistics and losses. Every row names its precision.

Rows run in order of importance (H0 and H-4 training, fp32/bf16, both frameworks; then
inference; then forms, other batches, the frozen backbone and the PyTorch variants) while the
time budget lasts: a row is started only if the time left covers what the rows of its kind took
so far. Every figure is the median over the timed steps after compiling and warm-up (compile
and first-step times are reported apart). A row that fails (out of memory, a compile error) is
recorded with its error and the run goes on. The JSON table is rewritten after every row
(atomically), so a run cut short keeps what it measured.

  python benchmarks/accelerator.py --out accelerator.json                  # ~8 minutes
  python benchmarks/accelerator.py --budget-s 120 --sections train         # the first rows
  python benchmarks/accelerator.py --allow-cpu --variants H-4 --size 64 --train-batch 2 \\
      --infer-batches 1 --steps 2 --warmup 1 --sections train,inference   # a CPU smoke run

Imports only jax, flax, optax, numpy, torch and the project's model and training step (no
TensorFlow, TFDS, pycocotools or jax2onnx).
"""

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import select
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

# PyTorch runs in the same process: JAX allocates as it needs (not 75% at start-up) and keeps at
# most half of the accelerator's memory in its pool; PyTorch releases its cache after each row.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ehrnet_jax import losses  # noqa: E402
from ehrnet_jax.config import TrainConfig  # noqa: E402
from ehrnet_jax.data import targets  # noqa: E402
from ehrnet_jax.models import (EfficientHRNet, ExecutionForm, fold_batch_norm,  # noqa: E402
                               init_variables)
from ehrnet_jax.scaling import ScalingSpec  # noqa: E402
from ehrnet_jax.timing import machine_description  # noqa: E402
from ehrnet_jax.training import mesh as mesh_lib, optim, step as step_lib  # noqa: E402
from ehrnet_jax.training.state import create_train_state  # noqa: E402
from ehrnet_jax.xla_options import inference_compiler_options  # noqa: E402
import train_step  # noqa: E402  (benchmarks/: the synthetic batch)

PRECISIONS = ("fp32", "tf32", "bf16")
# JAX's float32 matmul/convolution precision (as `train.matmul_precision`) and the compute dtype
# per precision name; "default" is JAX's own choice, TF32 on NVIDIA GPUs since Ampere.
JAX_PRECISION = {"fp32": ("highest", jnp.float32), "tf32": ("default", jnp.float32),
                 "bf16": ("highest", jnp.bfloat16)}
# Groups of rows in order of importance (`plan`).
SECTIONS = ("train", "inference", "forms", "torch", "batches", "frozen", "throughput", "tf32")
TRAIN_BATCHES = {"H0": (16, 32), "H-4": (48, 96)}
INFER_BATCHES = (1, 8, 32)

# JAX execution forms, as fields of `ExecutionForm` changed from this backend's default form for
# training or inference (`ExecutionForm.for_backend`, what the trainer and the decoders run).
FORMS = {
    "default": {},
    "depthwise_shifted": {"depthwise": "shifted"},
    "deconv_subpixel": {"transposed_conv": "subpixel"},
    "deconv_transpose": {"transposed_conv": "conv_transpose"},
    "align_1": {"channel_align": 1},
    "autodiff_gradients": {"written_gradients": False},
    "plain": {field.name: getattr(ExecutionForm.plain(), field.name)
              for field in dataclasses.fields(ExecutionForm)
              if field.name != "fold_batch_norm"},
}
INFERENCE_FORMS = ("depthwise_shifted", "deconv_subpixel", "deconv_transpose", "align_1")

# Dense peak TFLOP/s (no sparsity) by device kind and precision; the fp32 entry is the CUDA-core
# rate. Sources: NVIDIA's H100 and H200 datasheets (SXM / PCIe / NVL columns), the A100
# datasheet; Google Cloud's TPU pages (bf16 per chip).
PEAK_TFLOPS = (
    ("H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),  # SXM5 ("H100 80GB HBM3")
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    ("TPU v4", {"bf16": 275.0}),
    ("TPU v5 lite", {"bf16": 197.0}),
    ("TPU v5p", {"bf16": 459.0}),
    ("TPU v6", {"bf16": 918.0}),
)
PEAK_SOURCE = "vendor datasheets, dense (no sparsity); fp32 = CUDA cores"


@dataclasses.dataclass(frozen=True)
class Row:
  """One measurement: what runs, not its result."""
  kind: str               # "train" or "inference"
  framework: str          # "jax" or "pytorch"
  variant: str
  batch: int              # per device
  precision: str
  freeze_backbone: bool = False
  form: str = "default"   # JAX: a key of FORMS; PyTorch: "default", "channels_last", "compile"


def plan(args) -> list[Row]:
  """The rows in order of importance, restricted to the requested sections and variants."""
  variants, frameworks, two = args.variants, args.frameworks, args.precisions
  first = lambda v: args.train_batch or TRAIN_BATCHES[v][0]
  later = lambda v: () if args.train_batch else TRAIN_BATCHES[v][1:]
  sections = {
      "train": [Row("train", f, v, first(v), p) for v in variants for p in two
                for f in frameworks],
      "inference": [Row("inference", f, v, 1, p) for v in variants for p in two
                    for f in frameworks],
      "forms": ([Row("train", "jax", v, first(v), "bf16", form=form) for v in variants
                 for form in FORMS if form != "default"]
                + [Row("inference", "jax", v, 1, "bf16", form=form) for v in variants
                   for form in INFERENCE_FORMS]),
      "torch": [Row(kind, "pytorch", v, first(v) if kind == "train" else 1, "bf16", form=form)
                for form in ("channels_last", "compile") for kind in ("train", "inference")
                for v in variants],
      "batches": [Row("train", f, v, b, p) for v in variants for b in later(v) for p in two
                  for f in frameworks],
      "frozen": [Row("train", f, v, first(v), p, freeze_backbone=True) for v in variants
                 for p in two for f in frameworks],
      "throughput": [Row("inference", f, v, b, p) for b in args.infer_batches if b != 1
                     for v in variants for p in two for f in frameworks],
      "tf32": [Row(kind, f, v, first(v) if kind == "train" else 1, "tf32")
               for kind in ("train", "inference") for v in variants for f in frameworks],
  }
  rows = [row for name in args.sections for row in sections[name]]
  if 1 not in args.infer_batches:
    rows = [r for r in rows if not (r.kind == "inference" and r.batch == 1)]
  return [r for r in rows if r.framework in frameworks]


# ------------------------------------------------------------------------------------------------
# JAX


def _timed_calls(call: Callable[[int], Any], steps: int, warmup: int, seconds: float) -> dict:
  """Times `call(i)` (which must block until its result is ready) as reference_step.py times
  PyTorch's steps: `warmup` untimed calls, the first of them timed apart (buffers allocated),
  then up to `steps` timed calls, stopping after `seconds` of them (but after at least 3)."""
  warm = []
  for i in range(warmup):
    start = time.perf_counter()
    call(i)
    warm.append(time.perf_counter() - start)
  times = []
  while len(times) < steps and (len(times) < 3 or sum(times) < seconds):
    start = time.perf_counter()
    call(warmup + len(times))
    times.append(time.perf_counter() - start)
  return {"first_step_s": round(warm[0], 6) if warm else None,
          "warmup_s": round(sum(warm[1:]), 6), "steps": len(times),
          "median_s": round(statistics.median(times), 6),
          "mean_s": round(statistics.fmean(times), 6)}


def _cost(compiled) -> dict:
  """XLA's FLOPs and the program's device memory (arguments + outputs + temporaries - aliased)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  program_bytes = None
  if memory is not None:
    program_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                     + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return {"xla_flops": float(cost.get("flops", 0.0)) if cost else None,
          "program_memory_gb": None if program_bytes is None else round(program_bytes / 2**30, 3)}


def _process_peak_gb() -> float | None:
  """The most device memory this process has held so far (None where JAX does not say: CPU)."""
  peak = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  return None if peak is None else round(peak / 2**30, 3)


def _jax_model(row: Row, spec: ScalingSpec) -> EfficientHRNet:
  form = ExecutionForm.for_backend(jax.default_backend(), train=row.kind == "train")
  return EfficientHRNet(spec, dataclasses.replace(form, **FORMS[row.form]),
                        dtype=JAX_PRECISION[row.precision][1])


@functools.lru_cache(maxsize=None)
def _initial_variables(variant: str) -> dict:
  """The variant's random initial variables, on the host: the same for every dtype and form, so
  initialised (and its program compiled) once per run rather than once per row."""
  spec = ScalingSpec.from_name(variant)
  return jax.device_get(init_variables(EfficientHRNet(spec), jax.random.key(0)))


def jax_train(row: Row, size: int, args) -> dict:
  """The trainer's SPMD step over all devices, on two synthetic global batches in the input
  pipeline's format placed on the devices once (`row.batch` images per device)."""
  spec = ScalingSpec.from_name(row.variant)
  devices = jax.device_count()
  with jax.default_matmul_precision(JAX_PRECISION[row.precision][0]):
    model = _jax_model(row, spec)
    tx = optim.make_optimizer(TrainConfig(freeze_backbone=row.freeze_backbone), 1000)
    mesh = mesh_lib.data_mesh()
    p_step = step_lib.spmd_train_step(step_lib.make_train_step(
        model, tx, losses.pose_loss, row.freeze_backbone, axis_name=mesh_lib.AXIS), mesh,
        prepare=targets.prepare_batch)
    state = mesh_lib.put_replicated(create_train_state(model, tx, jax.random.key(0),
                                                       _initial_variables(row.variant)), mesh)
    batches = [mesh_lib.global_batch(train_step.synthetic_batch(
        np.random.default_rng(i), devices * row.batch, size), mesh) for i in range(2)]
    start = time.perf_counter()
    compiled = p_step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - start
  holder = {"state": state}

  def call(i):
    holder["state"], metrics = compiled(holder["state"], batches[i % 2])
    holder["loss"] = float(mesh_lib.host_value(metrics["loss"]))

  timing = _timed_calls(call, args.steps, args.warmup, args.row_seconds)
  images = row.batch * devices
  return {"compile_s": round(compile_s, 2), **timing, "images_per_step": images,
          "images_per_second": round(images / timing["median_s"], 2), "loss": holder["loss"],
          **_cost(compiled),
          "process_peak_memory_gb": _process_peak_gb(),
          "matmul_precision": JAX_PRECISION[row.precision][0]}


def jax_inference(row: Row, size: int, args) -> dict:
  """The jitted network in its inference form (batch norm folded), on one device."""
  spec = ScalingSpec.from_name(row.variant)
  with jax.default_matmul_precision(JAX_PRECISION[row.precision][0]):
    model = _jax_model(row, spec)
    variables = fold_batch_norm(_initial_variables(row.variant))
    images = jax.random.normal(jax.random.key(1), (row.batch, size, size, 3))
    start = time.perf_counter()
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False),
                       compiler_options=inference_compiler_options()).lower(
                           variables, images).compile()
    compile_s = time.perf_counter() - start
  timing = _timed_calls(lambda i: jax.block_until_ready(compiled(variables, images)),
                        args.steps, args.warmup, args.row_seconds)
  return {"compile_s": round(compile_s, 2), **timing, "images_per_step": row.batch,
          "images_per_second": round(row.batch / timing["median_s"], 2),
          "latency_ms": round(1000 * timing["median_s"], 3), **_cost(compiled),
          "process_peak_memory_gb": _process_peak_gb(),
          "matmul_precision": JAX_PRECISION[row.precision][0]}


# ------------------------------------------------------------------------------------------------
# PyTorch (reference_step.py)


class PyTorchWorker:
  """reference_step.py --serve in a child process, started when first needed and again after a
  row it could not finish: PyTorch never shares this process with JAX (their CUDA and cuDNN
  libraries may differ), and a row that runs past its time (a long torch.compile) is stopped."""

  def __init__(self):
    self._process = None

  def measure(self, request: dict, timeout_s: float) -> dict:
    if self._process is None:
      self._process = subprocess.Popen(
          [sys.executable, str(pathlib.Path(__file__).with_name("reference_step.py")),
           "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self._process.stdin.write(json.dumps(request) + "\n")
    self._process.stdin.flush()
    ready, _, _ = select.select([self._process.stdout], [], [], max(timeout_s, 1.0))
    line = self._process.stdout.readline() if ready else ""
    if not line:
      self.close()
      return {"error": "the PyTorch worker ended" if ready else
              f"stopped: no result within {timeout_s:.0f} s"}
    return json.loads(line)

  def close(self) -> None:
    if self._process is not None:
      self._process.kill()
      self._process.wait()
      self._process = None


def pytorch_row(row: Row, size: int, args, worker: PyTorchWorker, device: str,
                deadline: float) -> dict:
  """reference_step.py's measurement of this row, from the worker, within the time left until
  `deadline` (time.monotonic; torch.compile rows --torch-compile-timeout-s at most); its
  precision flags as `precision_settings` (the row's `precision` stays the name)."""
  request = dict(kind=row.kind, variant=row.variant, batch=row.batch, size=size,
                 device=device, precision=row.precision,
                 channels_last=row.form == "channels_last", compile=row.form == "compile",
                 steps=args.steps, warmup=args.warmup, seconds=args.row_seconds)
  if row.kind == "train":
    request["freeze_backbone"] = row.freeze_backbone
  timeout_s = deadline - time.monotonic()
  if row.form == "compile":
    timeout_s = min(timeout_s, args.torch_compile_timeout_s)
  result = worker.measure(request, timeout_s)
  if "error" in result:
    return result
  if row.kind == "inference":
    result["latency_ms"] = round(1000 * result["median_s"], 3)
  result["precision_settings"] = result.pop("precision")
  return {k: v for k, v in result.items() if k not in ("variant", "freeze_backbone")}


# ------------------------------------------------------------------------------------------------
# The run


def peak_tflops(device_kind: str) -> dict[str, float] | None:
  return next((peaks for name, peaks in PEAK_TFLOPS if name.lower() in device_kind.lower()), None)


def with_peak_fraction(result: dict, row: Row, device_kind: str) -> dict:
  """Adds the achieved TFLOP/s (XLA's count) and its fraction of the precision's and of the dense
  bf16 peak of the device, where both are known."""
  peaks = peak_tflops(device_kind) or {}
  if not result.get("xla_flops"):
    return result
  achieved = result["xla_flops"] * jax.local_device_count() / result["median_s"] / 1e12
  result = {**result, "achieved_tflops": round(achieved, 2)}
  for name, peak in (("precision", peaks.get(row.precision)), ("bf16", peaks.get("bf16"))):
    if peak:
      result[f"fraction_of_{name}_peak"] = round(achieved / (peak * jax.local_device_count()), 4)
  return result


def _git_commit() -> str | None:
  """The project's commit, where this copy has its history."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True, cwd=pathlib.Path(__file__).parent).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def environment(args, torch_environment: dict | None) -> dict:
  """The machine, the versions and the settings every row depends on."""
  import flax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  device = jax.local_devices()[0]
  return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
          "backend": jax.default_backend(), "device_kind": device.device_kind,
          "devices": jax.local_device_count(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"),
          "platform_version": getattr(device.client, "platform_version", None),
          "flax": flax.__version__, "optax": optax.__version__,
          "pytorch": torch_environment, "commit": _git_commit(),
          "python": platform.python_version(), "machine": machine_description(),
          "peak_tflops": peak_tflops(device.device_kind), "peak_source": PEAK_SOURCE,
          "budget_s": args.budget_s}


def check_placement(args, torch_environment: dict | None) -> str:
  """Refuses to run anywhere but where it was meant to (an accelerator, unless --allow-cpu; the
  expected device kind and JAX version if given); returns PyTorch's device to match JAX's."""
  backend, kind = jax.default_backend(), jax.local_devices()[0].device_kind
  print(f"backend {backend}, {jax.local_device_count()} x {kind}, JAX {jax.__version__}",
        flush=True)
  problems = []
  if backend == "cpu" and not args.allow_cpu:
    problems.append("JAX runs on the CPU (no accelerator found; pass --allow-cpu to measure the "
                    "CPU anyway)")
  if args.expect_device and args.expect_device.lower() not in kind.lower():
    problems.append(f"the device is {kind!r}, not {args.expect_device!r}")
  if args.expect_jax and jax.__version__ != args.expect_jax:
    problems.append(f"JAX is {jax.__version__}, not {args.expect_jax}")
  if torch_environment is not None:
    if "error" in torch_environment:
      problems.append(f"PyTorch did not start: {torch_environment['error']}")
    elif backend == "gpu" and not torch_environment["gpu"]:
      problems.append("JAX runs on the GPU but PyTorch sees no CUDA device")
    elif backend not in ("gpu", "cpu"):
      problems.append(f"PyTorch has no {backend} device; run with --frameworks jax")
  if problems:
    sys.exit("accelerator.py: " + "; ".join(problems))
  return "cuda" if backend == "gpu" else "cpu"


def write_atomically(path: pathlib.Path, payload: dict) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(payload, indent=1))
  os.replace(tmp, path)


def run_row(row: Row, measure: Callable[[Row, int, Any], dict], args, device_kind: str) -> dict:
  """`measure(row, size, args)` with the row's settings and its wall time; an exception becomes
  the row's error."""
  size = args.size or ScalingSpec.from_name(row.variant).input_size
  start = time.perf_counter()
  try:
    result = with_peak_fraction(measure(row, size, args), row, device_kind)
  except Exception as error:  # pylint: disable=broad-except  # recorded; the run goes on
    result = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
  finally:
    jax.clear_caches()
  return {**dataclasses.asdict(row), "size": size, **result,
          "row_s": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="accelerator.json", type=pathlib.Path,
                      help="the JSON table (rewritten after every row)")
  parser.add_argument("--budget-s", type=float, default=480,
                      help="stop starting rows once this many seconds are spent")
  parser.add_argument("--sections", default=",".join(SECTIONS), type=lambda s: s.split(","),
                      help="which groups of rows, in this order (default: all)")
  parser.add_argument("--variants", default="H0,H-4", type=lambda s: s.split(","))
  parser.add_argument("--frameworks", default="jax,pytorch", type=lambda s: s.split(","))
  parser.add_argument("--precisions", default="fp32,bf16", type=lambda s: tuple(s.split(",")),
                      help="of the main rows (the tf32 section adds tf32)")
  parser.add_argument("--size", type=int, default=0, help="input size; 0 = each variant's own")
  parser.add_argument("--train-batch", type=int, default=0,
                      help="one per-device training batch for every variant (0 = H0 16 and 32, "
                           "H-4 48 and 96)")
  parser.add_argument("--infer-batches", default=",".join(map(str, INFER_BATCHES)),
                      type=lambda s: tuple(int(b) for b in s.split(",")))
  parser.add_argument("--steps", type=int, default=50, help="at most this many timed steps")
  parser.add_argument("--warmup", type=int, default=3,
                      help="warm-up steps before timing (the first timed apart)")
  parser.add_argument("--row-seconds", type=float, default=6.0,
                      help="stop timing a row after this many seconds (at least 3 steps)")
  parser.add_argument("--torch-compile-timeout-s", type=float, default=120,
                      help="stop a torch.compile row (compile, warm-up, timing) after this long")
  parser.add_argument("--allow-cpu", action="store_true", help="measure even without an "
                      "accelerator (smoke runs)")
  parser.add_argument("--expect-device", default="", help="fail unless the device kind "
                      "contains this, e.g. H100")
  parser.add_argument("--expect-jax", default="", help="fail unless JAX is this version")
  parser.add_argument("--cache-dir", default=os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "ehrnet_jax" / "xla")),
                      help="JAX's persistent compilation cache")
  args = parser.parse_args(argv)
  for name, given, known in (("--sections", args.sections, SECTIONS),
                             ("--precisions", args.precisions, PRECISIONS),
                             ("--frameworks", args.frameworks, ("jax", "pytorch"))):
    if set(given) - set(known):
      parser.error(f"{name}: unknown {sorted(set(given) - set(known))} (known: {known})")
  jax.config.update("jax_compilation_cache_dir", args.cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  deadline = time.monotonic() + args.budget_s
  worker = PyTorchWorker()
  try:
    torch_environment = (worker.measure({"kind": "environment"}, timeout_s=300)
                         if "pytorch" in args.frameworks else None)
    torch_device = check_placement(args, torch_environment)
    device_kind = jax.local_devices()[0].device_kind
    payload = {"environment": environment(args, torch_environment), "rows": []}
    pytorch = functools.partial(pytorch_row, worker=worker, device=torch_device,
                                deadline=deadline)
    measures = {("jax", "train"): jax_train, ("jax", "inference"): jax_inference,
                ("pytorch", "train"): pytorch, ("pytorch", "inference"): pytorch}
    spent: dict[tuple[str, str], list[float]] = {}
    for row in plan(args):
      left = deadline - time.monotonic()
      if left <= 0 or left < max(spent.get((row.framework, row.kind), [0.0])):
        payload["rows"].append({**dataclasses.asdict(row), "skipped": "time budget"})
        continue
      result = run_row(row, measures[row.framework, row.kind], args, device_kind)
      spent.setdefault((row.framework, row.kind), []).append(result["row_s"])
      payload["rows"].append(result)
      print(json.dumps(result), flush=True)
      write_atomically(args.out, payload)
  finally:
    worker.close()
  payload["goals"] = goals(payload["rows"])
  write_atomically(args.out, payload)
  print(json.dumps({"goals": payload["goals"]}, indent=1))
  print(f"wrote {args.out}")
  return 0


def goals(rows: list[dict]) -> list[dict]:
  """The figures held against the project's goals, where both sides were measured: JAX training
  images/s over PyTorch's best (goal >= 2) per variant and precision, H0 bf16 training's best
  fraction of the dense bf16 peak (goal >= 0.30), and JAX's best bf16 batch-1 latency over
  PyTorch's plain fp32 one (goal <= 0.5)."""
  done = [r for r in rows if "median_s" in r and not r.get("freeze_backbone")]

  def values(key, **criteria):
    return [r[key] for r in done if key in r
            and all(r[name] == value for name, value in criteria.items())]

  out = []
  for variant in sorted({r["variant"] for r in done}):
    for precision in ("fp32", "bf16"):
      ours, theirs = (values("images_per_second", framework=framework, kind="train",
                             variant=variant, precision=precision)
                      for framework in ("jax", "pytorch"))
      if ours and theirs:
        out.append({"goal": "training images/s, JAX / PyTorch's best >= 2", "variant": variant,
                    "precision": precision, "value": round(max(ours) / max(theirs), 3)})
    fraction = values("fraction_of_bf16_peak", kind="train", variant=variant, precision="bf16")
    if variant == "H0" and fraction:
      out.append({"goal": "H0 bf16 training, fraction of the dense bf16 peak >= 0.30",
                  "variant": variant, "value": max(fraction)})
    ours = values("latency_ms", framework="jax", kind="inference", variant=variant, batch=1,
                  precision="bf16")
    theirs = values("latency_ms", framework="pytorch", kind="inference", variant=variant,
                    batch=1, precision="fp32", form="default")
    if ours and theirs:
      out.append({"goal": "batch-1 latency, JAX bf16 / PyTorch fp32 <= 0.5", "variant": variant,
                  "value": round(min(ours) / theirs[0], 3)})
  return out


if __name__ == "__main__":
  sys.exit(main())
