"""`ehrnet predict`: poses on images, folders and videos -> COCO-format JSON and drawings."""

import argparse
import pathlib
import sys

from ehrnet_jax.commands import _runtime

EXAMPLE = """example:
  ehrnet predict --variant H-4 --checkpoint checkpoints/H-4 --out runs/predict photo.jpg
  ehrnet predict --variant H-4 --checkpoint checkpoints/H-4 --out runs/predict \\
      photos/ clip.mp4 --threshold 0.2 --min-score 0.1
  ehrnet predict --backend onnx h4.onnx photos/ --out runs/predict    # no JAX needed
  ehrnet predict --variant H-4 --checkpoint checkpoints/H-4 --input-size 384x640 \
      --out runs/clips clips/    # 16:9 videos of any resolution, one compilation

Writes OUT/predictions.jsonl as it goes (one line per image or video frame: "file_name", "frame"
for videos, "image_id", "people": its COCO result entries), at the end OUT/predictions.json (the
COCO result entries plus "file_name" and, for videos, "frame") and OUT/failed.json (the inputs
skipped: [{"file", "reason"}]), and for each input a drawing with one colour per person:
OUT/<name>.jpg for images, OUT/<name>.mp4 for videos. Folders are searched recursively for images
and videos. Grayscale, RGBA and 16-bit images are converted to 8-bit RGB.

Every input is checked (exists, readable, its header decodes) before the model loads; an unreadable
one (or one whose decoding fails later) gets a warning and is skipped, the others run.

Resume: the same command with the same --out skips the images already in OUT/predictions.jsonl
(a video is read and drawn again, but its frames already there skip the network) and retries the
inputs that failed; the final predictions.json is the one an uninterrupted run writes. A rerun
with other settings (model, backend, variant, scales, flip, input size, min score, threshold,
drawing) is refused; --overwrite starts over.

exit status: 0 every input done; 1 some inputs could not be read (listed in OUT/failed.json, the
others done); 2 usage or setup error, or with --strict the first unreadable input.

Network input: by default (--backend jax) each image is resized as in evaluation (short side the
variant's input size rounded up to 64, long side rounded up to 64): one compilation per size.
--input-size HxW (height first, as `ehrnet export --size`) fits every image into that one input
instead: resized keeping its aspect ratio, centred, the rest padded black, people mapped back to
the image; e.g. 384x640 for 16:9 cameras at H-4.

With --backend onnx
the model is an `ehrnet export --format onnx` file, given with --checkpoint or as the first
INPUT; it runs with onnxruntime (--device cpu, cuda or tensorrt). Every image is fitted into the
model's exported size (or into --input-size, at most that size), so any image runs; export with
the aspect ratio of your camera (e.g. --size 384x640 for 16:9) to use the whole input."""

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
  _runtime.drawing_arguments(parser)
  parser.add_argument("--min-score", type=float, default=0.0,
                      help="leave out people scoring below this (default 0: keep all)")
  parser.add_argument("--batch-size", type=int, default=4, help="video frames per network call")
  parser.add_argument("--no-draw", action="store_true", help="write predictions.json only")
  parser.add_argument("--strict", action="store_true",
                      help="stop at the first unreadable input (exit 2) instead of skipping it")
  parser.add_argument("--overwrite", action="store_true",
                      help="start over: drop an earlier run's results in --out instead of resuming")
  _runtime.add_arguments(parser)
  _runtime.input_size_argument(parser)
  parser.set_defaults(run=run)


def run(args) -> int:
  from ehrnet_jax.inference import predict  # pylint: disable=import-outside-toplevel
  model, inputs = _model_and_inputs(args)
  checked = predict.check_inputs(inputs, args.strict)   # bad inputs are known before the model
  estimator = _runtime.make_estimator(args, model, fit=True)
  settings = {"model": str(pathlib.Path(model).resolve()), "backend": args.backend,
              "variant": args.variant, "device": args.device,
              "scales": list(_runtime.parse_scales(args.scales)), "flip": not args.no_flip,
              "min_score": args.min_score, "threshold": args.threshold, "draw": not args.no_draw,
              "input_size_hw": estimator.input_wh and list(estimator.input_wh[::-1])}
  result = predict.predict(estimator, checked, args.out, args.threshold, args.min_score,
                           args.batch_size, draw=not args.no_draw, settings=settings,
                           overwrite=args.overwrite, strict=args.strict)
  print(f"{len(result.entries)} people in {len(checked) - len(result.failed)} input(s); wrote "
        f"{args.out}/predictions.json")
  if result.failed:
    print(f"warning: {len(result.failed)} of {len(checked)} input(s) could not be read and were "
          f"skipped: {', '.join(f['file'] for f in result.failed[:3])}"
          f"{', ...' if len(result.failed) > 3 else ''} (all with reasons in "
          f"{args.out}/failed.json)", file=sys.stderr)
    return 1
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
