"""Images/second of the training input pipeline, per stage and end to end.

  python benchmarks/data_pipeline.py --coco-dir ../shared/data/coco-mini --sizes 384 512

For each input size it measures, after a warm-up:
  stages        CPU milliseconds per image of each host step, one image at a time (decode,
                ignore-mask RLE, image warp, mask warps, all of augment) and of the two ways to
                build targets;
  pipeline      the tf.data pipeline without targets (what the trainer receives), with
                `--threads` tf.data threads (1 = the per-core rate);
  +jax targets  the same followed by `targets.prepare_batch` jitted on the local JAX device
                (here the same CPU: it competes with the pipeline);
  +tf targets   the rejected alternative: heatmaps and joint lists built in tf.data with NumPy
                (the reference's patch-max generator), shipped as float32 tensors.
Prints a JSON line per measurement: images per wall second and per CPU second of this process
(the per-core rate, robust to other processes sharing the CPU). Figures and the decision they
support: docs/benchmarks/input_pipeline.md.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import cv2
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ehrnet_jax import images as images_lib
from ehrnet_jax.data import annotations, augment, coco_tfds, pipeline, targets

SIGMA = targets.SIGMA


def numpy_targets(positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Host-side targets as the reference builds them: 15x15 Gaussian patches, max over people.

  positions (P, J, 3) int32 -> heatmaps (size, size, J) float32 and joints (P, J, 2) int32.
  """
  radius = int(3 * SIGMA + 1)
  offsets = np.arange(-radius, radius + 1)
  patch = np.exp(-(offsets[:, None]**2 + offsets[None, :]**2) / (2 * SIGMA**2)).astype(np.float32)
  heatmaps = np.zeros((size + 2 * radius, size + 2 * radius, positions.shape[1]), np.float32)
  joints = np.zeros(positions.shape[:2] + (2,), np.int32)
  for p, j in zip(*np.nonzero(positions[..., 2])):
    x, y = positions[p, j, :2]
    window = heatmaps[y:y + 2 * radius + 1, x:x + 2 * radius + 1, j]
    np.maximum(window, patch, out=window)
  for p, person in enumerate(positions):
    valid = np.nonzero(person[:, 2])[0]
    joints[p, :len(valid)] = np.stack(
        [valid * size * size + person[valid, 1] * size + person[valid, 0],
         np.ones_like(valid)], -1)
  return heatmaps[radius:-radius, radius:-radius], joints


def with_numpy_targets(batch: dict) -> dict:
  """tf.data map adding heatmaps_4/heatmaps_2/joints_4 computed by `numpy_targets`."""
  def fn(kp4, kp2, size_4, size_2):
    flat4, flat2 = kp4.reshape((-1,) + kp4.shape[-3:]), kp2.reshape((-1,) + kp2.shape[-3:])
    h4, j4 = zip(*[numpy_targets(k, size_4) for k in flat4])
    h2, _ = zip(*[numpy_targets(k, size_2) for k in flat2])
    lead = kp4.shape[:-3]
    return (np.stack(h4).reshape(lead + h4[0].shape), np.stack(h2).reshape(lead + h2[0].shape),
            np.stack(j4).reshape(lead + j4[0].shape))
  size_4, size_2 = batch["mask_4"].shape[-1], batch["mask_2"].shape[-1]
  h4, h2, j4 = tf.numpy_function(fn, [batch["keypoints_4"], batch["keypoints_2"], size_4, size_2],
                                 [tf.float32, tf.float32, tf.int32], stateful=False)
  return {**batch, "heatmaps_4": h4, "heatmaps_2": h2, "joints_4": j4}


def per_image_ms(fn, items, repeats=3) -> float:
  """CPU milliseconds (this process) per call of fn over items."""
  fn(items[0])
  start = time.process_time()
  for _ in range(repeats):
    for item in items:
      fn(item)
  return 1e3 * (time.process_time() - start) / (repeats * len(items))


def stage_times(data_dir, size: int) -> dict[str, float]:
  """Single-thread ms per image of each host step on every training image."""
  builder = pipeline.load_builder(data_dir)
  skip = {"image": tfds.decode.SkipDecoding()}
  records = list(tfds.as_numpy(builder.as_dataset("train", decoders=skip)))
  images = [images_lib.decode_image(r["image"]) for r in records]
  masks = [annotations.decode_mask(r["ignore_mask_rle"], *i.shape[:2])
           for r, i in zip(records, images)]
  rng = np.random.default_rng(0)
  params = [augment.sample_params(rng, *i.shape[:2]) for i in images]
  flip_index = builder.builder_config.keypoint_set.flip_index
  index = list(range(len(records)))

  def matrix(i, s):
    return augment.affine_matrix(params[i].center, params[i].scale, params[i].rotation, (s, s))

  def augmented(i):
    kp = records[i]["people"]["keypoints"][records[i]["people"]["num_keypoints"] > 0]
    return augment.augment(images[i], masks[i], kp, params[i], size, flip_index, 30)

  outs = [augmented(i) for i in index]
  jax_fn = jax.jit(targets.prepare_batch)
  one = {k: v[None] for k, v in outs[0].items()}
  jax.block_until_ready(jax_fn(one))
  times = {
      "decode_jpeg": per_image_ms(lambda i: images_lib.decode_image(records[i]["image"]), index),
      "ignore_mask_rle": per_image_ms(
          lambda i: annotations.decode_mask(records[i]["ignore_mask_rle"], *masks[i].shape),
          index),
      "warp_image": per_image_ms(lambda i: augment.warp(images[i], matrix(i, size), (size, size)),
                                 index),
      "warp_masks": per_image_ms(lambda i: [augment.warp_valid_mask(masks[i], matrix(i, s), s)
                                            for s in (size // 4, size // 2)], index),
      "augment_total": per_image_ms(augmented, index),
      "targets_numpy": per_image_ms(
          lambda i: (numpy_targets(outs[i]["keypoints_4"], size // 4),
                     numpy_targets(outs[i]["keypoints_2"], size // 2)), index),
      "targets_jax_cpu": per_image_ms(
          lambda i: jax.block_until_ready(jax_fn({k: v[None] for k, v in outs[i].items()})),
          index),
  }
  return {k: round(v, 3) for k, v in times.items()}


def throughput(data_dir, size, threads, batch, batches, mode) -> tuple[float, float]:
  """Images per wall second and per CPU second (this process, all threads) of the pipeline
  delivered to Python (`mode`: none, jax or tf targets). The CPU-second rate is the per-core
  rate, and it holds up when other processes share the machine."""
  ds = pipeline.train_dataset(data_dir, input_size=size, per_device_batch=batch, num_devices=1,
                              seed=0, process_index=0, process_count=1)
  if mode == "tf":
    ds = ds.map(with_numpy_targets, num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  iterator = iter(tfds.as_numpy(ds.with_options(options)))
  step = jax.jit(targets.prepare_batch) if mode == "jax" else None
  for _ in range(3):
    jax.block_until_ready(step(next(iterator))) if step else next(iterator)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(batches):
    jax.block_until_ready(step(next(iterator))) if step else next(iterator)
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  del iterator
  return batches * batch / wall, batches * batch / cpu


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--coco-dir", default=str(pathlib.Path(__file__).resolve().parents[2] /
                                                "shared" / "data" / "coco-mini"))
  parser.add_argument("--data-dir", help="built TFDS dir (default: build into a temp dir)")
  parser.add_argument("--sizes", type=int, nargs="+", default=[384, 512])
  parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--batches", type=int, default=30)
  parser.add_argument("--modes", nargs="+", default=["none", "jax", "tf"])
  args = parser.parse_args(argv)
  cv2.setNumThreads(1)
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="ehrnet_bench_")
  coco_tfds.build(args.coco_dir, data_dir)
  print(json.dumps({"cpus": os.cpu_count(), "jax_device": str(jax.devices()[0]),
                    "load_average": os.getloadavg()}), flush=True)
  for size in args.sizes:
    print(json.dumps({"size": size, "stage_ms_per_image": stage_times(data_dir, size)}),
          flush=True)
    for threads in args.threads:
      for mode in args.modes:
        rate, per_cpu_s = throughput(data_dir, size, threads, args.batch, args.batches, mode)
        print(json.dumps({"size": size, "threads": threads, "targets": mode,
                          "images_per_s": round(rate, 1),
                          "images_per_cpu_s": round(per_cpu_s, 1),
                          "load_average": os.getloadavg()[0]}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
