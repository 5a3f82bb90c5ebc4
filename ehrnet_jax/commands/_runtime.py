"""The network-runtime flags that `ehrnet evaluate` and `ehrnet predict` share.

`--backend jax` runs an ehrnet checkpoint directory with JAX (jit, decoding on device);
`--backend onnx` runs an `ehrnet export --format onnx` file with onnxruntime (`--device cpu`,
`cuda` or `tensorrt`), decoding and grouping in NumPy, without importing JAX. `make_estimator`
says on stderr which weights run, where they came from, and how (backend and execution form, or
onnxruntime's provider).
"""

import argparse
import sys

from ehrnet_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--backend", choices=["jax", "onnx"], default="jax",
                      help="network runtime: jax (checkpoint) or onnx (onnxruntime, no JAX)")
  parser.add_argument("--device", choices=["cpu", "cuda", "tensorrt"], default="cpu",
                      help="onnx: onnxruntime execution provider (default cpu)")
  parser.add_argument("--scales", default="1", help="comma-separated test scales, e.g. 0.5,1,1.5 "
                      "(multi-scale must include 1)")
  parser.add_argument("--no-flip", action="store_true", help="turn the flip test off")


def drawing_arguments(parser: argparse.ArgumentParser) -> None:
  """The model and output flags of the commands that draw people (predict, track)."""
  parser.add_argument("--variant", help="H0, H-1, ..., H-4 or phi=<number>; must match the "
                      "checkpoint (required with --backend jax)")
  parser.add_argument("--checkpoint", help="checkpoint directory (jax) or .onnx file (onnx)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--threshold", type=float, default=0.1,
                      help="draw joints whose confidence exceeds this (default 0.1)")


def parse_scales(text: str) -> tuple[float, ...]:
  """'0.5,1,1.5' -> (0.5, 1.0, 1.5); UserError if it is not a list of numbers."""
  try:
    return tuple(float(part) for part in text.split(","))
  except ValueError:
    raise UserError(f"--scales must be comma-separated numbers such as 0.5,1,1.5; got {text!r}") \
        from None


def check_model(args: argparse.Namespace, model: str) -> None:
  """The model fits the backend: an .onnx file for onnx, a checkpoint and a variant for jax."""
  if args.backend == "jax" and model.lower().endswith(".onnx"):
    raise UserError(f"{model} is an ONNX model: pass --backend onnx to run it (--backend jax "
                    "takes a checkpoint directory)")
  if args.backend == "jax" and args.variant is None:
    raise UserError("--variant is required with --backend jax: the checkpoint's variant, H0, H-1, "
                    "..., H-4 or phi=<number> (`ehrnet info` lists them)")


def input_size_argument(parser: argparse.ArgumentParser) -> None:
  """`--input-size HxW`, for commands that fit every image into one network input."""
  parser.add_argument("--input-size", metavar="HxW",
                      help="fit every image into this network input, height first like "
                      "`ehrnet export --size` (multiples of 32, e.g. 384x640 for 16:9 frames at "
                      "H-4): resized keeping its aspect ratio, centred, padded black, people "
                      "mapped back; JAX then compiles once for all image sizes. Default: with "
                      "--backend onnx the model's exported size; with jax each image's own test "
                      "size (the reference's, as in evaluation)")


def make_estimator(args: argparse.Namespace, model: str, bucket: int | None = None,
                   every_local_device: bool = False, fit: bool = False):
  """The `inference.PoseEstimator` of the flags, for `model` (call `check_model` first, before
  any slow work). `every_local_device`: with JAX, each batch is shared by all devices of this
  process (else it runs on one). `fit`: every image is fitted into one network input,
  `args.input_size` (`--input-size HxW`) or, if None, with onnx the model's size and with jax
  each image's reference test size; else the reference's test sizes (evaluation's protocol).
  Says on stderr what it runs."""
  scales, flip = parse_scales(args.scales), not args.no_flip
  input_wh = None
  if fit and args.input_size is not None:
    from ehrnet_jax.inference import transforms  # pylint: disable=import-outside-toplevel
    input_wh = transforms.parse_hw(args.input_size, "--input-size")[::-1]
  if args.backend == "onnx":
    from ehrnet_jax.inference import onnx_decoder  # pylint: disable=import-outside-toplevel
    estimator = onnx_decoder.onnx_estimator(
        model, args.variant, scales, flip, args.device,
        input_wh=input_wh or (onnx_decoder.MODEL_SIZE if fit else None))
    network = estimator.decoder.backend
    (h, w), spec = network.info.image_hw, network.info.spec
    print(f"running {model}: {spec.name}, exported for {h}x{w} (HxW){_fitted(estimator)}; "
          f"onnxruntime, provider {network.session.get_providers()[0]}", file=sys.stderr,
          flush=True)
    return estimator
  # pylint: disable=import-outside-toplevel
  import jax
  from ehrnet_jax import weights
  from ehrnet_jax.inference import jax_decoder
  # pylint: enable=import-outside-toplevel
  devices = tuple(jax.local_devices()) if every_local_device else None
  estimator = jax_decoder.jax_estimator(model, args.variant, scales, flip, bucket, devices=devices,
                                        input_wh=input_wh)
  metadata = weights.read_metadata(model)   # On every process: orbax restores are collective.
  if jax.process_index():   # Process 0 speaks for a multi-process run.
    return estimator
  source = f", from {metadata['source']}" if metadata.get("source") else ""
  print(f"running {model}: {metadata['variant']}{source}{_fitted(estimator)}; JAX on "
        f"{jax.default_backend()} ({estimator.batch_size} device(s)), execution form "
        f"{jax_decoder.inference_form().name}", file=sys.stderr, flush=True)
  return estimator


def _fitted(estimator) -> str:
  """', every image fitted into HxW' if the estimator fits images into one input, else ''."""
  if estimator.input_wh is None:
    return ""
  w, h = estimator.input_wh
  return f", every image fitted into {h}x{w} (HxW)"
