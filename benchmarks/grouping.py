"""Grouping speed on the reference's 12 fixture cases (NMS + top-k + match + adjust + refine).

Usage:
  python benchmarks/grouping.py [--shared ../shared] [--repeats 7]

Times `ehrnet_jax.inference.grouping.parse` on the maps of
`fixtures/reference/grouping_cases.npz` the way the
reference parser was timed (1 warm-up call, then the median of `--repeats` calls per case), checks
that every result equals `grouping_expected.json`, and prints a Markdown table. The reference
figures are the ones measured on the same 2-core machine (fixtures/reference/README.md §2).
"""

import argparse
import json
import pathlib
import statistics
import time

import numpy as np

from ehrnet_jax.inference import grouping

REFERENCE_MEDIAN_MS = 441.0   # median over the 12 cases of the reference's per-case medians


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shared", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parents[2] / "shared")
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  reference = args.shared / "fixtures" / "reference"
  expected = json.loads((reference / "grouping_expected.json").read_text())["cases"]
  cases = np.load(reference / "grouping_cases.npz")

  print("| case | people | map W×H | median ms | min ms |")
  print("|---|---|---|---|---|")
  medians = []
  for index, want in enumerate(expected):
    heatmaps, tags = cases[f"heatmaps_{index}"][0], cases[f"tags_{index}"][0]
    people, scores = grouping.parse(heatmaps, tags)   # warm-up, and the parity check
    np.testing.assert_allclose(people, np.asarray(want["parsed"]).reshape(people.shape), atol=1e-5)
    np.testing.assert_allclose(scores, want["scores"], atol=1e-5)
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      grouping.parse(heatmaps, tags)
      times.append((time.perf_counter() - start) * 1e3)
    medians.append(statistics.median(times))
    w, h = want["heatmap_size_wh"]
    print(f"| {index} | {len(people)} | {w}×{h} | {medians[-1]:.1f} | {min(times):.1f} |")
  median = statistics.median(medians)
  print(f"\nmedian of per-case medians: {median:.1f} ms "
        f"(reference {REFERENCE_MEDIAN_MS:.0f} ms: {REFERENCE_MEDIAN_MS / median:.1f}x faster); "
        f"all 12 cases equal grouping_expected.json")


if __name__ == "__main__":
  main()
