"""What `ehrnet track` writes for a stream (`stream.Stream`'s sink), in its output folder:

- `tracks.jsonl`: one line per processed frame, written and flushed as soon as the frame is drawn
  (`result_log.ResultLog`): {"frame": index in the source, "timestamp": seconds, "dropped":
  frames dropped so far (live sources), "people": [{"track_id", "score", "keypoints":
  [[x, y, score] per joint]}]}, keypoints in image pixels (smoothed when the tracker smooths);
- `tracked.mp4`: the frames with each person's skeleton in the colour of its track id, the id
  above it and the running frame rate (of the last `FPS_WINDOW` frames) in the corner; written to
  `.tracked.partial.mp4` and renamed when closed, so that it is complete and playable;
- `summary.json` (at the end, atomically): the stream's statistics (`StreamStats`), the frame rate,
  people per frame and the number of tracks.

An interrupted or failed stream is closed the same way: every line of tracks.jsonl is a frame
of tracked.mp4.
"""

import collections
import dataclasses
import json
import os
import pathlib
import time

import cv2
import numpy as np

from ehrnet_jax import atomic
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import drawing, result_log
from ehrnet_jax.inference.stream import StreamStats, TrackedFrame
from ehrnet_jax.keypoints import KeypointSet

LOG_FILE = "tracks.jsonl"
VIDEO_FILE = "tracked.mp4"
SUMMARY_FILE = "summary.json"
FPS_WINDOW = 30


def frame_record(tracked: TrackedFrame, dropped: int) -> dict:
  """A frame's line of tracks.jsonl (module docstring); pixels to 0.01, scores to 1e-4."""
  people = [{"track_id": int(track_id), "score": round(float(score), 4),
             "keypoints": [[round(x, 2), round(y, 2), round(s, 4)]
                           for x, y, s in person[:, :3].astype(np.float64).tolist()]}
            for person, score, track_id in zip(tracked.people, tracked.scores, tracked.track_ids)]
  return {"frame": tracked.frame.index, "timestamp": round(tracked.frame.timestamp, 4),
          "dropped": dropped, "people": people}


class TrackOutputs:
  """Writes a stream's outputs in `out_dir` (module docstring); `write` is the stream's sink.

  UserError, before anything is written, if `out_dir` cannot be written or already holds a
  tracks.jsonl with frames (unless `overwrite`).
  """

  def __init__(self, out_dir, fps: float, threshold: float = 0.1, overwrite: bool = False):
    self.out_dir = pathlib.Path(out_dir)
    self.fps, self.threshold = fps, threshold
    log = self.out_dir / LOG_FILE
    if log.is_file() and log.stat().st_size and not overwrite:
      raise UserError(f"{log} exists (an earlier run): pass --overwrite to replace it, or choose "
                      "another --out")
    try:
      self.out_dir.mkdir(parents=True, exist_ok=True)
      log.unlink(missing_ok=True)
      self._log = result_log.ResultLog(log)
    except OSError as error:
      raise UserError(f"{self.out_dir}: cannot write the outputs here "
                      f"({error.strerror or error})") from None
    self._writer = None
    self._done: collections.deque[float] = collections.deque(maxlen=FPS_WINDOW)
    self._first_done: float | None = None
    self._people = 0
    self._tracks: set[int] = set()
    self._start = time.perf_counter()

  @property
  def partial_video(self) -> pathlib.Path:
    return self.out_dir / f".{VIDEO_FILE}.partial.mp4"

  def running_fps(self) -> float:
    """Frames per second over the last `FPS_WINDOW` frames written (0 before the second)."""
    if len(self._done) < 2:
      return 0.0
    return (len(self._done) - 1) / max(self._done[-1] - self._done[0], 1e-9)

  def write(self, tracked: TrackedFrame, keypoint_set: KeypointSet, dropped: int = 0
            ) -> np.ndarray:
    """Draws a frame's people (joints of `keypoint_set`) and writes it, then logs it with the
    number of frames `dropped` so far; returns the drawing (BGR)."""
    self._done.append(time.perf_counter())
    canvas = drawing.draw_people(tracked.frame.image, tracked.people, keypoint_set,
                                 self.threshold, track_ids=tracked.track_ids)
    canvas = cv2.cvtColor(drawing.label(canvas, f"{self.running_fps():.1f} fps"),
                          cv2.COLOR_RGB2BGR)
    if self._writer is None:
      self._writer = drawing.video_writer(self.partial_video, self.fps, canvas.shape)
    self._writer.write(canvas)
    self._log.append(frame_record(tracked, dropped))
    self._first_done = self._first_done or self._done[-1]
    self._people += len(tracked.track_ids)
    self._tracks.update(int(i) for i in tracked.track_ids)
    return canvas

  def close(self, stats: StreamStats, source: str) -> dict:
    """Closes the video (renamed to tracked.mp4) and the log, writes summary.json; returns it."""
    self._log.close()
    if self._writer is not None:
      self._writer.release()
      os.replace(self.partial_video, self.out_dir / VIDEO_FILE)
      self._writer = None
    steady_s = (self._done[-1] - self._first_done) if self._done else 0.0
    summary = {"source": source, **dataclasses.asdict(stats),
               "seconds": round(time.perf_counter() - self._start, 3),
               # after the first frame, which may compile the network
               "fps": round((stats.processed - 1) / steady_s, 3) if steady_s > 0 else None,
               "people_per_frame": round(self._people / max(stats.processed, 1), 3),
               "tracks": len(self._tracks)}
    atomic.write_atomically(self.out_dir / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    return summary
