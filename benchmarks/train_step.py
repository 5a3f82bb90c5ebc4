"""Training-step throughput: forward + backward + Adam update, as the trainer runs it.

The step is the trainer's own (pmapped over the local devices, targets built on device from the
host batch format), on synthetic batches of random images and keypoints; input pipeline time is
not included, as in the reference's measurement. With --prebuilt-targets the heatmaps and joint
lists are built once outside the timed step (the reference builds them in its data loader). Prints one JSON line: median and mean seconds
per step after the warm-up steps, images per second, compile seconds and the process's peak
resident memory.

  python benchmarks/train_step.py --variant H-4 --batch 8 --size 384 --freeze-backbone
  python benchmarks/train_step.py --variant H0 --batch 2 --size 512

Run each setting in its own process (the peak memory is the process's).
"""

import argparse
import json
import resource
import statistics
import sys
import time

import jax
import numpy as np

from ehrnet_jax import losses
from ehrnet_jax.benchmark import machine_description
from ehrnet_jax.config import TrainConfig
from ehrnet_jax.data import targets
from ehrnet_jax.models import EfficientHRNet
from ehrnet_jax.scaling import ScalingSpec
from ehrnet_jax.training import optim, step as step_lib
from ehrnet_jax.training.state import create_train_state

PEOPLE, JOINTS = 30, 17


def synthetic_batch(rng: np.random.Generator, devices: int, batch: int, size: int) -> dict:
  """A host batch (devices, batch, ...) in the input pipeline's format, 5 people per image."""
  shape = (devices, batch)
  keypoints = {}
  for name, scale in (("keypoints_4", 4), ("keypoints_2", 2)):
    xy = rng.integers(0, size // scale, (*shape, PEOPLE, JOINTS, 2))
    valid = np.zeros((*shape, PEOPLE, JOINTS, 1), np.int64)
    valid[:, :, :5] = 1
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
  args = parser.parse_args(argv)

  spec = ScalingSpec.from_name(args.variant)
  size = args.size or spec.input_size
  model = EfficientHRNet(spec)
  tx = optim.make_optimizer(TrainConfig(freeze_backbone=args.freeze_backbone), 1000)
  p_step = step_lib.pmap_train_step(step_lib.make_train_step(
      model, tx, losses.LossWeights(), args.freeze_backbone, axis_name=step_lib.AXIS),
      prepare=None if args.prebuilt_targets else targets.prepare_batch)
  state = step_lib.replicate(create_train_state(model, tx, size, jax.random.key(0)))
  devices = jax.local_device_count()
  batches = [synthetic_batch(np.random.default_rng(i), devices, args.batch, size)
             for i in range(2)]
  if args.prebuilt_targets:
    batches = [jax.device_get(jax.pmap(targets.prepare_batch)(b)) for b in batches]

  start = time.perf_counter()
  state, metrics = p_step(state, batches[0], jax.random.key(0))
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    state, metrics = p_step(state, batches[i % 2], jax.random.key(i + 1))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  times = times[args.warmup:]
  median = statistics.median(times)
  images = args.batch * devices
  print(json.dumps({
      "variant": spec.name, "input_size": size, "images_per_step": images,
      "freeze_backbone": args.freeze_backbone, "prebuilt_targets": args.prebuilt_targets,
      "median_s": round(median, 4),
      "mean_s": round(statistics.fmean(times), 4), "images_per_second": round(images / median, 2),
      "compile_and_first_step_s": round(compile_s, 1), "steps": args.steps,
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      "loss": float(metrics["loss"][0]), "devices": devices, "machine": machine_description()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
