"""`ehrnet predict`: poses on images, folders and videos -> COCO-format JSON and drawings."""

import argparse

from ehrnet_jax.commands import _runtime

EXAMPLE = """example:
  ehrnet predict --variant H-4 --checkpoint checkpoints/H-4 --out runs/predict photo.jpg
  ehrnet predict --variant H-4 --checkpoint checkpoints/H-4 --out runs/predict \\
      photos/ clip.mp4 --threshold 0.2 --min-score 0.1
  ehrnet predict --backend onnx h4.onnx photos/ --out runs/predict    # no JAX needed

Writes OUT/predictions.json (COCO result entries plus "file_name" and, for videos, "frame"), and
for each input a drawing with one colour per person: OUT/<name>.jpg for images, OUT/<name>.mp4 for
videos. Folders are searched recursively for images and videos. Grayscale and RGBA images are
converted to RGB; unreadable files stop the run with an error naming them. With --backend onnx
the model is an `ehrnet export --format onnx` file, given with --checkpoint or as the first
INPUT; it runs with onnxruntime (--device cpu, cuda or tensorrt) and needs images whose
test-time size fits its exported --size."""

MISSING_MODEL = {
    "jax": "--checkpoint DIR is required: an ehrnet checkpoint from `ehrnet convert` or "
           "`ehrnet train` (for an exported .onnx model, pass --backend onnx)",
    "onnx": "--backend onnx needs the model: --checkpoint FILE.onnx or an .onnx file as the first "
            "INPUT (write one with `ehrnet export --format onnx`)",
}


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "predict", help="poses on images/folders/videos: JSON and drawn skeletons",
      description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image, video or folder")
  parser.add_argument("--variant", help="H0, H-1, ..., H-4 or phi=<number>; must match the "
                      "checkpoint (required with --backend jax)")
  parser.add_argument("--checkpoint", help="checkpoint directory (jax) or .onnx file (onnx)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--threshold", type=float, default=0.1,
                      help="draw joints whose confidence exceeds this (default 0.1)")
  parser.add_argument("--min-score", type=float, default=0.0,
                      help="leave out people scoring below this (default 0: keep all)")
  parser.add_argument("--batch-size", type=int, default=4, help="video frames per network call")
  parser.add_argument("--no-draw", action="store_true", help="write predictions.json only")
  _runtime.add_arguments(parser)
  parser.set_defaults(run=run)


def run(args) -> int:
  from ehrnet_jax.inference import predict  # pylint: disable=import-outside-toplevel
  model, inputs = _model_and_inputs(args)
  files = predict.collect_inputs(inputs)   # bad paths fail before the model loads
  estimator = _runtime.make_estimator(args, model)
  entries = predict.predict(estimator, files, args.out, args.threshold, args.min_score,
                            args.batch_size, draw=not args.no_draw)
  print(f"{len(entries)} people in {len(files)} input(s); wrote {args.out}/predictions.json")
  return 0


def _model_and_inputs(args) -> tuple[str, list[str]]:
  """The model (--checkpoint, or for onnx a first INPUT ending in .onnx) and the inputs."""
  from ehrnet_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  inputs = list(args.inputs)
  model = args.checkpoint
  onnx = args.backend == "onnx"
  if model is None and onnx and inputs[0].lower().endswith(".onnx"):
    model = inputs.pop(0)
  if model is None:
    raise UserError(MISSING_MODEL[args.backend])
  _runtime.check_model(args, model)
  if not inputs:
    raise UserError(f"no INPUT after the model {model}: give images, videos or folders of them")
  return model, inputs
