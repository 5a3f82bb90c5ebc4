"""`ehrnet export`: a checkpoint -> ONNX, TF SavedModel or TensorRT engine for deployment."""

import argparse

EXAMPLE = """examples:
  ehrnet export --variant H-4 --checkpoint checkpoints/H-4 --format onnx --out h4.onnx
  ehrnet export --variant H-4 --checkpoint checkpoints/H-4 --format onnx --size 384x640 \
      --out h4_16x9.onnx    # landscape, for 16:9 cameras
  ehrnet export --variant H0 --checkpoint checkpoints/H0 --format onnx --size 512x512 \\
      --batch 1 --layout NCHW --out h0_nchw.onnx
  ehrnet export --variant H-4 --checkpoint checkpoints/H-4 --format savedmodel --out h4_tf/
  ehrnet export --format tensorrt --onnx h0_nchw.onnx --precision fp16 --out h0_fp16.engine

The network only (eval mode; batch norm folded into the convolutions), input `images`: float32
RGB, /255 then ImageNet mean/std, fixed spatial size (--size HxW, height first, default the
variant's input size, square), layout NHWC or NCHW. `ehrnet predict --backend onnx` fits every
image into that size (aspect ratio kept, padded black): export with your camera's aspect ratio
to use the whole input, e.g. at H-4 --size 384x640 for 16:9 (640x360, 1280x720, 1920x1080) and
--size 384x512 for 4:3; the variant's short side with the long side rounded up to a multiple of
64 (e.g. 384x704 for 16:9 at H-4) gives exactly evaluation's resize (`ehrnet evaluate --backend
onnx` needs it). Outputs heatmaps_4, tags_4 (1/4 size) and heatmaps_2 (1/2 size) in
the same layout. ONNX models hold only standard operators (default opset 17, for TensorRT 8.5 and
10 on Jetson) and the metadata `ehrnet predict --backend onnx` reads. TensorRT engines are built
from an ONNX file on the GPU machine that runs them (docs/deployment.md)."""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "export", help="export a checkpoint to ONNX, TF SavedModel or a TensorRT engine",
      description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--format", required=True, choices=["onnx", "savedmodel", "tensorrt"])
  parser.add_argument("--out", required=True,
                      help="output file (.onnx, .engine) or directory (savedmodel)")
  parser.add_argument("--variant", help="H0, H-1, ..., H-4 or phi=<number>; must match the "
                      "checkpoint")
  parser.add_argument("--checkpoint", help="checkpoint directory (ehrnet convert/train)")
  parser.add_argument("--size", metavar="HxW", help="network input, height first, multiples of "
                      "32 (default: the variant's input size, square); e.g. 384x640 for 16:9 "
                      "cameras at H-4")
  parser.add_argument("--batch", default="dynamic",
                      help="'dynamic' (default) or a fixed batch size")
  parser.add_argument("--layout", default="NHWC", choices=["NHWC", "NCHW"],
                      help="layout of the input and outputs (default NHWC)")
  parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 17-20 (default 17)")
  parser.add_argument("--onnx", help="tensorrt: build from this ONNX file instead of a "
                      "checkpoint (no JAX needed)")
  parser.add_argument("--precision", default="fp16", choices=["fp16", "fp32"],
                      help="tensorrt: engine precision (default fp16)")
  parser.add_argument("--max-batch", type=int, default=1,
                      help="tensorrt: largest batch of a dynamic-batch model (default 1)")
  parser.set_defaults(run=run)


def run(args) -> int:
  import pathlib  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(args.out)
  if args.format == "tensorrt" and args.onnx:
    return _build_engine(pathlib.Path(args.onnx), out, args)
  if not (args.variant and args.checkpoint):
    raise UserError("--variant and --checkpoint are required (with --format tensorrt, --onnx "
                    "FILE may replace them)")
  # pylint: disable=import-outside-toplevel
  from ehrnet_jax import weights
  from ehrnet_jax.export import network
  from ehrnet_jax.scaling import ScalingSpec
  # pylint: enable=import-outside-toplevel
  spec = ScalingSpec.from_name(args.variant)
  options = network.ExportOptions(network.parse_size(args.size, spec),
                                  network.parse_batch(args.batch), args.layout)
  variables, _ = weights.load_variables(args.checkpoint, spec)
  if args.format == "savedmodel":
    from ehrnet_jax.export import savedmodel  # pylint: disable=import-outside-toplevel
    savedmodel.export_savedmodel(spec, variables, options, out)
    print(f"wrote {out} (SavedModel, signature serving_default, input {options.input_shape()})")
    return 0
  from ehrnet_jax.export import onnx as onnx_export  # pylint: disable=import-outside-toplevel
  onnx_path = out if args.format == "onnx" else out.with_suffix(".onnx")
  model = onnx_export.export_onnx(spec, variables, options, args.opset)
  onnx_export.save(model, onnx_path)
  ops = ", ".join(f"{op} {n}" for op, n in onnx_export.operator_counts(model).items())
  print(f"wrote {onnx_path} (opset {args.opset}, input {options.input_shape()}); operators: {ops}")
  if args.format == "tensorrt":
    return _build_engine(onnx_path, out, args)
  return 0


def _build_engine(onnx_path, out, args) -> int:
  from ehrnet_jax.export import tensorrt  # pylint: disable=import-outside-toplevel
  tensorrt.build_engine(onnx_path, out, args.precision, args.max_batch)
  print(f"wrote {out} (TensorRT engine, {args.precision})")
  return 0
