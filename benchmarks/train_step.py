"""Training-step throughput: forward + backward + Adam update, as the trainer runs it.

The step is the trainer's own (one SPMD program over all devices, targets built on device from
the host batch format), on synthetic batches of random images and keypoints; input pipeline time is
not included, as in the reference's measurement. With --prebuilt-targets the heatmaps and joint
lists are built once outside the timed step (the reference builds them in its data loader).
Prints one JSON line: median and mean wall seconds per step after the warm-up steps, the median
and minimum process CPU seconds per step (all threads; robust on a shared machine), the load
average while timing, images per second, compile seconds and the process's peak resident memory.

  python benchmarks/train_step.py --variant H-4 --batch 8 --size 384 --freeze-backbone
  python benchmarks/train_step.py --variant H0 --batch 2 --size 512
  python benchmarks/train_step.py --variant H-4 --batch 8 --size 384 --form plain  # before
  python benchmarks/train_step.py --variant H-4 --batch 2 --size 256 --steps 2 --profile /tmp/prof

Run each setting in its own process (the peak memory is the process's).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import statistics
import sys
import time

import jax
import numpy as np

from ehrnet_jax import losses
from ehrnet_jax.config import TrainConfig
from ehrnet_jax.data import targets
from ehrnet_jax.models import EfficientHRNet, ExecutionForm
from ehrnet_jax.models.execution import NAMES as FORMS
from ehrnet_jax.scaling import ScalingSpec
from ehrnet_jax.timing import machine_description
from ehrnet_jax.training import mesh as mesh_lib, optim, step as step_lib
from ehrnet_jax.training.state import create_train_state

PEOPLE, JOINTS = 30, 17


def synthetic_batch(rng: np.random.Generator, batch: int, size: int) -> dict:
  """A flat host batch (batch, ...) in the input pipeline's format, 5 people per image."""
  shape = (batch,)
  keypoints = {}
  for name, scale in (("keypoints_4", 4), ("keypoints_2", 2)):
    xy = rng.integers(0, size // scale, (*shape, PEOPLE, JOINTS, 2))
    valid = np.zeros((*shape, PEOPLE, JOINTS, 1), np.int64)
    valid[:, :5] = 1
    keypoints[name] = np.concatenate([xy, valid], axis=-1).astype(np.int32)
  return {"image": rng.integers(0, 256, (*shape, size, size, 3), dtype=np.uint8),
          "mask_4": np.ones((*shape, size // 4, size // 4), np.uint8),
          "mask_2": np.ones((*shape, size // 2, size // 2), np.uint8), **keypoints}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", default="H-4")
  parser.add_argument("--batch", type=int, default=8, help="images per device")
  parser.add_argument("--size", type=int, default=0, help="input size; 0 = the variant's")
  parser.add_argument("--freeze-backbone", action="store_true")
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--prebuilt-targets", action="store_true",
                      help="time the step without building the targets on device")
  parser.add_argument("--form", default="auto", choices=("auto",) + FORMS,
                      help="execution form (auto: the trainer's on this backend); for "
                           "comparison, plain: XLA's primitives and autodiff everywhere")
  parser.add_argument("--profile", metavar="DIR",
                      help="after timing, trace 2 more steps with jax.profiler into DIR and "
                           "print the ops that took longest (summed over both steps) and how many "
                           "ran at once")
  return measure(parser.parse_args(argv))


def measure(args) -> int:
  spec = ScalingSpec.from_name(args.variant)
  size = args.size or spec.input_size
  form = (ExecutionForm.for_backend(jax.default_backend(), train=True) if args.form == "auto"
          else ExecutionForm.named(args.form))
  model = EfficientHRNet(spec, form)
  tx = optim.make_optimizer(TrainConfig(freeze_backbone=args.freeze_backbone), 1000)
  mesh = mesh_lib.data_mesh()
  p_step = step_lib.spmd_train_step(step_lib.make_train_step(
      model, tx, losses.pose_loss, args.freeze_backbone, axis_name=mesh_lib.AXIS), mesh,
      prepare=None if args.prebuilt_targets else targets.prepare_batch)
  state = mesh_lib.put_replicated(create_train_state(model, tx, jax.random.key(0)), mesh)
  devices = jax.device_count()
  batches = [synthetic_batch(np.random.default_rng(i), devices * args.batch, size)
             for i in range(2)]
  if args.prebuilt_targets:
    batches = [jax.device_get(jax.jit(targets.prepare_batch)(b)) for b in batches]
  batches = [mesh_lib.global_batch(b, mesh) for b in batches]

  start = time.perf_counter()
  p_step = step_lib.compile_step(p_step, state, batches[0])
  state, metrics = p_step(state, batches[0])
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times, cpu_times, loads = [], [], []
  for i in range(args.warmup + args.steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = p_step(state, batches[i % 2])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
    loads.append(os.getloadavg()[0])
  times, cpu_times = times[args.warmup:], cpu_times[args.warmup:]
  median = statistics.median(times)
  images = args.batch * devices
  print(json.dumps({
      "variant": spec.name, "input_size": size, "images_per_step": images,
      "freeze_backbone": args.freeze_backbone, "prebuilt_targets": args.prebuilt_targets,
      "form": args.form,
      "median_s": round(median, 4),
      "mean_s": round(statistics.fmean(times), 4),
      "median_cpu_s": round(statistics.median(cpu_times), 4),
      "min_cpu_s": round(min(cpu_times), 4),
      "load_avg": [round(min(loads), 2), round(max(loads), 2)],
      "images_per_second": round(images / median, 2),
      "compile_and_first_step_s": round(compile_s, 1), "steps": args.steps,
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      "loss": float(mesh_lib.host_value(metrics["loss"])), "devices": devices,
      "machine": machine_description()}))
  if args.profile:
    print_profile(p_step, state, batches[0], args.profile)
  return 0


def print_profile(p_step, state, batch, directory: str, top: int = 25) -> None:
  """Traces 2 steps and prints the top ops (time per step, share of all op time) with their
  shapes and source (`op_name`) from the compiled HLO, which is saved as DIR/step_hlo.txt, then
  the threads' occupancy (`print_occupancy`)."""
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    for _ in range(2):
      state, metrics = p_step(state, batch)
      jax.block_until_ready(metrics)
  hlo = p_step.as_text()  # p_step is the compiled step
  with open(f"{directory}/step_hlo.txt", "w") as f:
    f.write(hlo)
  lines = {}
  for line in hlo.splitlines():
    match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
    if match:
      source = re.search(r'op_name="([^"]*)"', line)
      lines[match.group(1)] = (match.group(2), source.group(1) if source else "")
  trace = sorted(glob.glob(f"{directory}/plugins/profile/*/perfetto_trace.json.gz"))[-1]
  events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  op_events = [e for e in events if e.get("ph") == "X" and e["name"] in lines]
  totals = collections.Counter()
  for event in op_events:
    totals[event["name"]] += event.get("dur", 0) / 2e3  # ms per step
  total = sum(totals.values())
  print(f"op time per step (both threads, wall-clock per op): {total:.0f} ms")
  for name, ms in totals.most_common(top):
    print(f"{ms:8.1f} ms {100 * ms / total:5.1f}%  {describe_op(name, lines)}")
  print_occupancy(op_events, lines)


def print_occupancy(op_events: list, lines: dict, top: int = 12) -> None:
  """How many ops run at once over the 2 traced steps, and the ops that most often run alone:
  where a thread may idle (an op that runs alone and is single-threaded inside leaves the other
  core idle; ops parallel inside, e.g. large products, keep it busy without trace events)."""
  edges = sorted([(e["ts"], 1, e["name"]) for e in op_events]
                 + [(e["ts"] + e.get("dur", 0), -1, e["name"]) for e in op_events])
  running, last = collections.Counter(), edges[0][0]
  at_once, alone = collections.Counter(), collections.Counter()
  for time_us, change, name in edges:
    names, ms = +running, (time_us - last) / 2e3  # ms per step
    at_once[min(len(names), 2)] += ms
    if len(names) == 1:
      alone[next(iter(names))] += ms
    running[name] += change
    last = time_us
  print("ops running at once, ms per step: " + ", ".join(
      f"{'2+' if count == 2 else count}: {ms:.0f}" for count, ms in sorted(at_once.items())))
  print("ops running alone the longest:")
  for name, ms in alone.most_common(top):
    print(f"{ms:8.1f} ms  {describe_op(name, lines)}")


def describe_op(name: str, lines: dict) -> str:
  """An HLO instruction's name, shape and the tail of its source (`op_name`)."""
  shape, source = lines[name]
  return f"{name} {shape} {source[-90:]}"


if __name__ == "__main__":
  sys.exit(main())
