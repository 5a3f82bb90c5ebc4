"""A pipelined video stream: frames in from a file, a camera or a URL, tracked people out.

    source -reader-> [frames] =network=> [maps] -grouping, tracking-> [tracked] -> sink (caller)

Each arrow is a thread (`=network=>`: `network_threads` of them, on consecutive frames) and each
bracket a bounded queue (`queue_size` items). OpenCV's decoding, the network (JAX's dispatch,
onnxruntime) and OpenCV's drawing and encoding release the GIL, so the stages overlap and a
stream runs at the rate of its slowest stage, not of their sum. A network thread runs the first
half of the `PoseEstimator` on one frame (`decode`: network and maps); the tracking stage puts the
frames back in order, groups their people (`group`) while the next frames' networks run, and
gives each person a track id (`tracking.Tracker`) and its smoothed keypoints; the sink (e.g.
`track_outputs.TrackOutputs.write`) draws and writes. Every frame of a stream has the first
frame's size (others are bad frames), so the network input size is fixed and JAX compiles on the
first frame only. `Stream.run(pipelined=False)` runs the
same stages one after another in the caller's thread (to measure what the pipeline gains).

Back-pressure: a file's frames are never dropped (the reader waits for room). A live source (a
camera, a URL) is read as fast as it delivers; when the network is behind, the oldest frame
waiting for it is dropped and counted (`StreamStats.dropped`), so that no more than `queue_size`
frames wait and the latency stays bounded.

Bad input: a frame that does not decode, or whose size differs from the first frame's, is skipped,
warned about (the first) and counted (`bad_frames`). The end of a file ends the stream; a live
source that stops delivering frames (a camera unplugged, a stream that ends) ends it with a
warning (`disconnected`). A source that delivers no usable frame at all is an `UnreadableInput`.

Stopping: `Stream.stop` (an Event; `Stream.interrupt` on Ctrl-C) stops the reading; the frames in
flight are finished and given to the sink. An exception in any stage or in the sink stops every
stage; `Stream.run` raises the first one.
"""

import dataclasses
import pathlib
import queue
import threading
import time
from typing import Callable, Iterator, Protocol

import cv2
import numpy as np

from ehrnet_jax.errors import UserError
from ehrnet_jax.inference.estimator import Decoded, PoseEstimator
from ehrnet_jax.inference.inputs import (VIDEO_SUFFIXES, UnreadableInput, check_input, check_size,
                                         is_video)
from ehrnet_jax.inference.progress import compiling_notice, warn

POLL_S = 0.05   # how often a waiting stage looks whether the stream was aborted
JOIN_S = 10.0   # how long an aborted stream waits for a stage busy in a call (e.g. the network)


@dataclasses.dataclass(frozen=True)
class Frame:
  """A frame read from the source.

  index: its position in the source (dropped and bad frames count). timestamp: seconds; for
  files index / fps (the video's own time), for live sources since the first frame was read.
  image: RGB uint8 (H, W, 3).
  """
  index: int
  timestamp: float
  image: np.ndarray


@dataclasses.dataclass(frozen=True)
class TrackedFrame:
  """A frame's people with their track ids, in image pixels.

  people: float32 (P, J, 3) x, y, score (smoothed when the tracker smooths); scores: float32 (P,);
  track_ids: int64 (P,); seconds: time per part ("network", "decode", "grouping", "tracking").
  """
  frame: Frame
  people: np.ndarray
  scores: np.ndarray
  track_ids: np.ndarray
  seconds: dict[str, float]


@dataclasses.dataclass
class StreamStats:
  """What a stream did. `stage_seconds`: the time each stage was busy (not waiting on a queue):
  with the pipeline their sum exceeds the wall-clock time as much as the stages overlap."""
  frames_read: int = 0
  processed: int = 0
  dropped: int = 0
  bad_frames: int = 0
  disconnected: bool = False
  interrupted: bool = False
  stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


class FrameSource(Protocol):
  """Where frames come from (`VideoSource`, or a test double)."""
  name: str
  live: bool                # a camera or stream: drop frames rather than fall behind
  fps: float                # frames per second it delivers (a file's timestamps use it)
  frame_count: int | None   # a file's frame count from its header (None: unknown, live)

  def read(self) -> tuple[bool, np.ndarray | None]:
    """Like `cv2.VideoCapture.read`: (False, None) at the end, else (True, BGR uint8 frame)."""
    ...

  def release(self) -> None:
    ...


class VideoSource:
  """A `FrameSource` on `cv2.VideoCapture`: a video file, a camera or a stream URL."""

  def __init__(self, capture: cv2.VideoCapture, name: str, live: bool):
    self._capture, self.name, self.live = capture, name, live
    self.fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    self.frame_count = count if count > 0 and not live else None

  def read(self) -> tuple[bool, np.ndarray | None]:
    return self._capture.read()

  def release(self) -> None:
    self._capture.release()


def open_source(text: str) -> VideoSource:
  """SOURCE as the command line gives it: a camera index ("0"), a URL ("rtsp://...", anything
  with "://") or a video file (checked as `inputs.check_input` checks it). UserError (one line)
  if it cannot be opened."""
  if text.isdigit():
    return _open_live(int(text), f"camera {text}", "cannot open this camera (is it connected, "
                      "and free? cameras are numbered from 0)")
  if "://" in text:
    return _open_live(text, text, "cannot open this stream (check the URL, the network and the "
                      "credentials)")
  if pathlib.Path(text).is_file() and not is_video(pathlib.Path(text)):
    raise UnreadableInput(text, f"not a video file (expected {', '.join(sorted(VIDEO_SUFFIXES))})")
  check_input(text)   # exists, not empty, opens, has a readable first frame of a usable size
  capture = cv2.VideoCapture(text)
  if not capture.isOpened():
    raise UnreadableInput(text, "cannot open this file as a video")
  return VideoSource(capture, text, live=False)


def _open_live(target: int | str, name: str, reason: str) -> VideoSource:
  capture = cv2.VideoCapture(target)
  if not capture.isOpened():
    raise UserError(f"{name}: {reason}")
  return VideoSource(capture, name, live=True)


def read_frames(source: FrameSource, stats: StreamStats, stop: threading.Event,
                max_frames: int | None = None) -> Iterator[Frame]:
  """The usable frames of `source` in RGB, until its end, `stop` or `max_frames` frames read;
  counts `stats.frames_read`, `bad_frames` and `disconnected` (module docstring)."""
  first_shape, start = None, None
  while not stop.is_set() and (max_frames is None or stats.frames_read < max_frames):
    ok, image = source.read()
    if not ok:
      if source.live and first_shape is not None:
        stats.disconnected = True
        warn(f"{source.name} stopped delivering frames after {stats.frames_read}; ending the "
             "stream (disconnected?)")
      break
    index = stats.frames_read
    stats.frames_read += 1
    start = time.monotonic() if start is None else start
    problem = _frame_problem(image, first_shape)
    if problem:
      if not stats.bad_frames:
        warn(f"{source.name}, frame {index}: {problem}; skipped (bad frames are counted)")
      stats.bad_frames += 1
      continue
    if first_shape is None:
      check_size(image.shape[1], image.shape[0], source.name)
      first_shape = image.shape
    timestamp = time.monotonic() - start if source.live else index / source.fps
    yield Frame(index, timestamp, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
  if first_shape is None and not stop.is_set():
    raise UnreadableInput(source.name, "delivered no readable frames")


def _frame_problem(image, first_shape) -> str | None:
  """Why a frame that `read` returned cannot be used, or None."""
  if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or not image.size:
    return "cannot be decoded"
  if image.dtype != np.uint8:
    return f"has {image.dtype} pixels (expected 8 bits per channel)"
  if first_shape is not None and image.shape != first_shape:
    return (f"is {image.shape[1]}x{image.shape[0]} pixels, not {first_shape[1]}x{first_shape[0]} "
            "as the first frame")
  return None


class _Aborted(Exception):
  """Raised in a stage waiting on a queue when another stage has failed."""


_END = object()   # the last item of every queue


class _Channel:
  """A bounded queue between two stages. With `drop_oldest`, `put` never waits: when full, the
  oldest item is dropped and counted (`dropped`). Waits end with `_Aborted` once `abort` is set."""

  def __init__(self, size: int, abort: threading.Event, drop_oldest: bool = False):
    self._queue = queue.Queue(size)
    self._abort, self._drop_oldest = abort, drop_oldest
    self._lock = threading.Lock()   # one consumer takes at a time, so numbers follow the order
    self._ended, self._taken = False, 0
    self.dropped = 0

  def put(self, item) -> None:
    while self._drop_oldest and item is not _END:
      try:
        self._queue.put_nowait(item)
        return
      except queue.Full:
        try:
          self._queue.get_nowait()
          self.dropped += 1
        except queue.Empty:   # the consumer took it meanwhile: room now
          pass
    while not self._abort.is_set():
      try:
        self._queue.put(item, timeout=POLL_S)
        return
      except queue.Full:
        pass
    raise _Aborted

  def take(self) -> tuple[int, object]:
    """The next item and its number (0, 1, ... in the order taken: consumers may share the
    channel); once the end marker has come, `(count, _END)` for every consumer."""
    with self._lock:
      while not self._ended:
        if self._abort.is_set():
          raise _Aborted
        try:
          item = self._queue.get(timeout=POLL_S)
        except queue.Empty:
          continue
        if item is _END:
          self._ended = True
        else:
          self._taken += 1
          return self._taken - 1, item
      return self._taken, _END

  def items(self) -> Iterator:
    """The items until the end marker."""
    while True:
      _, item = self.take()
      if item is _END:
        return
      yield item


def _relay(items: Iterator, work: Callable, outbox: _Channel) -> None:
  """A stage: `work` on each of `items`, the results to `outbox`, then the end marker."""
  for item in items:
    outbox.put(work(item))
  outbox.put(_END)


def _in_order(numbered: Iterator[tuple[int, object]]) -> Iterator:
  """The items of (number, item) pairs that come in any order, by number (0, 1, ...)."""
  waiting, number = {}, 0
  for found, item in numbered:
    waiting[found] = item
    while number in waiting:
      yield waiting.pop(number)
      number += 1


class _Workers:
  """Threads that share a stage: each takes numbered items from `inbox` and puts (number,
  result) to `outbox`; the last one to finish puts the end marker. The first item runs alone (a
  JAX network compiles on it: once, not once per thread)."""

  def __init__(self, count: int, inbox: _Channel, work: Callable, outbox: _Channel,
               abort: threading.Event):
    self.count, self.inbox, self.work, self.outbox, self.abort = count, inbox, work, outbox, abort
    self._lock = threading.Lock()
    self._first_done = threading.Event()

  def __call__(self) -> None:
    while True:
      number, item = self.inbox.take()
      if item is _END:
        break
      while number and not self._first_done.wait(POLL_S):
        if self.abort.is_set():
          raise _Aborted
      self.outbox.put((number, self.work(item)))
      self._first_done.set()
    with self._lock:
      self.count -= 1
      last = self.count == 0
    if last:
      self.outbox.put(_END)


def _guarded(work: Callable[[], None], errors: list, abort: threading.Event) -> Callable[[], None]:
  """`work` that, on an exception, records it in `errors` and sets `abort` (stopping the other
  stages) instead of raising; a stage stopped by `abort` ends quietly."""
  def run():
    try:
      work()
    except _Aborted:
      pass
    except BaseException as error:  # pylint: disable=broad-exception-caught
      errors.append(error)
      abort.set()
  return run


class Stream:
  """Frames of a source through an estimator and a tracker to a sink; see the module docstring.

  `tracker`: anything with `update(people (P, J, >=3), timestamp) -> ids (P,)` and `smoothed`
  (P, J, 3), e.g. `tracking.Tracker`. People scoring below `min_score` are left out before
  tracking. `network_threads`: estimator calls at once, on consecutive frames. `bar`: a progress
  bar that says when the network compiles.
  """

  def __init__(self, source: FrameSource, estimator: PoseEstimator, tracker, *,
               min_score: float = 0.0, max_frames: int | None = None, queue_size: int = 2,
               network_threads: int = 2, bar=None):
    self.source, self.estimator, self.tracker = source, estimator, tracker
    self.min_score, self.max_frames, self.bar = min_score, max_frames, bar
    self.queue_size, self.network_threads = queue_size, network_threads
    self.stats = StreamStats()
    self.stop = threading.Event()

  def interrupt(self) -> None:
    """Stops the reading (e.g. on Ctrl-C): the frames in flight still reach the sink."""
    self.stats.interrupted = True
    self.stop.set()

  def run(self, sink: Callable[[TrackedFrame], None], pipelined: bool = True) -> StreamStats:
    """Calls `sink` in this thread on every frame's people, in order; returns the statistics."""
    if not pipelined:
      for frame in self._frames():
        self._sink(sink, self._track(self._network(frame)))
      return self.stats
    abort, errors = threading.Event(), []
    frames = _Channel(self.queue_size, abort, drop_oldest=self.source.live)
    poses, tracked = _Channel(self.queue_size, abort), _Channel(self.queue_size, abort)
    network = _Workers(self.network_threads, frames, self._network, poses, abort)
    stages = [("reader", lambda: self._read_into(frames)),
              *[(f"network-{i}", network) for i in range(self.network_threads)],
              ("tracking", lambda: _relay(_in_order(poses.items()), self._track, tracked))]
    threads = [threading.Thread(target=_guarded(work, errors, abort), name=f"stream-{name}",
                                daemon=True) for name, work in stages]
    for thread in threads:
      thread.start()
    try:
      _guarded(lambda: [self._sink(sink, item) for item in tracked.items()], errors, abort)()
    finally:
      for thread in threads:   # after an error, stages busy in a call are not waited for long
        thread.join(JOIN_S if errors else None)
    self.stats.dropped = frames.dropped
    if errors:
      raise errors[0]
    return self.stats

  def _read_into(self, frames: _Channel) -> None:
    for frame in self._frames():
      frames.put(frame)
      self.stats.dropped = frames.dropped
    frames.put(_END)

  def _frames(self) -> Iterator[Frame]:
    """`read_frames`, the time spent reading each added to the reader's busy time."""
    frames = read_frames(self.source, self.stats, self.stop, self.max_frames)
    while True:
      start = time.perf_counter()
      frame = next(frames, None)
      self._add_time("reader", start)
      if frame is None:
        return
      yield frame

  def _add_time(self, stage: str, start: float) -> None:
    seconds = self.stats.stage_seconds
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start

  def _network(self, frame: Frame) -> tuple[Frame, Decoded]:
    start = time.perf_counter()
    if self.bar is None:
      decoded = self.estimator.decode([frame.image])
    else:
      with compiling_notice(self.bar, self.estimator, frame.image.shape[:2]):
        decoded = self.estimator.decode([frame.image])
    self._add_time("network", start)
    return frame, decoded

  def _track(self, item: tuple[Frame, Decoded]) -> TrackedFrame:
    frame, decoded = item
    start = time.perf_counter()
    (poses,) = self.estimator.group(decoded)
    self._add_time("grouping", start)
    start = time.perf_counter()
    keep = poses.scores >= self.min_score
    track_ids = np.asarray(self.tracker.update(poses.people[keep], frame.timestamp), np.int64)
    people = np.asarray(self.tracker.smoothed, np.float32)
    self._add_time("tracking", start)
    seconds = {**poses.seconds, "tracking": time.perf_counter() - start}
    return TrackedFrame(frame, people, poses.scores[keep], track_ids, seconds)

  def _sink(self, sink: Callable[[TrackedFrame], None], tracked: TrackedFrame) -> None:
    start = time.perf_counter()
    sink(tracked)
    self.stats.processed += 1
    self._add_time("sink", start)
