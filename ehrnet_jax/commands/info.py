"""`ehrnet info`: the spec, true parameter count, FLOPs and the paper's numbers (params, "FLOPs",
COCO AP with its table and split) per variant. The published models' counts are stored in the
package (`ehrnet_jax.stored_counts`: no JAX, well under a second); other phi, and every model
with --recount, are counted live (JAX traces the network, 1-3 s per model on 2 cores; nothing is
compiled: FLOPs come from the lowered program)."""

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
val2017 from the paper's Table 4, test-dev single / multi-scale from its Table 3. Classifiers:
parameters with the ImageNet (1000) and CIFAR-100 heads, FLOPs with the ImageNet head at the
Table-2 input size.

Counts: stored in the package for H0 ... H-4 and B0 ... B-4 (what the live count gives, with
the jax/jaxlib/flax versions it was made with: the table's last line, "counts" and
"counted_with" in --json); counted live (1-3 s per model) for other phi, and for all with
--recount. Everything but XLA's FLOPs is a property of the architecture; the FLOPs may differ
slightly with another JAX version. `python -m ehrnet_jax.stored_counts` rewrites the table."""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "info", help="spec, parameters and FLOPs of each variant", description=__doc__,
      epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", action="append",
                      help="variant(s) to describe (default: H0 ... H-4)")
  parser.add_argument("--classifiers", action="store_true",
                      help="describe the backbone classifiers B0 ... B-4 instead")
  parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
  parser.add_argument("--recount", action="store_true",
                      help="count every model live with the installed JAX instead of reading "
                           "the stored counts of the published ones (~30 s)")
  parser.set_defaults(run=run)


def run(args) -> int:
  from ehrnet_jax import stored_counts  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.scaling import VARIANT_NAMES, ScalingSpec  # pylint: disable=import-outside-toplevel

  if args.classifiers:
    return _classifiers(args.json, args.recount)
  rows = []
  for name in args.variant or list(VARIANT_NAMES):
    spec = ScalingSpec.from_name(name)
    counts, stored = stored_counts.model_counts(spec, args.recount)
    rows.append({**spec.summary(), **counts, "paper_ap": spec.paper_ap, **_provenance(stored)})
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
  print(_counts_line(rows))
  return 0


def _paper_ap_columns(paper_ap: dict | None) -> str:
  """The paper's val2017 AP and test-dev single/multi-scale AP, or dashes for other phi."""
  if paper_ap is None:
    return f"{'-':>15} {'-':>20}"
  val, test_dev, multi_scale = paper_ap.values()   # scaling.PAPER_AP_SPLITS order
  return f"{val:>15.1f} {f'{test_dev:.1f} / {multi_scale:.1f}':>20}"


def _provenance(stored: bool) -> dict:
  """Where a row's counts come from: {"counts": "stored" or "live", "counted_with": {package:
  version}} (the stored table's versions, or the installed ones)."""
  from ehrnet_jax import stored_counts  # pylint: disable=import-outside-toplevel
  return {"counts": "stored" if stored else "live",
          "counted_with": (stored_counts.counted_with() if stored
                           else stored_counts.installed_versions())}


def _counts_line(rows: list[dict]) -> str:
  """The table's last line: stored or live, and the versions counted with (per group of rows
  when some are stored and some live)."""
  groups = {}
  for row in rows:
    groups.setdefault(row["counts"], []).append(row)
  parts = []
  for source, members in groups.items():
    names = "" if len(groups) == 1 else " ".join(row["name"] for row in members) + " "
    versions = ", ".join(f"{name} {version}"
                         for name, version in members[0]["counted_with"].items())
    parts.append(f"{names}{source} ({versions})")
  recount = "; --recount counts them live" if "stored" in groups else ""
  return "counts: " + "; ".join(parts) + recount


def _classifiers(as_json: bool, recount: bool) -> int:
  from ehrnet_jax import stored_counts  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.scaling import CLASSIFIER_VARIANTS, classifier_variant  # pylint: disable=import-outside-toplevel

  rows = []
  for name in CLASSIFIER_VARIANTS:
    spec, _ = classifier_variant(name)
    imagenet, stored = stored_counts.classifier_counts(spec, 1000, recount)
    cifar, _ = stored_counts.classifier_counts(spec, 100, recount)
    rows.append({**imagenet, "width_mult": spec.width_mult, "depth_mult": spec.depth_mult,
                 "params_cifar100": cifar["params"], **_provenance(stored)})
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
  print(_counts_line(rows))
  return 0
