"""`ehrnet info`: the spec, true parameter count, FLOPs and the paper's numbers (params, "FLOPs",
COCO AP with its table and split) per variant. Nothing is compiled: FLOPs come from the lowered
program."""

import argparse
import json

EXAMPLE = """example:
  ehrnet info                       # all published variants H0 ... H-4
  ehrnet info --variant H-4 --variant phi=-2.5 --json
  ehrnet info --classifiers         # the backbone classifiers B0 ... B-4 (the paper's Table 2)

Columns: params = true trainable parameters; FLOPs = XLA's cost analysis of the lowered (not
compiled) eval network at batch 1 and the native input: each operation counted once, a multiply-
add as 2, convolutions over the positions inside the input (the compiled program counts 0.8%
more: XLA's fusion recomputes some element-wise work); MACs = conv multiply-accumulates. The
paper's params/"FLOPs" come from a counting tool that counts every MBConv block twice and the
transposed conv 4x; its "FLOPs" are MACs. Paper AP (COCO keypoints, the authors' weights):
val2017 from the paper's Table 4, test-dev single / multi-scale from its Table 3. Classifiers: parameters with the ImageNet (1000) and
CIFAR-100 heads, FLOPs with the ImageNet head at the Table-2 input size."""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "info", help="spec, parameters and FLOPs of each variant", description=__doc__,
      epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", action="append",
                      help="variant(s) to describe (default: H0 ... H-4)")
  parser.add_argument("--classifiers", action="store_true",
                      help="describe the backbone classifiers B0 ... B-4 instead")
  parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
  parser.set_defaults(run=run)


def run(args) -> int:
  from ehrnet_jax import counting  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.scaling import VARIANT_NAMES, ScalingSpec  # pylint: disable=import-outside-toplevel

  if args.classifiers:
    return _classifiers(args.json)
  rows = []
  for name in args.variant or list(VARIANT_NAMES):
    spec = ScalingSpec.from_name(name)
    rows.append({**spec.summary(), **counting.model_counts(spec), "paper_ap": spec.paper_ap})
  if args.json:
    print(json.dumps(rows, indent=2))
    return 0
  header = (f"{'variant':>8} {'phi':>5} {'input':>5} {'backbone W/D':>12} {'HR widths':>16} "
            f"{'modules':>7} {'params':>11} {'GFLOPs':>7} {'GMACs':>6} "
            f"{'paper params':>12} {'paper GFLOPs':>12} {'AP val2017 (T4)':>15} "
            f"{'AP test-dev s/m (T3)':>20}")
  print(header)
  print("-" * len(header))
  for row in rows:
    print(f"{row['name']:>8} {row['phi']:>5g} {row['input_size']:>5} "
          f"{row['width_mult']:>6.3f}/{row['depth_mult']:<5.3f} "
          f"{'/'.join(map(str, row['hr_widths'])):>16} "
          f"{'/'.join(map(str, row['stage_modules'])):>7} {row['params']:>11,} "
          f"{row['flops'] / 1e9:>7.2f} {row['conv_macs'] / 1e9:>6.2f} "
          f"{row['paper_params'] / 1e6:>11.2f}M {row['paper_flops'] / 1e9:>12.2f} "
          f"{_paper_ap_columns(row['paper_ap'])}")
  return 0


def _paper_ap_columns(paper_ap: dict | None) -> str:
  """The paper's val2017 AP and test-dev single/multi-scale AP, or dashes for other phi."""
  if paper_ap is None:
    return f"{'-':>15} {'-':>20}"
  val, test_dev, multi_scale = paper_ap.values()   # scaling.PAPER_AP_SPLITS order
  return f"{val:>15.1f} {f'{test_dev:.1f} / {multi_scale:.1f}':>20}"


def _classifiers(as_json: bool) -> int:
  from ehrnet_jax import counting  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.scaling import CLASSIFIER_VARIANTS, classifier_variant  # pylint: disable=import-outside-toplevel

  rows = []
  for name in CLASSIFIER_VARIANTS:
    spec, _ = classifier_variant(name)
    imagenet = counting.classifier_counts(spec, 1000)
    cifar = counting.classifier_counts(spec, 100, with_flops=False)
    rows.append({**imagenet, "width_mult": spec.width_mult, "depth_mult": spec.depth_mult,
                 "params_cifar100": cifar["params"]})
  if as_json:
    print(json.dumps(rows, indent=2))
    return 0
  header = (f"{'variant':>8} {'phi':>5} {'input':>5} {'backbone W/D':>12} "
            f"{'params (ImageNet)':>17} {'params (CIFAR-100)':>18} {'GFLOPs':>7}")
  print(header)
  print("-" * len(header))
  for row in rows:
    print(f"{row['name']:>8} {row['phi']:>5g} {row['input_size']:>5} "
          f"{row['width_mult']:>6.3f}/{row['depth_mult']:<5.3f} {row['params']:>17,} "
          f"{row['params_cifar100']:>18,} {row['flops'] / 1e9:>7.2f}")
  return 0
