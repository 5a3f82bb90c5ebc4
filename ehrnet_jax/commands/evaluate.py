"""`ehrnet evaluate`: COCO keypoint AP of a checkpoint, with the reference's test-time recipe."""

import argparse
import json
import pathlib
import sys

from ehrnet_jax.commands import _distributed, _runtime
from ehrnet_jax.errors import UserError

EXAMPLE = """example:
  ehrnet evaluate --variant H-4 --checkpoint checkpoints/H-4 --coco-dir data/coco \\
      --split val2017 --out runs/eval-H-4
  ehrnet evaluate --variant H0 --checkpoint checkpoints/H0 --data-dir data/tfds \\
      --scales 0.5,1,1.5 --out runs/eval-H0-ms
  ehrnet evaluate --backend onnx --checkpoint h4_640.onnx --coco-dir data/coco --out runs/eval
  ehrnet evaluate ... --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0   (and 1)

Writes OUT/results.json (COCO results: every person found, no OKS-NMS) and OUT/metrics.json
(pycocotools stats by name: AP, AP50, AP75, APM, APL, AR, ...; the images scored and
"failed_images", those that could not be read; milliseconds per image split into network /
decode / grouping; the settings). While it runs, each process streams its images' people to
OUT/partial/process-K.jsonl (one line per image). An unreadable image gets a warning and is
skipped; the AP still counts it, as an image where no one was found.

Resume: the same command with the same --out skips the image ids already in OUT/partial/*.jsonl
(whatever the number of processes now) and retries failed images. A rerun with other settings
(model, variant, data, split, scales, flip, bucket, backend) is refused; --overwrite starts over.

exit status: 0 every image scored; 1 some images could not be read (listed in metrics.json);
2 usage or setup error.

The test size is the reference's: short side = the variant's input size rounded up to a multiple
of 64 (times each scale). With --backend onnx the model is an `ehrnet export --format onnx` file
run by onnxruntime (no JAX); its --size must hold every image's test size (e.g. 640x640 for H-4 on
COCO, whose photos are at most 640 pixels).

With --backend jax the images of one test size run in batches of one image per local device, and
several processes (--coordinator or --distributed, as for `ehrnet train`) share the images; process
0 scores them all and alone prints and writes. Network milliseconds per image are a batch's time
divided by its number of images. --backend onnx runs one image at a time in one process."""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "evaluate", help="COCO keypoint AP of a checkpoint (pycocotools)", description=__doc__,
      epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", help="H0, H-1, ..., H-4 or phi=<number>; must match the "
                      "checkpoint (required with --backend jax)")
  parser.add_argument("--checkpoint", required=True, help="checkpoint directory (ehrnet convert "
                      "or ehrnet train), or with --backend onnx an exported .onnx file")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--coco-dir", help="COCO root holding annotations/ and the split's images")
  source.add_argument("--data-dir", help="TFDS data dir built by `ehrnet data`")
  parser.add_argument("--split", default="val2017",
                      help="split to evaluate (default val2017; TFDS: validation/train also)")
  parser.add_argument("--out", required=True, help="directory for results.json and metrics.json")
  parser.add_argument("--max-images", type=int, help="only the first N images (quick checks)")
  parser.add_argument("--bucket", type=int, help="pad network inputs to multiples of this many "
                      "pixels to compile fewer shapes (changes results slightly at the border)")
  parser.add_argument("--overwrite", action="store_true",
                      help="start over: drop an earlier run's results in --out instead of resuming")
  _runtime.add_arguments(parser)
  _distributed.add_arguments(parser)
  parser.set_defaults(run=run)


def run(args) -> int:
  from ehrnet_jax.inference import coco_evaluation  # pylint: disable=import-outside-toplevel
  _runtime.check_model(args, args.checkpoint)
  scales = _runtime.parse_scales(args.scales)
  processes = coco_evaluation.OneProcess()
  if args.backend == "jax":
    _distributed.start(args)
    from ehrnet_jax.training import process_exchange  # pylint: disable=import-outside-toplevel
    processes = process_exchange.JaxProcesses()
  elif _distributed.requested(args):
    raise UserError("--backend onnx evaluates in one process: drop --coordinator/--distributed "
                    "(multi-process evaluation runs --backend jax)")
  # The data first: a wrong folder or split fails before the model loads.
  if args.coco_dir:
    source = coco_evaluation.coco_folder(args.coco_dir, args.split, args.max_images)
  else:
    source = coco_evaluation.tfds_dataset(args.data_dir, args.split, args.max_images)
  main = processes.index == 0
  if source.unreadable and main:
    first = next(iter(source.unreadable.values()))
    print(f"warning: {len(source.unreadable)} of {len(source.image_ids)} images cannot be read "
          f"(first: {first}); they are scored as images where no one was found", file=sys.stderr)
  estimator = _runtime.make_estimator(args, args.checkpoint, args.bucket, every_local_device=True)
  data = args.coco_dir or args.data_dir
  resumable = {"variant": args.variant, "checkpoint": str(pathlib.Path(args.checkpoint).resolve()),
               "data": str(pathlib.Path(data).resolve()), "split": args.split,
               "scales": list(scales), "flip": not args.no_flip, "bucket": args.bucket,
               "backend": args.backend, "device": args.device}
  evaluation = coco_evaluation.evaluate(estimator, source, progress=main, verbose=main,
                                        processes=processes, out_dir=args.out,
                                        settings=resumable, overwrite=args.overwrite)
  failed = 1 if evaluation.failed else 0
  if not main:
    return failed
  if evaluation.resumed:
    print(f"resumed: {evaluation.resumed} image(s) came from an earlier run in {args.out}",
          file=sys.stderr)
  settings = {"variant": args.variant, "checkpoint": str(args.checkpoint), "split": args.split,
              "scales": list(scales), "flip": not args.no_flip, "bucket": args.bucket,
              "backend": args.backend, "device": args.device, "processes": processes.count,
              "batch_per_process": estimator.batch_size}
  metrics_path = coco_evaluation.write_outputs(args.out, evaluation, settings)
  timing = coco_evaluation.timing_summary(evaluation.seconds)
  print(json.dumps({name: round(value, 4) for name, value in evaluation.stats.items()}))
  print("ms per image (median / mean): " + ", ".join(
      f"{part} {t['median_ms']:.1f} / {t['mean_ms']:.1f}" for part, t in timing.items()))
  print(f"wrote {metrics_path} and {metrics_path.parent / 'results.json'}")
  if failed:
    print(f"warning: {len(evaluation.failed)} image(s) could not be read and were scored as "
          f"images where no one was found (\"failed_images\" in {metrics_path})", file=sys.stderr)
  return failed
