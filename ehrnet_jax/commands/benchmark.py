"""`ehrnet benchmark`: network latency (batch 1) and throughput (larger batch) per variant."""

import argparse

EXAMPLE = """example:
  ehrnet benchmark                              # H0 ... H-4, prints the table
  ehrnet benchmark --variant H-4 --batch 8 --repeats 30
  ehrnet benchmark --write BENCHMARKS.md        # also puts the table into that file

Latency: jitted eval network, batch 1, native input, median of --repeats runs after --warmup
runs; compile time reported apart. Throughput: the same at --batch. Random weights and inputs
(speed does not depend on them). The table is printed; with --write FILE it also replaces the
section between the ehrnet-benchmark markers of FILE (the section is appended, or the file
created, when missing). No file is written without --write."""

BEGIN, END = "<!-- ehrnet-benchmark:begin -->", "<!-- ehrnet-benchmark:end -->"


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "benchmark", help="latency and throughput of the network per variant", description=__doc__,
      epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", action="append", help="variant(s) (default: H0 ... H-4)")
  parser.add_argument("--batch", type=int, default=8, help="batch size for throughput")
  parser.add_argument("--size", type=int, help="square input side, a multiple of 32 (default: "
                      "each variant's native input size)")
  parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement")
  parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
  parser.add_argument("--form", default="auto", choices=("auto", "plain", "cpu_inference",
                                                       "accelerator_inference", "export"),
                      help="execution form (ehrnet_jax.models.ExecutionForm; auto: the fastest "
                           "inference form on this backend)")
  parser.add_argument("--write", metavar="FILE",
                      help="also put the table into this markdown file (default: print only)")
  parser.set_defaults(run=run)


def run(args) -> int:
  # pylint: disable=import-outside-toplevel
  import shlex
  import sys

  import jax

  from ehrnet_jax import timing
  from ehrnet_jax.models import EfficientHRNet, ExecutionForm, init_variables
  from ehrnet_jax.scaling import VARIANT_NAMES, ScalingSpec
  # pylint: enable=import-outside-toplevel

  rows = [f"Machine: {timing.machine_description()}.",
          f"Command: `{shlex.join(['ehrnet', *sys.argv[1:]])}`.",
          "",
          "| variant | input | compile (s) | latency b=1 median (ms) | min (ms) | "
          f"throughput b={args.batch} (images/s) |",
          "|---|---|---|---|---|---|"]
  form = None if args.form == "auto" else ExecutionForm.named(args.form)
  for name in args.variant or list(VARIANT_NAMES):
    spec = ScalingSpec.from_name(name)
    size = args.size or spec.input_size
    spec.check_input_shape(size, size)
    variables = init_variables(EfficientHRNet(spec), jax.random.key(0))
    latency = timing.time_network(spec, 1, (size, size), repeats=args.repeats,
                                  warmup=args.warmup, form=form, variables=variables)
    throughput = timing.time_network(spec, args.batch, (size, size),
                                        repeats=max(3, args.repeats // 4), warmup=1,
                                        form=form, variables=variables)
    rows.append(f"| {spec.name} | {size} | {latency.compile_s:.1f} | "
                f"{latency.median_ms:.1f} | {latency.min_ms:.1f} | {throughput.images_per_s:.2f} |")
    print(rows[-1], flush=True)
  if args.write:
    timing.replace_section(args.write, BEGIN, END, "\n".join(rows))
    print(f"wrote the table to {args.write}")
  return 0
