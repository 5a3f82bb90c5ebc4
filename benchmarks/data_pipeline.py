"""Images/second of the COCO training input: the Grain pipeline against the tf.data one it
replaced, side by side in one run, and the host cores an accelerator host needs.

  git worktree add /tmp/old-pipeline 9edee2a       # the tf.data pipeline (before issue 22)
  python benchmarks/data_pipeline.py --old-tree /tmp/old-pipeline \\
      --coco-dir ../shared/data/coco-mini --sizes 384 512
  git worktree remove /tmp/old-pipeline

The driver builds the images once for each pipeline (old: TFRecord, version 1.1.0; new:
array_record, 2.0.0; one data dir), then runs every measurement in its own subprocess, this file
with `--measure`, the old package or this one on its PYTHONPATH, alternating old and new
settings for `--rounds` rounds so that both see the same machine load. A measurement: the
pipeline's host batches of `--batch` images (decode, ignore mask, random affine + flip, the
integer target positions; targets are built on device, not here), 3 batches of warm-up, then
`--batches` batches timed: images per wall second, and images per CPU-second of the process and
its children (Grain's worker processes; the per-core rate, which holds up when other processes
share the machine), with the 1-minute load average. Settings: old = tf.data with 1 or 2 threads;
new = Grain with 0 workers (threads of the process), 1 or 2 worker processes.

Last, the sizing table: host cores = chips x images/s per chip / (new pipeline's images per
CPU-second), the chip's training rate derived from the network's FLOPs (XLA's cost analysis of
the forward pass at batch 1, x3 for forward + backward) at each assumed `--utilisation` of the
vendor's peak bf16 FLOP/s. Figures and their reading: docs/benchmarks/input_pipeline.md.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {384: "H-4", 512: "H0"}
# Peak dense bf16 FLOP/s per chip (vendor data sheets) and chips per host.
ACCELERATORS = {
    "TPU v4 host (4 chips)": (275e12, 4),
    "TPU v5e host (8 chips)": (197e12, 8),
    "8x H100 SXM node": (989e12, 8),
}


def cpu_seconds() -> float:
  """CPU seconds of this process and of its live descendants (from /proc: Linux)."""
  tick = os.sysconf("SC_CLK_TCK")
  parents, times = {}, {}
  for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:  # Gone meanwhile.
      continue
    pid = int(stat.parent.name)
    parents[pid], times[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
  total, todo = 0.0, [os.getpid()]
  while todo:
    pid = todo.pop()
    total += times.get(pid, 0.0)
    todo += [child for child, parent in parents.items() if parent == pid]
  return total


def old_batches(data_dir: str, size: int, batch: int, threads: int):
  """The tf.data pipeline of the old tree (on PYTHONPATH): NumPy host batches."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  import cv2  # pylint: disable=import-outside-toplevel
  cv2.setNumThreads(1)
  ds = pipeline.train_dataset(data_dir, input_size=size, per_device_batch=batch, num_devices=1,
                              seed=0, process_index=0, process_count=1)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return iter(tfds.as_numpy(ds.with_options(options)))


def new_batches(data_dir: str, size: int, batch: int, workers: int):
  """The Grain pipeline of this tree: NumPy host batches."""
  # pylint: disable=import-outside-toplevel
  from ehrnet_jax import keypoints
  from ehrnet_jax.data import coco_tfds, pipeline
  # pylint: enable=import-outside-toplevel
  source = pipeline.open_split(coco_tfds.load_builder(data_dir), "train")
  stream = pipeline.Stream(seed=0, global_batch=batch, num_records=len(source))
  augmentation = pipeline.Augmentation(size, keypoints.COCO.flip_index)
  return pipeline.train_iterator(source, stream, augmentation, workers=workers)


def measure(args) -> dict:
  """One measurement in this process (`--measure`)."""
  make = old_batches if args.measure == "old" else new_batches
  iterator = make(args.data_dir, args.size, args.batch, args.parallel)
  for _ in range(3):
    next(iterator)
  start, cpu_start = time.perf_counter(), cpu_seconds()
  for _ in range(args.batches):
    next(iterator)
  wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
  images = args.batches * args.batch
  return {"images_per_s": round(images / wall, 1), "images_per_cpu_s": round(images / cpu, 1),
          "load_1min": round(os.getloadavg()[0], 2)}


def run_child(tree: pathlib.Path, argv: list[str]) -> dict:
  env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu",
         "TF_CPP_MIN_LOG_LEVEL": "2"}
  result = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True,
                          text=True, check=False, timeout=1800)  # a hang guard
  if result.returncode:
    raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def chip_images_per_second(size: int, utilisation: float) -> dict[str, float]:
  """Training images/s per chip of `VARIANTS[size]`: peak x utilisation / (3 x forward FLOPs)."""
  # pylint: disable=import-outside-toplevel
  from ehrnet_jax import counting
  from ehrnet_jax.scaling import ScalingSpec
  # pylint: enable=import-outside-toplevel
  flops = counting.model_counts(ScalingSpec.from_name(VARIANTS[size]), (size, size))["flops"]
  return {"forward_gflops": flops / 1e9,
          **{name: peak * utilisation / (3 * flops) for name, (peak, _) in
             ACCELERATORS.items()}}


def drive(args) -> None:
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="ehrnet_bench_")
  old_tree = pathlib.Path(args.old_tree).resolve()
  for tree in (old_tree, REPO):
    run_child(tree, ["--build", "--coco-dir", args.coco_dir, "--data-dir", data_dir])
  settings = [("old", p) for p in args.old_threads] + [("new", p) for p in args.new_workers]
  # Interleaved: old 1, new 1, old 2, new 2, ... then the rest.
  olds, news = [s for s in settings if s[0] == "old"], [s for s in settings if s[0] == "new"]
  order = [s for pair in zip(olds, news) for s in pair] + olds[len(news):] + news[len(olds):]
  print(json.dumps({"cpus": os.cpu_count(), "uptime": _uptime(), "batch": args.batch,
                    "batches": args.batches}), flush=True)
  rows = []
  for round_index in range(args.rounds):
    for size in args.sizes:
      for which, parallel in order:
        tree = old_tree if which == "old" else REPO
        result = run_child(tree, [
            "--measure", which, "--parallel", str(parallel), "--size", str(size),
            "--data-dir", data_dir, "--batch", str(args.batch), "--batches", str(args.batches)])
        row = {"round": round_index, "size": size, "pipeline": which,
               ("threads" if which == "old" else "workers"): parallel, **result}
        rows.append(row)
        print(json.dumps(row), flush=True)
  print(json.dumps({"uptime": _uptime()}), flush=True)
  summarise(rows, args)


def _uptime() -> str:
  return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def summarise(rows: list[dict], args) -> None:
  """Markdown: medians over the rounds; then the sizing table."""
  print("\n| input | pipeline | parallelism | images/s (wall) | images / CPU-s | load (1 min) |")
  print("|---|---|---|---|---|---|")
  groups = {}
  for row in rows:
    key = (row["size"], row["pipeline"], row.get("threads", row.get("workers")))
    groups.setdefault(key, []).append(row)
  per_core = {}
  for (size, which, parallel), group in sorted(groups.items()):
    wall = statistics.median(r["images_per_s"] for r in group)
    cpu = statistics.median(r["images_per_cpu_s"] for r in group)
    loads = [r["load_1min"] for r in group]
    label = f"{parallel} tf.data threads" if which == "old" else (
        f"{parallel} workers" if parallel else "0 workers (2 threads)")
    print(f"| {size} | {'tf.data' if which == 'old' else 'Grain'} | {label} | {wall:.1f} | "
          f"{cpu:.1f} | {min(loads):.1f}-{max(loads):.1f} |")
    if which == "new" and parallel == max(args.new_workers):
      per_core[size] = cpu
  for utilisation in args.utilisation:
    print(f"\nSizing at {utilisation:.0%} of peak bf16 (per-core rate: Grain with "
          f"{max(args.new_workers)} workers, images per CPU-second):")
    print("| model @ input | forward GFLOPs | per-core images/s | " +
          " | ".join(f"{name}: img/s per chip, cores" for name in ACCELERATORS) + " |")
    print("|---|---|---|" + "---|" * len(ACCELERATORS))
    for size in args.sizes:
      chip = chip_images_per_second(size, utilisation)
      cells = [f"{chip[name]:.0f}, {chips * chip[name] / per_core[size]:.1f}"
               for name, (_, chips) in ACCELERATORS.items()]
      print(f"| {VARIANTS[size]} @ {size} | {chip['forward_gflops']:.2f} | "
            f"{per_core[size]:.0f} | " + " | ".join(cells) + " |")


def build(args) -> None:
  from ehrnet_jax.data import coco_tfds  # pylint: disable=import-outside-toplevel
  coco_tfds.build(args.coco_dir, args.data_dir)
  print(json.dumps({"built": args.data_dir}))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--old-tree", help="checkout of the tf.data pipeline (driver)")
  parser.add_argument("--coco-dir", default=str(REPO.parent / "shared" / "data" / "coco-mini"))
  parser.add_argument("--data-dir", help="data dir for both builds (default: a temp dir)")
  parser.add_argument("--sizes", type=int, nargs="+", default=[384, 512])
  parser.add_argument("--old-threads", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--new-workers", type=int, nargs="+", default=[1, 2, 0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--utilisation", type=float, nargs="+", default=[0.1, 0.25],
                      help="assumed fractions of the chips' peak bf16 FLOP/s in training")
  parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--measure", choices=("old", "new"), help=argparse.SUPPRESS)
  parser.add_argument("--parallel", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.build:
    build(args)
  elif args.measure:
    print(json.dumps(measure(args)), flush=True)
  elif args.old_tree:
    drive(args)
  else:
    parser.error("--old-tree is required (see the usage above)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
