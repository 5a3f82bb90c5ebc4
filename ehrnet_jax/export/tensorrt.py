"""TensorRT engines from an exported ONNX file (needs an NVIDIA GPU with TensorRT).

Uses the `tensorrt` Python API when it imports, else NVIDIA's `trtexec` (on Jetson:
/usr/src/tensorrt/bin/trtexec). Nothing here imports JAX: this runs on the device itself.
A dynamic-batch model gets one optimisation profile, batch 1 to `max_batch` (tuned for
`max_batch`).
"""

import importlib.util
import pathlib
import shutil
import subprocess

import onnx
from google.protobuf.message import DecodeError

from ehrnet_jax.errors import UserError

PRECISIONS = ("fp32", "fp16")
TRTEXEC_PATHS = ("trtexec", "/usr/src/tensorrt/bin/trtexec")


def trtexec_command(onnx_path, engine_path, precision: str = "fp16", max_batch: int = 1,
                    dynamic_batch: bool = False, input_shape: tuple = ()) -> list[str]:
  """The `trtexec` command line that builds (and times) the engine."""
  command = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
  if precision == "fp16":
    command.append("--fp16")
  if dynamic_batch:
    dims = "x".join(str(d) for d in input_shape[1:])
    command += [f"--minShapes=images:1x{dims}", f"--optShapes=images:{max_batch}x{dims}",
                f"--maxShapes=images:{max_batch}x{dims}"]
  return command


def build_engine(onnx_path, engine_path, precision: str = "fp16", max_batch: int = 1,
                 workspace_gib: float = 1.0) -> pathlib.Path:
  """Builds a serialized engine from `onnx_path`; UserError (with what to do) where impossible."""
  if precision not in PRECISIONS:
    raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
  onnx_path, engine_path = pathlib.Path(onnx_path), pathlib.Path(engine_path)
  if not onnx_path.is_file():
    raise UserError(f"{onnx_path}: no such ONNX file; export one with `ehrnet export --format "
                    "onnx` first")
  shape = _input_shape(onnx_path)
  dynamic = not isinstance(shape[0], int)
  command = trtexec_command(onnx_path, engine_path, precision, max_batch, dynamic, shape)
  if importlib.util.find_spec("tensorrt") is not None:
    _build_with_api(onnx_path, engine_path, precision, max_batch, shape, workspace_gib)
    return engine_path
  trtexec = next((p for p in map(shutil.which, TRTEXEC_PATHS) if p), None)
  if trtexec is None:
    raise UserError(
        "TensorRT is not available on this machine (no `tensorrt` Python package, no `trtexec`);"
        " an engine must be built on the machine that runs it, with its GPU. Copy "
        f"{onnx_path} there (e.g. a Jetson with JetPack 6) and run:\n  {' '.join(command)}\n"
        "(see docs/deployment.md)")
  result = subprocess.run([trtexec] + command[1:], capture_output=True, text=True, check=False)
  if result.returncode:
    raise UserError(f"trtexec failed building {engine_path} (exit {result.returncode}):\n"
                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
  return engine_path


def _input_shape(onnx_path: pathlib.Path) -> tuple:
  """The input's dims: ints, or the dimension's name where it is dynamic."""
  try:
    inputs = onnx.load(str(onnx_path), load_external_data=False).graph.input
  except DecodeError:
    inputs = None
  if not inputs:
    raise UserError(f"{onnx_path}: not an ONNX model with an input; export one with `ehrnet "
                    "export --format onnx --batch 1 --layout NCHW` (docs/deployment.md)")
  dims = inputs[0].type.tensor_type.shape.dim
  return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)


def _build_with_api(onnx_path, engine_path, precision, max_batch, shape, workspace_gib):
  """The build with the `tensorrt` Python API (TensorRT 8.5 and later)."""
  import tensorrt as trt  # pylint: disable=import-outside-toplevel,import-error
  logger = trt.Logger(trt.Logger.WARNING)
  try:
    builder = trt.Builder(logger)
  except (RuntimeError, TypeError) as error:
    raise UserError(f"TensorRT cannot start a builder here (no usable NVIDIA GPU?): {error}") \
        from None
  flags = 0
  if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):   # implicit in TensorRT 10
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
  network = builder.create_network(flags)
  parser = trt.OnnxParser(network, logger)
  if not parser.parse(onnx_path.read_bytes()):
    errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
    raise UserError(f"TensorRT cannot parse {onnx_path}:\n{errors}")
  config = builder.create_builder_config()
  config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
  if precision == "fp16":
    config.set_flag(trt.BuilderFlag.FP16)
  if not isinstance(shape[0], int):
    profile = builder.create_optimization_profile()
    dims = tuple(shape[1:])
    profile.set_shape(network.get_input(0).name, (1, *dims), (max_batch, *dims),
                      (max_batch, *dims))
    config.add_optimization_profile(profile)
  engine = builder.build_serialized_network(network, config)
  if engine is None:
    raise UserError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
  engine_path.parent.mkdir(parents=True, exist_ok=True)
  engine_path.write_bytes(bytes(engine))
