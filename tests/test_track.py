"""`ehrnet track` and its pipelined stream (`inference.stream`): outputs through both backends,
the pipeline against the frame-by-frame loop, Ctrl-C, live sources that outpace the network, and
bad input.

Most tests run the host estimator of `support.host_pose` (exact NumPy, no network: one person
per frame at pixels drawn from the frame's hash) or a test double, so that they take a second.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from ehrnet_jax import cli, keypoints, tracking, weights
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import drawing, stream, track_outputs
from ehrnet_jax.inference.estimator import Poses
from ehrnet_jax.inference.inputs import UnreadableInput
from ehrnet_jax.scaling import ScalingSpec
from support import host_pose

HERE = pathlib.Path(__file__).resolve().parent
J = keypoints.COCO.num_joints
TRACK = ["track", "--backend", "onnx", "--checkpoint", "model.onnx"]


def _images(count: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
  """Distinct BGR frames: smooth colour fields (MPEG-4 keeps them distinct) shifted per frame."""
  y, x = np.mgrid[:h, :w]
  return [np.stack([(x * 4 + 9 * i) % 256, (y * 5 + 3 * i) % 256, ((x + y) * 2 + 20 * i) % 256],
                   -1).astype(np.uint8) for i in range(count)]


def _write_clip(path: pathlib.Path, images, fps: int = 10) -> pathlib.Path:
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, images[0].shape[1::-1])
  for image in images:
    writer.write(image)
  writer.release()
  return path


def _read_back(path: pathlib.Path) -> list[np.ndarray]:
  """Every frame OpenCV decodes from a video (BGR)."""
  capture = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, frame = capture.read()
    if not ok:
      return frames
    frames.append(frame)


def _records(out: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (out / track_outputs.LOG_FILE).read_text().splitlines()]


def _check_outputs(out: pathlib.Path, frames: int, size_wh: tuple[int, int]) -> list[dict]:
  """tracks.jsonl has every frame in order with well-formed people; the video every frame."""
  records = _records(out)
  assert [r["frame"] for r in records] == list(range(frames))
  for record in records:
    assert all(isinstance(p["track_id"], int) and np.shape(p["keypoints"]) == (J, 3)
               for p in record["people"])
  video = _read_back(out / track_outputs.VIDEO_FILE)
  assert len(video) == frames and video[0].shape[1::-1] == size_wh
  summary = json.loads((out / track_outputs.SUMMARY_FILE).read_text())
  assert (summary["processed"], summary["dropped"], summary["interrupted"]) == (frames, 0, False)
  return records


@pytest.mark.slow
def test_track_command_with_a_jax_checkpoint(h4_variables, tmp_path):
  # H-4's random weights find hundreds of people per frame: ids must be distinct within a frame.
  checkpoint = weights.save_variables(tmp_path / "H-4", h4_variables, ScalingSpec.from_name("H-4"))
  clip = _write_clip(tmp_path / "clip.mp4", _images(3, 160, 240))   # network input 576x384
  assert cli.main(["track", str(clip), "--variant", "H-4", "--checkpoint", str(checkpoint),
                   "--no-flip", "--min-score", "0.5", "--out", str(tmp_path / "out")]) == 0
  records = _check_outputs(tmp_path / "out", 3, (240, 160))
  ids = [[p["track_id"] for p in r["people"]] for r in records]
  assert sum(map(len, ids)) > 0 and all(len(set(i)) == len(i) for i in ids)


def test_track_command_with_an_onnx_model(tmp_path):
  from test_onnx_runtime import _pooling_model  # pylint: disable=import-outside-toplevel
  # A graph with ehrnet's metadata whose maps hold no person (small weights): the runtime path.
  # 16:9 frames (test size 704x384) fitted into a 640x384 model.
  model = _pooling_model(tmp_path / "m.onnx", None, "NHWC", hw=(384, 640), joints=J)
  clip = _write_clip(tmp_path / "clip.mp4", _images(4, 144, 256))
  assert cli.main(["track", str(clip), "--backend", "onnx", "--checkpoint", str(model),
                   "--out", str(tmp_path / "out")]) == 0
  assert all(r["people"] == [] for r in _check_outputs(tmp_path / "out", 4, (256, 144)))


def test_people_are_drawn_in_the_colour_of_their_track_id():
  person = np.zeros((1, J, 3), np.float32)
  person[0, :, :2], person[0, :, 2] = (40, 50), 1.0   # every joint at one point
  colours = {tuple(c) for c in drawing.draw_people(np.zeros((96, 96, 3), np.uint8), person,
                                                   keypoints.COCO, track_ids=[7]).reshape(-1, 3)}
  assert drawing.person_color(7) in colours and drawing.person_color(0) not in colours


class _ListSink:
  def __init__(self):
    self.frames: list[stream.TrackedFrame] = []

  def __call__(self, tracked):
    self.frames.append(tracked)


@pytest.mark.parametrize("pipelined", [True, False])
def test_stream_equals_the_frame_by_frame_loop(tmp_path, pipelined):
  clip = _write_clip(tmp_path / "clip.mp4", _images(10))
  estimator = host_pose.estimator()
  config = tracking.TrackerConfig(max_gap=3, smoothing=tracking.OneEuroConfig())
  sink = _ListSink()
  source = stream.open_source(str(clip))
  flow = stream.Stream(source, estimator, tracking.Tracker(config=config), min_score=0.1)
  stats = flow.run(sink, pipelined)
  source.release()
  # The truth: the frames decoded by OpenCV, the estimator and a tracker called one by one.
  tracker = tracking.Tracker(config=config)
  expected = []
  for index, image in enumerate(_read_back(clip)):
    (poses,) = estimator([cv2.cvtColor(image, cv2.COLOR_BGR2RGB)])
    keep = poses.scores >= 0.1
    ids = tracker.update(poses.people[keep], index / 10)
    expected.append((poses.scores[keep], ids, tracker.smoothed))
  assert (stats.frames_read, stats.processed, stats.dropped, stats.bad_frames) == (10, 10, 0, 0)
  assert [t.frame.index for t in sink.frames] == list(range(10))
  assert sum(len(t.track_ids) for t in sink.frames) > 0
  # Exact: the same NumPy program on the same decoded frames.
  for found, (scores, ids, people) in zip(sink.frames, expected):
    np.testing.assert_array_equal(found.scores, scores)
    np.testing.assert_array_equal(found.track_ids, ids)
    np.testing.assert_array_equal(found.people, people)
    assert found.track_ids.dtype == np.int64


class _FakeSource:
  """A `FrameSource` of `count` frames whose pixels hold their index; `bad` maps an index to what
  `read` returns instead; `delay_s` per read; `live` sources may end early (`end`)."""

  def __init__(self, count, live=False, delay_s=0.0, bad=None, end=None):
    self.name, self.live, self.fps, self.frame_count = "fake", live, 10.0, None
    self.count, self.delay_s, self.bad, self.end = count, delay_s, bad or {}, end
    self.reads = 0

  def read(self):
    time.sleep(self.delay_s)
    index = self.reads
    if index >= (self.count if self.end is None else self.end):
      return False, None
    self.reads += 1
    if index in self.bad:
      return True, self.bad[index]
    return True, np.full((32, 32, 3), index, np.uint8)

  def release(self):
    pass


class _FakeEstimator:
  """One person per frame, its joints on a diagonal from (frame index, 0); waits `delay_s`;
  raises a UserError on frame `fail_at`."""
  keypoint_set = keypoints.COCO

  def __init__(self, delay_s=0.0, fail_at=None):
    self.delay_s, self.fail_at = delay_s, fail_at

  def decode(self, images):
    """The "network" half: what `group` needs is the frame's index."""
    (image,) = images
    index = int(image[0, 0, 0])
    if index == self.fail_at:
      raise UserError(f"frame {index} is bad")
    time.sleep(self.delay_s)
    return index

  def group(self, index):
    people = np.zeros((1, J, 4), np.float32)
    people[0, :, :2] = np.stack([index + 3 * np.arange(J), 3 * np.arange(J)], -1)
    people[0, :, 2] = 1.0
    return [Poses(people, np.ones(1, np.float32), {})]


def _run(source, estimator, sink=None, **options) -> stream.StreamStats:
  flow = stream.Stream(source, estimator, tracking.Tracker(), **options)
  return flow.run(sink or _ListSink())


def test_live_source_drops_the_oldest_frames_when_the_network_is_behind():
  # A camera at 500 frames/s, a network at about 50: most frames are dropped, never queued.
  sink = _ListSink()
  stats = _run(_FakeSource(100, live=True, delay_s=0.002), _FakeEstimator(delay_s=0.04), sink)
  assert stats.frames_read == 100 and stats.dropped > 50
  assert stats.processed + stats.dropped == 100   # every frame read is processed or dropped
  indexes = [t.frame.index for t in sink.frames]
  assert indexes == sorted(set(indexes)) and indexes[-1] == 99   # in order, the newest kept
  # A file is never dropped, whatever the network's speed.
  sink = _ListSink()
  stats = _run(_FakeSource(20, delay_s=0.0), _FakeEstimator(delay_s=0.01), sink)
  assert (stats.processed, stats.dropped) == (20, 0)
  assert [t.frame.index for t in sink.frames] == list(range(20))


def test_a_full_live_queue_holds_only_the_newest_frames():
  # pylint: disable=protected-access
  channel = stream._Channel(2, threading.Event(), drop_oldest=True)
  for item in range(7):
    channel.put(item)   # never waits
  # The end marker is never dropped: it waits for room (here, for the items to be taken).
  threading.Thread(target=channel.put, args=(stream._END,)).start()
  assert list(channel.items()) == [5, 6] and channel.dropped == 5


def test_stages_overlap():
  # A network and a sink that each wait 50 ms per frame: one after another at least 1 s for 10
  # frames; pipelined about 0.55 s (the bound leaves 0.3 s for a busy machine's scheduling).
  def sink(_):
    time.sleep(0.05)

  start = time.perf_counter()
  stats = _run(_FakeSource(10), _FakeEstimator(delay_s=0.05), sink)
  wall = time.perf_counter() - start
  assert stats.processed == 10 and wall < 0.85
  assert sum(stats.stage_seconds.values()) > 0.95 > wall


def test_bad_frames_are_skipped_and_counted(capsys):
  bad = {3: None, 5: np.zeros((40, 32, 3), np.uint8), 6: np.zeros((32, 32, 3), np.uint16)}
  sink = _ListSink()
  stats = _run(_FakeSource(9, bad=bad), _FakeEstimator(), sink)
  assert (stats.frames_read, stats.bad_frames, stats.processed) == (9, 3, 6)
  assert [t.frame.index for t in sink.frames] == [0, 1, 2, 4, 7, 8]
  assert [t.frame.timestamp for t in sink.frames] == [i / 10 for i in (0, 1, 2, 4, 7, 8)]
  err = capsys.readouterr().err
  assert err.count("warning:") == 1 and "fake, frame 3: cannot be decoded; skipped" in err


def test_a_live_source_that_stops_delivering_ends_the_stream_cleanly(capsys):
  stats = _run(_FakeSource(10, live=True, end=4), _FakeEstimator())
  # (A live source that delivers faster than the network may lose frames to dropping.)
  assert (stats.frames_read, stats.processed + stats.dropped, stats.disconnected) == (4, 4, True)
  assert "fake stopped delivering frames after 4" in capsys.readouterr().err
  with pytest.raises(UnreadableInput, match="fake: delivered no readable frames"):
    _run(_FakeSource(10, live=True, end=0), _FakeEstimator())


def test_an_error_in_a_stage_stops_the_stream_and_is_raised():
  sink = _ListSink()
  with pytest.raises(UserError, match="frame 4 is bad"):
    _run(_FakeSource(50), _FakeEstimator(fail_at=4), sink)
  # The frames before it may or may not have reached the sink; none after it.
  assert [t.frame.index for t in sink.frames] == list(range(len(sink.frames))) and (
      len(sink.frames) <= 4)
  assert not [t for t in threading.enumerate() if t.name.startswith("stream-")]


def _lines(path: pathlib.Path) -> int:
  return path.read_bytes().count(b"\n") if path.exists() else 0


def test_ctrl_c_leaves_a_playable_video_and_every_processed_frame(tmp_path):
  clip = _write_clip(tmp_path / "clip.mp4", _images(40))
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
  # Each frame's network call takes 0.2 s more: Ctrl-C comes long before the end.
  process = subprocess.Popen([sys.executable, str(HERE / "support" / "host_pose.py"), "0.2",
                              *TRACK, str(clip), "--out", str(tmp_path / "out")],
                             env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  log = tmp_path / "out" / track_outputs.LOG_FILE
  deadline = time.monotonic() + 60
  while _lines(log) < 3 and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
  process.send_signal(signal.SIGINT)
  stdout, stderr = process.communicate(timeout=60)
  assert process.returncode == 130, stderr
  assert "Traceback" not in stderr and "interrupted: finishing the frames in flight" in stderr
  records = _records(tmp_path / "out")
  assert 3 <= len(records) < 40 and [r["frame"] for r in records] == list(range(len(records)))
  assert len(_read_back(tmp_path / "out" / track_outputs.VIDEO_FILE)) == len(records)
  summary = json.loads((tmp_path / "out" / track_outputs.SUMMARY_FILE).read_text())
  assert summary["interrupted"] and summary["processed"] == len(records)
  assert f"{len(records)} frames tracked" in stdout


@pytest.fixture
def run_track(tmp_path, monkeypatch, capsys):
  """`ehrnet track ARGS` in `tmp_path` with the host estimator: (exit status, stderr lines, the
  models loaded)."""
  monkeypatch.chdir(tmp_path)
  loads = host_pose.use_in_commands(monkeypatch)

  def run(*argv):
    capsys.readouterr()
    code = cli.main([*TRACK, *map(str, argv)])
    return code, capsys.readouterr().err.splitlines(), loads
  return run


def test_bad_sources_and_outputs_are_one_line_errors(run_track, tmp_path, monkeypatch):
  _write_clip(tmp_path / "clip.mp4", _images(2))
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "text.mp4").write_text("not a video\n")
  (tmp_path / "notes.txt").write_text("not a video\n")
  (tmp_path / "a_file").write_text("")
  (tmp_path / "done").mkdir()
  (tmp_path / "done" / "tracks.jsonl").write_text('{"frame": 0}\n')
  monkeypatch.delenv("DISPLAY", raising=False)
  monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
  cases = [
      (["nope.mp4", "--out", "o"], "nope.mp4: no such file"),
      (["empty.mp4", "--out", "o"], "empty.mp4: the file is empty"),
      (["text.mp4", "--out", "o"], "text.mp4: cannot open this file as a video"),
      (["notes.txt", "--out", "o"], "notes.txt: not a video file (expected .avi, "),
      (["99", "--out", "o"], "camera 99: cannot open this camera"),
      (["rtsp://127.0.0.1:9/none", "--out", "o"], "rtsp://127.0.0.1:9/none: cannot open this "
                                                  "stream"),
      (["clip.mp4", "--out", "a_file/o"], "a_file/o: cannot write the outputs here"),
      (["clip.mp4", "--out", "done"], "done/tracks.jsonl exists (an earlier run): pass "
                                      "--overwrite"),
      (["clip.mp4", "--out", "o", "--show"], "--show"),
      (["clip.mp4", "--out", "o", "--max-frames", "0"], "--max-frames must be at least 1"),
  ]
  for argv, message in cases:
    code, err, loads = run_track(*argv)
    assert (code, len(err)) == (2, 1), (argv, err)
    assert err[0].startswith(f"ehrnet track: error: {message}"), (argv, err)
  assert loads == [] and not (tmp_path / "o").exists()   # all found before the model loads
  # --overwrite replaces the earlier run.
  code, _, _ = run_track("clip.mp4", "--out", "done", "--overwrite")
  assert code == 0 and len(_records(tmp_path / "done")) == 2
