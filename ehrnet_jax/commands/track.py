"""`ehrnet track`: people tracked through a video file, a camera or a stream, frames pipelined."""

import argparse
import contextlib
import os
import signal
import sys

from ehrnet_jax.commands import _runtime

EXAMPLE = """example:
  ehrnet track clip.mp4 --variant H-4 --checkpoint checkpoints/H-4 --out runs/track
  ehrnet track 0 --backend onnx --checkpoint h4_384x640.onnx --out runs/cam --show
  ehrnet track rtsp://camera.local/stream --backend onnx --device tensorrt \\
      --checkpoint h4_384x640.onnx --out runs/door --max-frames 9000

SOURCE: a video file, a camera index (0, 1, ...) or a URL that OpenCV opens (rtsp://, http://).
The frames are read, run through the network (one at a time, at one input size: --input-size, by
default the model's exported size with onnx and the first frame's test size with jax, so JAX
compiles once), grouped and tracked, and drawn and written in overlapping stages with small
bounded queues between them (two frames in the network stage at once). A file's frames are all
processed (the reader waits when the network is behind); a camera or stream is read as it
delivers, and when the network is behind the oldest waiting frame is dropped (counted in
OUT/summary.json and in each line's "dropped"; tracked.mp4 then plays faster than real time).

Outputs in OUT:
  tracks.jsonl  one line per processed frame, flushed as it is written: {"frame", "timestamp"
                (s; files: the video's time, live sources: since the first frame), "dropped",
                "people": [{"track_id", "score", "keypoints": [[x, y, score], ...]}]}
  tracked.mp4   skeletons in the colour of their track id, the id above each person and the
                running frame rate
  summary.json  frames read, processed, dropped and bad; fps after the first frame; people
                per frame; tracks; each stage's busy seconds

Tracking: people are matched to the tracks of earlier frames by object keypoint similarity;
a track unseen for more than --max-gap frames ends, new people get new ids. --smooth (default)
filters each track's keypoints with a One-Euro filter (less jitter, a little lag): the JSON holds
the smoothed keypoints; --no-smooth writes the network's own (as `ehrnet predict` does).

Ctrl-C stops reading; the frames in flight are finished, the video is closed (playable) and
tracks.jsonl holds every processed frame (Ctrl-C again: stop at once, outputs still closed).
With --show, `q` or Esc in the window stops the same way.

exit status: 0 done (also when a camera or stream stops delivering frames: a warning says so);
1 some frames could not be decoded (skipped, counted); 2 usage or setup error (unopenable
source, empty file, unwritable --out, no display for --show, ...); 130 interrupted by Ctrl-C."""

INTERRUPTED = 130


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "track", help="people tracked through a video, camera or stream: JSON lines and a video",
      description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", metavar="SOURCE",
                      help="video file, camera index (0) or stream URL (rtsp://...)")
  _runtime.drawing_arguments(parser)
  parser.add_argument("--min-score", type=float, default=0.0,
                      help="leave out (and do not track) people scoring below this (default 0)")
  parser.add_argument("--max-frames", type=int, help="stop after reading this many frames")
  parser.add_argument("--max-gap", type=int, default=10, help="frames a person may go unseen "
                      "and keep their track id (default 10)")
  parser.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True,
                      help="One-Euro smoothing of each track's keypoints (default on)")
  parser.add_argument("--show", action="store_true", help="also show the drawn frames in a "
                      "window (needs a display and OpenCV with a GUI, not opencv-python-headless)")
  parser.add_argument("--sequential", action="store_true", help="run the stages one after "
                      "another in one thread (to measure what the pipeline gains)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an earlier run's outputs in --out")
  _runtime.add_arguments(parser)
  _runtime.input_size_argument(parser)
  parser.set_defaults(run=run)


def run(args) -> int:
  # pylint: disable=import-outside-toplevel
  import tqdm

  from ehrnet_jax import tracking
  from ehrnet_jax.inference import stream, track_outputs
  # pylint: enable=import-outside-toplevel
  model = _checked_model(args)
  if not args.verbose:
    _quiet_opencv()
  source = stream.open_source(args.source)   # what can go wrong is known before the model loads
  try:
    outputs = track_outputs.TrackOutputs(args.out, source.fps, args.threshold, args.overwrite)
    estimator = _runtime.make_estimator(args, model, fit=True)
    tracker = tracking.Tracker(estimator.keypoint_set, tracking.TrackerConfig(
        max_gap=args.max_gap, smoothing=tracking.OneEuroConfig() if args.smooth else None))
    total = None if source.live else source.frame_count
    if args.max_frames:
      total = min(total or args.max_frames, args.max_frames)
    with tqdm.tqdm(total=total, unit="frame", file=sys.stderr) as bar:
      flow = stream.Stream(source, estimator, tracker, min_score=args.min_score,
                           max_frames=args.max_frames, bar=bar)

      def sink(tracked):
        canvas = outputs.write(tracked, estimator.keypoint_set, flow.stats.dropped)
        if args.show:
          _show(canvas, flow)
        bar.update(tracked.frame.index + 1 - bar.n)

      try:
        with _first_interrupt_stops(flow):
          flow.run(sink, pipelined=not args.sequential)
      except KeyboardInterrupt:
        flow.stats.interrupted = True
      finally:
        summary = outputs.close(flow.stats, source.name)
  finally:
    source.release()
  return _report(summary, args.out)


def _checked_model(args) -> str:
  from ehrnet_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  if args.checkpoint is None:
    raise UserError("--checkpoint is required: a checkpoint directory from `ehrnet convert` or "
                    "`ehrnet train` (--backend jax), or an .onnx file from `ehrnet export` "
                    "(--backend onnx)")
  _runtime.check_model(args, args.checkpoint)
  if args.max_frames is not None and args.max_frames < 1:
    raise UserError(f"--max-frames must be at least 1; got {args.max_frames}")
  if args.max_gap < 0:
    raise UserError(f"--max-gap must be 0 or more frames; got {args.max_gap}")
  if args.show:
    _check_display()
  return args.checkpoint


def _check_display() -> None:
  """UserError unless OpenCV can open a window here."""
  # pylint: disable=import-outside-toplevel
  import cv2

  from ehrnet_jax.errors import UserError
  # pylint: enable=import-outside-toplevel
  gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
              if line.strip().startswith("GUI:")), "")
  if gui.upper() == "NONE":
    raise UserError("--show: this OpenCV has no GUI (opencv-python-headless); install "
                    "opencv-python to show frames, or drop --show and watch OUT/tracked.mp4")
  if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                               or os.environ.get("WAYLAND_DISPLAY")):
    raise UserError("--show needs a display and none is set (DISPLAY, WAYLAND_DISPLAY); drop "
                    "--show and watch OUT/tracked.mp4")


def _quiet_opencv() -> None:
  """OpenCV's and FFmpeg's own warnings (e.g. a camera that does not open) off: the command
  says what went wrong in one line. `--verbose` keeps them."""
  import cv2  # pylint: disable=import-outside-toplevel
  os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")   # read when FFmpeg first opens
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@contextlib.contextmanager
def _first_interrupt_stops(flow):
  """The first Ctrl-C (SIGINT) stops the reading; the second raises KeyboardInterrupt."""
  from ehrnet_jax.inference.progress import warn  # pylint: disable=import-outside-toplevel

  def stop(*_):
    flow.interrupt()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    warn("interrupted: finishing the frames in flight (Ctrl-C again to stop at once)")

  previous = signal.signal(signal.SIGINT, stop)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def _show(canvas, flow) -> None:
  """Shows a drawn frame (BGR); `q` or Esc stops the stream."""
  import cv2  # pylint: disable=import-outside-toplevel
  cv2.imshow("ehrnet track", canvas)
  if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
    flow.stop.set()


def _report(summary: dict, out: str) -> int:
  """Prints the summary line; the exit status."""
  dropped = f", {summary['dropped']} dropped" if summary["dropped"] else ""
  bad = f", {summary['bad_frames']} bad (skipped)" if summary["bad_frames"] else ""
  fps = f"{summary['fps']:.1f} frames/s" if summary["fps"] else "fps n/a"
  print(f"{summary['processed']} frames tracked{dropped}{bad}; {fps}, "
        f"{summary['people_per_frame']:.1f} people/frame, {summary['tracks']} tracks; wrote "
        f"{out}/tracks.jsonl")
  if summary["interrupted"]:
    return INTERRUPTED
  return 1 if summary["bad_frames"] else 0
