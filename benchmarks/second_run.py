"""Second-run time of `ehrnet predict`: the same images twice, in fresh processes, one cache.

Runs `ehrnet predict` on the same images (the first --images of ../shared/data/coco-mini when
present, else the bundled sample images) --runs times, each a new process, with the persistent
compilation cache in a directory that is empty at the start. For each run: the time from the
process's start to the first result (the first complete line of OUT/predictions.jsonl, which
`ehrnet predict` writes as each image is done; a build without it reports "-" there) and to the
end, and the cache's entries after it. Run 1 compiles every program; run 2 loads them.

  python benchmarks/second_run.py                        # H-4, the bundled H-4 weights
  python benchmarks/second_run.py --checkpoint runs/H-4/variables --images 8 --runs 3

Without --checkpoint the bundled H-4 state dict (random weights) is converted first (timing does
not depend on the weights).
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini" / "train2017"
POLL_S = 0.01


def benchmark_images(count: int) -> list[pathlib.Path]:
  """The first `count` images of coco-mini (sorted by name), else of the bundled samples."""
  from ehrnet_jax import samples  # pylint: disable=import-outside-toplevel
  found = sorted(COCO_MINI.glob("*.jpg")) or samples.images()
  return found[:count]


def converted_reference(directory: pathlib.Path) -> pathlib.Path:
  """The bundled H-4 state dict as an ehrnet checkpoint in `directory`."""
  # pylint: disable=import-outside-toplevel
  from ehrnet_jax import convert, samples, weights
  from ehrnet_jax.scaling import ScalingSpec
  # pylint: enable=import-outside-toplevel
  spec = ScalingSpec.from_name("H-4")
  variables = convert.convert_state_dict(convert.load_state_dict(samples.reference_weights()),
                                         spec)
  return weights.save_variables(directory / "H-4", variables, spec,
                                source=str(samples.reference_weights()))


def first_line_written(path: pathlib.Path) -> bool:
  """Whether `path` holds a complete (newline-terminated) line."""
  try:
    with open(path, "rb") as f:
      return b"\n" in f.read()   # one image's line can be long (random weights: many people)
  except FileNotFoundError:
    return False


def timed_run(command: list[str], out: pathlib.Path) -> tuple[float | None, float, str]:
  """(seconds to the first line of out/predictions.jsonl or None, seconds to the end, stderr)
  of `command`, started now."""
  start = time.perf_counter()
  with tempfile.TemporaryFile("w+") as stderr:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    first = None
    while process.poll() is None:
      if first is None and first_line_written(out / "predictions.jsonl"):
        first = time.perf_counter() - start
      time.sleep(POLL_S)
    total = time.perf_counter() - start
    stderr.seek(0)
    log = stderr.read()
  if process.returncode:
    raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{log[-3000:]}")
  if first is None and first_line_written(out / "predictions.jsonl"):
    first = total   # written in the last poll interval
  return first, total, log


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", default="H-4")
  parser.add_argument("--checkpoint", help="default: the bundled H-4 weights, converted")
  parser.add_argument("--images", type=int, default=8)
  parser.add_argument("--runs", type=int, default=2)
  args = parser.parse_args()

  from ehrnet_jax.timing import machine_description  # pylint: disable=import-outside-toplevel
  images = benchmark_images(args.images)
  with tempfile.TemporaryDirectory() as temporary:
    temporary = pathlib.Path(temporary)
    checkpoint = args.checkpoint or converted_reference(temporary)
    cache = temporary / "jax_cache"
    rows = []
    for run in range(1, args.runs + 1):
      out = temporary / f"out{run}"
      command = [sys.executable, "-m", "ehrnet_jax", "predict", "--variant", args.variant,
                 "--checkpoint", str(checkpoint), "--out", str(out),
                 "--compilation-cache", str(cache), *map(str, images)]
      load = os.getloadavg()[0]
      first, total, _ = timed_run(command, out)
      rows.append((run, first, total, len(list(cache.iterdir())) if cache.exists() else 0, load))

  print(f"`ehrnet predict --variant {args.variant}` on {len(images)} images "
        f"({images[0].parent}), fresh processes, cache empty before run 1")
  print(f"machine: {machine_description()}\n")
  print("| run | first result (s) | total (s) | cache entries after | load before |")
  print("|---|---|---|---|---|")
  for run, first, total, entries, load in rows:
    shown = f"{first:.1f}" if first is not None else "-"
    print(f"| {run} | {shown} | {total:.1f} | {entries} | {load:.2f} |")


if __name__ == "__main__":
  main()
