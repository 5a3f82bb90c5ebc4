"""Pose prediction on images, folders and videos: COCO-format JSON, streamed and resumable, and
drawn skeletons.

Backend-agnostic (no JAX import here): it takes any `estimator.PoseEstimator`, whose decoder runs
the network (JAX on device, or a host backend such as ONNX Runtime).

`check_inputs` lists the inputs and checks every file's header (`inputs`), before the model loads.
`predict` then runs every readable one; an input that turns out unreadable (or was found so) is
warned about, skipped and listed. Outputs in `out_dir`:
- `predictions.jsonl`: one line per image or video frame, written and flushed when it is done:
  {"file_name", "frame" (videos), "image_id", "people": its COCO result entries};
- `predictions.json` (at the end, atomically): the list of every image's and frame's entries
  (`image_id`, `category_id`, `keypoints`, `score`, `bbox`, with `file_name` and, for videos,
  `frame`), in input order;
- `failed.json` (at the end, atomically): [{"file", "reason"}] of the inputs skipped;
- `run.json`: the settings of the run (`result_log`);
- one drawn image per input image (`<stem>.jpg`) and one drawn video per input video
  (`<stem>.mp4`), each written to a temporary name and renamed when complete.

Resume: run again with the same `out_dir` and settings, the images in `predictions.jsonl` are not
run again; a video is read and drawn again, but its frames in `predictions.jsonl` skip the
network. Inputs that failed are tried again. Image ids depend only on the input list: an image's is
its position among the inputs (1, 2, ...), a video frame's `position * FRAME_ID_STRIDE + frame`;
so a resumed run's `predictions.json` equals an uninterrupted one's.
"""

import dataclasses
import json
import os
import pathlib
import sys
from typing import Iterator

import cv2
import numpy as np
import tqdm

from ehrnet_jax import atomic
from ehrnet_jax.inference import coco_results, drawing, result_log
from ehrnet_jax.inference.estimator import PoseEstimator, Poses
from ehrnet_jax.inference.inputs import (Input, UnreadableInput, check_input, check_size,
                                         collect_inputs, is_video, read_image)
from ehrnet_jax.inference.progress import compiling_notice, warn

LOG_FILE = "predictions.jsonl"
FAILED_FILE = "failed.json"
OUTPUTS = (LOG_FILE, "predictions.json", FAILED_FILE)
FRAME_ID_STRIDE = 10_000_000

Checked = Input | UnreadableInput


@dataclasses.dataclass
class Prediction:
  """What `predict` wrote: the entries of predictions.json, the inputs skipped as unreadable
  ({"file", "reason"}), and how many images/frames came from an earlier run."""
  entries: list[dict]
  failed: list[dict]
  resumed: int


def check_inputs(paths, strict: bool = False) -> list[Checked]:
  """Image/video files and folders -> every file found, checked from its header (`inputs`): an
  `Input`, or the `UnreadableInput` saying why not (warned about on stderr; with `strict`,
  raised). UserError for a path that does not exist or a folder without images or videos."""
  checked = []
  for path in collect_inputs(paths):
    try:
      checked.append(check_input(path))
    except UnreadableInput as error:
      if strict:
        raise
      warn(f"{error}; skipped")
      checked.append(error)
  return checked


def image_id(position: int, frame: int | None = None) -> int:
  """The image id of the input at `position` (1, 2, ...), or of its video frame `frame`."""
  return position if frame is None else position * FRAME_ID_STRIDE + frame


def predict(estimator: PoseEstimator, checked: list, out_dir, threshold: float = 0.1,
            min_score: float = 0.0, batch_size: int = 4, draw: bool = True,
            progress: bool = True, settings: dict | None = None, overwrite: bool = False,
            strict: bool = False) -> Prediction:
  """Runs `estimator` on every readable image and video frame; writes the outputs (module
  docstring).

  Args:
    estimator: the pose estimator (any backend).
    checked: `check_inputs`'s list (its unreadable inputs are listed, not warned about again), or
      image/video files and folders, checked here.
    out_dir: where the outputs go (created).
    threshold: joints with a value <= threshold are not drawn.
    min_score: people with a lower score are left out of the JSON and the drawings.
    batch_size: video frames per network call.
    draw: write the drawn images/videos.
    progress: show a progress bar (images + frames) and say what is resumed.
    settings: the settings that change the results (JSON values, see `result_log.start`): a rerun
      with the same `out_dir` and settings resumes, other settings are refused. None: start over.
    overwrite: start over (remove an earlier run's outputs).
    strict: an input found unreadable while running raises its UnreadableInput (else it is warned
      about, skipped and listed).
  """
  if not all(isinstance(item, (Input, UnreadableInput)) for item in checked):
    checked = check_inputs(checked, strict)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  result_log.start(out_dir, settings or {}, overwrite or settings is None, OUTPUTS)
  done: dict[str, dict[int, dict]] = {}   # file name -> frame (-1: an image) -> record
  for record in result_log.read_records(out_dir / LOG_FILE):
    done.setdefault(record["file_name"], {})[_frame_key(record.get("frame"))] = record
  if done and progress:
    print(f"resuming: {sum(map(len, done.values()))} image(s)/frame(s) of an earlier run are in "
          f"{out_dir / LOG_FILE}; they are not run again", file=sys.stderr)
  names = _output_names([item.path if isinstance(item, Input) else pathlib.Path(item.file)
                         for item in checked])
  failed = {position: item for position, item in enumerate(checked, 1)
            if isinstance(item, UnreadableInput)}
  total = sum(max(item.frames, 1) if item.is_video else 1 for item in checked
              if isinstance(item, Input))
  with result_log.ResultLog(out_dir / LOG_FILE) as log, tqdm.tqdm(
      total=total, unit="image", disable=not progress) as bar:
    run = _Run(estimator, out_dir, log, bar, done, threshold, min_score, draw)
    for position, item in enumerate(checked, 1):
      if isinstance(item, UnreadableInput):
        continue
      try:
        if item.is_video:
          run.video(position, item, names[item.path], batch_size)
        else:
          run.image(position, item.path, names[item.path])
      except UnreadableInput as error:
        if strict:
          raise
        warn(f"{error}; skipped")
        failed[position] = error
  entries = [{**entry, "image_id": image_id(position, record.get("frame"))}
             for position, item in enumerate(checked, 1) if isinstance(item, Input)
             for record in run.records_of(str(item.path)) for entry in record["people"]]
  failed_records = [failed[position].record() for position in sorted(failed)]
  atomic.write_atomically(out_dir / FAILED_FILE, json.dumps(failed_records, indent=1) + "\n")
  coco_results.write_results(out_dir / "predictions.json", entries)
  return Prediction(entries, failed_records, run.resumed)


def _frame_key(frame: int | None) -> int:
  return -1 if frame is None else int(frame)


def _output_names(paths: list[pathlib.Path]) -> dict[pathlib.Path, str]:
  """Each input's drawing name: `<stem>.jpg` / `<stem>.mp4`, `<stem>_1...` for repeated stems,
  numbered in input order (so that a resumed run names them as an uninterrupted one)."""
  names, used = {}, set()
  for path in paths:
    suffix = ".mp4" if is_video(path) else ".jpg"
    name, index = path.stem, 1
    while name + suffix in used:
      name, index = f"{path.stem}_{index}", index + 1
    used.add(name + suffix)
    names[path] = name + suffix
  return names


class _Run:
  """One `predict` run: the images and frames done (earlier and now), and how to do the rest."""

  def __init__(self, estimator, out_dir, log, bar, done, threshold, min_score, draw):
    self.estimator, self.out_dir, self.log, self.bar = estimator, out_dir, log, bar
    self.done, self.threshold, self.min_score, self.draw = done, threshold, min_score, draw
    self.resumed = 0

  def records_of(self, file_name: str) -> list[dict]:
    """The records of an input, by frame."""
    records = self.done.get(file_name, {})
    return [records[frame] for frame in sorted(records)]

  def _has(self, file_name: str, frame: int | None = None) -> bool:
    return _frame_key(frame) in self.done.get(file_name, {})

  def _record(self, position, file_name, poses: Poses, frame=None) -> np.ndarray:
    """Logs one image's/frame's people scoring at least `min_score`; returns them (P, J, 3)."""
    keep = poses.scores >= self.min_score
    people = poses.people[keep, :, :3]
    extra = {"file_name": file_name} | ({} if frame is None else {"frame": frame})
    entries = [{**entry, **extra} for entry in coco_results.person_results(
        image_id(position, frame), people, poses.scores[keep])]
    record = {**extra, "image_id": image_id(position, frame), "people": entries}
    self.log.append(record)
    self.done.setdefault(file_name, {})[_frame_key(frame)] = record
    return people

  def _people(self, file_name, frame) -> np.ndarray:
    """The people (P, J, 3) of an image/frame done earlier, from its record."""
    joints = self.estimator.keypoint_set.num_joints
    people = [e["keypoints"] for e in self.done[file_name][_frame_key(frame)]["people"]]
    return np.asarray(people, np.float32).reshape(len(people), joints, 3)

  def image(self, position: int, path: pathlib.Path, name: str) -> None:
    if self._has(str(path)):
      self.resumed += 1
      self.bar.update(1)
      return
    image = read_image(path)
    with compiling_notice(self.bar, self.estimator, image.shape[:2]):
      (poses,) = self.estimator([image])
    if self.draw:   # before the record: a logged image has its drawing
      canvas = drawing.draw_people(image, poses.people[poses.scores >= self.min_score, :, :3],
                                   self.estimator.keypoint_set, self.threshold)
      temporary = self.out_dir / f".{name}.partial.jpg"
      cv2.imwrite(str(temporary), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
      os.replace(temporary, self.out_dir / name)
    self._record(position, str(path), poses)
    self.bar.update(1)

  def video(self, position: int, item: Input, name: str, batch_size: int) -> None:
    file_name = str(item.path)
    if (item.frames and all(self._has(file_name, f) for f in range(item.frames))
        and (not self.draw or (self.out_dir / name).is_file())):
      self.resumed += item.frames
      self.bar.update(item.frames)
      return
    capture = cv2.VideoCapture(file_name)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    temporary = self.out_dir / f".{name}.partial.mp4"
    writer = None
    frame_index = 0
    try:
      for frames in _frames(item.path, capture, batch_size):
        indexes = range(frame_index, frame_index + len(frames))
        todo = [i for i, f in enumerate(indexes) if not self._has(file_name, f)]
        poses = {}
        if todo:
          with compiling_notice(self.bar, self.estimator, frames[0].shape[:2], len(todo)):
            poses = dict(zip(todo, self.estimator([frames[i] for i in todo])))
        self.resumed += len(frames) - len(todo)
        for i, (frame, index) in enumerate(zip(frames, indexes)):
          people = (self._record(position, file_name, poses[i], index) if i in poses
                    else self._people(file_name, index))
          if self.draw:
            if writer is None:
              writer = drawing.video_writer(temporary, fps, frame.shape)
            canvas = drawing.draw_people(frame, people, self.estimator.keypoint_set,
                                         self.threshold)
            writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        frame_index += len(frames)
        self.bar.update(len(frames))
    finally:
      capture.release()
      if writer is not None:
        writer.release()
    if writer is not None:
      os.replace(temporary, self.out_dir / name)


def _frames(path: pathlib.Path, capture, batch_size: int) -> Iterator[list[np.ndarray]]:
  """RGB frames of an opened video in batches; UnreadableInput if it has none."""
  batch, count = [], 0
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    if count == 0:
      check_size(frame.shape[1], frame.shape[0], path)
    count += 1
    batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch
  if count == 0:
    raise UnreadableInput(path, "the video has no readable frames")
