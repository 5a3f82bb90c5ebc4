"""End-to-end inference time per image, split into network / decode / grouping.

Usage:
  python benchmarks/inference.py --variant H-4 [--checkpoint DIR] [--images 6] [--repeats 3]
  python benchmarks/inference.py --variant H0 --scales 1 --no-flip
  python benchmarks/inference.py --onnx h4_384x640.onnx     # onnxruntime + NumPy decoding

Runs the evaluation recipe (single scale by default, flip on) on the first `--images` coco-mini
images that have people, each once to compile and then `--repeats` times, and prints the median
wall-clock milliseconds per part, and the process CPU time of the whole call (all threads: a
measure of the work that does not depend on how busy a shared machine is). Without
`--checkpoint` the weights are a random initialisation: the network and decode times do not
depend on the weights, but the grouping time does (random maps hold hundreds of spurious people,
or none), so the script also prints the grouping time on the reference's realistic fixture maps
(benchmarks/grouping.py) and the end-to-end estimate with it.
"""

import argparse
import json
import pathlib
import statistics
import time

import jax
import numpy as np

from ehrnet_jax import inference, keypoints
from ehrnet_jax.inference import coco_evaluation, grouping, jax_decoder, transforms
from ehrnet_jax.models import EfficientHRNet, init_variables
from ehrnet_jax.scaling import ScalingSpec


def random_estimator(variant: str, scales, flip: bool) -> inference.PoseEstimator:
  spec = ScalingSpec.from_name(variant)
  variables = init_variables(EfficientHRNet(spec), jax.random.key(0))
  decoder = jax_decoder.network_decoder(spec, variables,
                                        keypoints.COCO.flip_index if flip else None)
  return inference.PoseEstimator(decoder, spec.input_size, scales)


def fixture_grouping_ms(reference: pathlib.Path) -> float:
  """Median over the 12 fixture cases of the median of 3 `grouping.parse` calls."""
  cases = np.load(reference / "grouping_cases.npz")
  medians = []
  for index in range(len(cases["image_ids"])):
    heatmaps, tags = cases[f"heatmaps_{index}"][0], cases[f"tags_{index}"][0]
    times = []
    for _ in range(3):
      start = time.perf_counter()
      grouping.parse(heatmaps, tags)
      times.append(1e3 * (time.perf_counter() - start))
    medians.append(statistics.median(times))
  return statistics.median(medians)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="H-4")
  parser.add_argument("--checkpoint", help="default: random initialisation")
  parser.add_argument("--onnx", help="an `ehrnet export --format onnx` model instead (its --size "
                      "must hold the images' test sizes, e.g. 384x640 for H-4 on coco-mini)")
  parser.add_argument("--shared", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parents[2] / "shared")
  parser.add_argument("--images", type=int, default=6)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--scales", default="1")
  parser.add_argument("--no-flip", action="store_true")
  args = parser.parse_args()
  scales = tuple(float(s) for s in args.scales.split(","))
  flip = not args.no_flip
  if args.onnx:
    from ehrnet_jax.inference import onnx_decoder  # pylint: disable=import-outside-toplevel
    estimator = onnx_decoder.onnx_estimator(args.onnx, None, scales, flip, input_wh=None)
  elif args.checkpoint:
    estimator = jax_decoder.jax_estimator(args.checkpoint, args.variant, scales, flip)
  else:
    estimator = random_estimator(args.variant, scales, flip)
  coco_mini = args.shared / "data" / "coco-mini"
  annotations = json.loads(
      (coco_mini / "annotations" / "person_keypoints_train2017.json").read_text())["annotations"]
  with_people = {a["image_id"] for a in annotations if a["num_keypoints"] > 0}
  source = coco_evaluation.coco_folder(coco_mini, "train2017", args.images, with_people)

  print(f"{args.variant}, scales {scales}, flip {flip}, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; median of {args.repeats} runs after one compile run")
  print("| image | input W×H | people | network ms | decode ms | grouping ms | CPU ms |")
  print("|---|---|---|---|---|---|---|")
  per_image = []
  for image_id, image in source.images(source.image_ids):
    estimator([image])                                # compiles for this input size
    runs, cpu = [], []
    for _ in range(args.repeats):
      start = time.process_time()
      runs.append(estimator([image])[0])
      cpu.append(1e3 * (time.process_time() - start))
    median = {p: 1e3 * statistics.median(r.seconds[p] for r in runs) for p in coco_evaluation.PARTS}
    median["cpu"] = statistics.median(cpu)
    per_image.append(median)
    size = transforms.multi_scale_size(image.shape[1::-1], estimator.input_size, 1.0,
                                                 min(scales)).size_wh
    print(f"| {image_id} | {size[0]}×{size[1]} | {len(runs[0].people)} | "
          + " | ".join(f"{median[p]:.0f}" for p in (*coco_evaluation.PARTS, "cpu")) + " |")
  overall = {p: statistics.median(m[p] for m in per_image) for p in coco_evaluation.PARTS}
  grouping_ms = fixture_grouping_ms(args.shared / "fixtures" / "reference")
  print("\nmedian per image: "
        + ", ".join(f"{p} {overall[p]:.0f} ms" for p in coco_evaluation.PARTS))
  print(f"grouping on the fixture's realistic maps: {grouping_ms:.0f} ms -> end to end "
        f"{overall['network'] + overall['decode'] + grouping_ms:.0f} ms per image")


if __name__ == "__main__":
  main()
