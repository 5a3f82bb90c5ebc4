"""Frames per second of `ehrnet track`'s pipelined stream beside its ceiling and a plain loop.

Usage:
  python benchmarks/stream.py --variant H-4 --checkpoint checkpoints/H-4 --synthesize 640x360
  python benchmarks/stream.py --backend onnx --checkpoint h4_384x640.onnx --clip street.mp4
  python benchmarks/stream.py --variant H0 --checkpoint checkpoints/H0 --synthesize 1280x720 \\
      --frames 90 --no-flip

On the same frames, in one run, one after another:
  network alone   the estimator's network time only (`Poses.seconds["network"]`) on frames read
                  into memory first: the ceiling of any stream;
  estimator alone network, decoding and grouping on the frames in memory;
  sequential      read -> network -> decode -> group -> track -> draw -> write, one frame after
                  the other in one thread (`Stream.run(pipelined=False)`);
  pipelined       the same stages overlapping (`Stream.run()`, what `ehrnet track` runs).
Every rate is beside the people found per frame: grouping and drawing take longer with more
people, and random weights find hundreds of spurious ones (measure with trained weights). The
network is run once on the first frame before anything is timed (JAX compiles then). Prints a
Markdown table, the machine and each stage's busy time in the pipelined run (their sum over the
wall-clock time says how much the stages overlap).

--clip reads a video; --synthesize WxH writes --frames frames of a slow pan across the bundled
sample photos (a new photo every 30 frames) to a temporary MPEG-4 clip first. Without JAX (an
onnxruntime-only install, e.g. on a Jetson) run it with --backend onnx.
"""

import argparse
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import threading
import time

import cv2
import numpy as np

from ehrnet_jax import samples, tracking
from ehrnet_jax.commands import _runtime
from ehrnet_jax.inference import stream, track_outputs

PHOTO_FRAMES = 30   # frames per photo of a synthesized clip


def synthesize(path: pathlib.Path, size_wh: tuple[int, int], count: int) -> pathlib.Path:
  """Writes `count` frames of size_wh panning slowly across the sample photos (MPEG-4, 30 fps)."""
  w, h = size_wh
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, size_wh)
  photos = samples.images()
  for index in range(count):
    photo = cv2.imread(str(photos[(index // PHOTO_FRAMES) % len(photos)]))
    scale = 1.1 * max(w / photo.shape[1], h / photo.shape[0])   # 10% to pan over
    photo = cv2.resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)))
    step = (index % PHOTO_FRAMES) / PHOTO_FRAMES
    x, y = round(step * (photo.shape[1] - w)), round(step * (photo.shape[0] - h))
    writer.write(np.ascontiguousarray(photo[y:y + h, x:x + w]))
  writer.release()
  return path


def read_all(clip: pathlib.Path) -> list[np.ndarray]:
  """Every frame of a clip, RGB."""
  source = stream.open_source(str(clip))
  frames = [frame.image for frame in stream.read_frames(source, stream.StreamStats(),
                                                        threading.Event())]
  source.release()
  return frames


def alone(estimator, frames) -> dict[str, float]:
  """Frames/s of the network alone and of the whole estimator, people per frame."""
  network_s, total_s, people = 0.0, 0.0, 0
  for frame in frames:
    start = time.perf_counter()
    (poses,) = estimator([frame])
    total_s += time.perf_counter() - start
    network_s += poses.seconds["network"]
    people += len(poses.scores)
  return {"network": len(frames) / network_s, "estimator": len(frames) / total_s,
          "people": people / len(frames)}


def streamed(args, estimator, clip: pathlib.Path, pipelined: bool, out: pathlib.Path):
  """Frames/s of a whole stream into `out`, people per frame, and the stream's statistics."""
  source = stream.open_source(str(clip))
  tracker = tracking.Tracker(estimator.keypoint_set,
                             tracking.TrackerConfig(smoothing=tracking.OneEuroConfig()))
  outputs = track_outputs.TrackOutputs(out, source.fps, args.threshold, overwrite=True)
  flow = stream.Stream(source, estimator, tracker, min_score=args.min_score,
                       network_threads=args.network_threads)
  people = []

  def sink(tracked):
    outputs.write(tracked, estimator.keypoint_set)
    people.append(len(tracked.track_ids))

  start = time.perf_counter()
  stats = flow.run(sink, pipelined)
  seconds = time.perf_counter() - start
  outputs.close(stats, source.name)
  source.release()
  return {"fps": stats.processed / seconds, "people": statistics.mean(people)}, stats


def machine(backend: str, estimator) -> str:
  """The processor, its cores and what runs the network."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo
                 if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  if backend == "onnx":
    runner = f"onnxruntime, {estimator.decoder.backend.session.get_providers()[0]}"
  else:
    import jax  # pylint: disable=import-outside-toplevel
    runner = f"JAX {jax.__version__} on {jax.devices()[0].device_kind}"
  load = ", load %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
  return f"{cpu}, {os.cpu_count()} cores{load}; {runner}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--checkpoint", required=True, help="checkpoint directory or .onnx model")
  parser.add_argument("--variant", help="the checkpoint's variant (required with --backend jax)")
  clip = parser.add_mutually_exclusive_group(required=True)
  clip.add_argument("--clip", type=pathlib.Path, help="a video file")
  clip.add_argument("--synthesize", metavar="WxH", help="write a clip of this size first")
  parser.add_argument("--frames", type=int, default=60, help="frames to synthesize (default 60)")
  parser.add_argument("--min-score", type=float, default=0.0)
  parser.add_argument("--threshold", type=float, default=0.1)
  parser.add_argument("--network-threads", type=int, default=2,
                      help="estimator calls at once in the pipelined stream (default 2, as "
                           "`ehrnet track`)")
  _runtime.add_arguments(parser)
  _runtime.input_size_argument(parser)
  args = parser.parse_args()
  _runtime.check_model(args, args.checkpoint)
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    if args.synthesize:
      size_wh = tuple(int(v) for v in args.synthesize.lower().split("x"))
      args.clip = synthesize(scratch / "clip.mp4", size_wh, args.frames)
    frames = read_all(args.clip)
    estimator = _runtime.make_estimator(args, args.checkpoint, fit=True)
    estimator([frames[0]])   # compiles (JAX), warms up (onnxruntime)
    rates = alone(estimator, frames)
    sequential, _ = streamed(args, estimator, args.clip, False, scratch / "sequential")
    pipelined, stats = streamed(args, estimator, args.clip, True, scratch / "pipelined")
  h, w = frames[0].shape[:2]
  clip_name = "synthesized" if args.synthesize else args.clip.name
  print(f"\n{len(frames)} frames of {w}x{h} ({clip_name}), {args.backend}, {args.checkpoint}, "
        f"flip {'off' if args.no_flip else 'on'}; {machine(args.backend, estimator)}\n")
  print("| run | frames/s | people/frame | x network alone | x sequential |")
  print("|---|---|---|---|---|")
  rows = [("network alone (ceiling)", rates["network"], rates["people"]),
          ("estimator alone (network, decoding, grouping)", rates["estimator"], rates["people"]),
          ("sequential loop (read ... write)", sequential["fps"], sequential["people"]),
          ("pipelined stream (`ehrnet track`)", pipelined["fps"], pipelined["people"])]
  for name, fps, people in rows:
    print(f"| {name} | {fps:.2f} | {people:.1f} | {fps / rates['network']:.2f} | "
          f"{fps / sequential['fps']:.2f} |")
  busy = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in stats.stage_seconds.items())
  print(f"\npipelined stages busy ({args.network_threads} network threads): {busy}; wall "
        f"{stats.processed / pipelined['fps']:.2f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
