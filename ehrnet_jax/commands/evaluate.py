"""`ehrnet evaluate`: COCO keypoint AP of a checkpoint, with the reference's test-time recipe."""

import argparse
import json

EXAMPLE = """example:
  ehrnet evaluate --variant H-4 --checkpoint checkpoints/H-4 --coco-dir data/coco \\
      --split val2017 --out runs/eval-H-4
  ehrnet evaluate --variant H0 --checkpoint checkpoints/H0 --data-dir data/tfds \\
      --scales 0.5,1,1.5 --out runs/eval-H0-ms

Writes OUT/results.json (COCO results: every person found, no OKS-NMS) and OUT/metrics.json
(pycocotools stats by name: AP, AP50, AP75, APM, APL, AR, ...; milliseconds per image split into
network / decode / grouping; the settings). The test size is the reference's: short side = the
variant's input size rounded up to a multiple of 64 (times each scale)."""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "evaluate", help="COCO keypoint AP of a checkpoint (pycocotools)", description=__doc__,
      epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", required=True, help="H0, H-1, ..., H-4 or phi=<number>; "
                      "must match the checkpoint")
  parser.add_argument("--checkpoint", required=True, help="checkpoint directory (ehrnet convert "
                      "or ehrnet train)")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--coco-dir", help="COCO root holding annotations/ and the split's images")
  source.add_argument("--data-dir", help="TFDS data dir built by `ehrnet data`")
  parser.add_argument("--split", default="val2017",
                      help="split to evaluate (default val2017; TFDS: validation/train also)")
  parser.add_argument("--out", required=True, help="directory for results.json and metrics.json")
  parser.add_argument("--scales", default="1", help="comma-separated test scales, e.g. 0.5,1,1.5 "
                      "(multi-scale must include 1)")
  parser.add_argument("--no-flip", action="store_true", help="turn the flip test off")
  parser.add_argument("--max-images", type=int, help="only the first N images (quick checks)")
  parser.add_argument("--bucket", type=int, help="pad network inputs to multiples of this many "
                      "pixels to compile fewer shapes (changes results slightly at the border)")
  parser.set_defaults(run=run)


def parse_scales(text: str) -> tuple[float, ...]:
  """'0.5,1,1.5' -> (0.5, 1.0, 1.5); UserError if it is not a list of numbers."""
  from ehrnet_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  try:
    return tuple(float(part) for part in text.split(","))
  except ValueError:
    raise UserError(f"--scales must be comma-separated numbers such as 0.5,1,1.5; got {text!r}") \
        from None


def run(args) -> int:
  # pylint: disable=import-outside-toplevel
  from ehrnet_jax import evaluate
  from ehrnet_jax import inference
  # pylint: enable=import-outside-toplevel
  scales = parse_scales(args.scales)
  # The data first: a wrong folder or split fails before the model loads.
  if args.coco_dir:
    source = evaluate.coco_folder(args.coco_dir, args.split, args.max_images)
  else:
    source = evaluate.tfds_dataset(args.data_dir, args.split, args.max_images)
  estimator = inference.jax_estimator(args.checkpoint, args.variant, scales, not args.no_flip,
                                      args.bucket)
  evaluation = evaluate.evaluate(estimator, source, verbose=True)
  settings = {"variant": args.variant, "checkpoint": str(args.checkpoint), "split": args.split,
              "scales": list(scales), "flip": not args.no_flip, "bucket": args.bucket}
  metrics_path = evaluate.write_outputs(args.out, evaluation, settings)
  timing = evaluate.timing_summary(evaluation.seconds)
  print(json.dumps({name: round(value, 4) for name, value in evaluation.stats.items()}))
  print("ms per image (median / mean): " + ", ".join(
      f"{part} {t['median_ms']:.1f} / {t['mean_ms']:.1f}" for part, t in timing.items()))
  print(f"wrote {metrics_path} and {metrics_path.parent / 'results.json'}")
  return 0
