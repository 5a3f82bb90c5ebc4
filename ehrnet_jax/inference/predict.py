"""Pose prediction on images, folders and videos: COCO-format JSON and drawn skeletons.

Backend-agnostic (no JAX import here): it takes any `estimator.PoseEstimator`, whose decoder runs
the network (JAX on device, or a host backend such as ONNX Runtime).

Outputs in `out_dir`: `predictions.json`, a list of COCO result entries (`image_id`,
`category_id`, `keypoints`, `score`, `bbox`) with `file_name` (and `frame` for videos) added;
one drawn image per input image (`<stem>.jpg`) and one drawn video per input video
(`<stem>.mp4`).
"""

import json
import pathlib
from typing import Iterator

import cv2
import numpy as np
import tqdm

from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import coco_results, drawing
from ehrnet_jax.inference.estimator import PoseEstimator, Poses, check_image_size, read_image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


def collect_inputs(paths) -> list[pathlib.Path]:
  """Files and folders -> the image and video files to process (folders: recursive, sorted)."""
  files = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      found = sorted(p for p in path.rglob("*")
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
      if not found:
        raise UserError(f"{path}: no images or videos in this folder (looked for "
                        f"{', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})")
      files += found
    elif path.is_file():
      files.append(path)
    else:
      raise UserError(f"{path}: no such file or folder")
  return files


def is_video(path: pathlib.Path) -> bool:
  return path.suffix.lower() in VIDEO_SUFFIXES


def _open_video(path: pathlib.Path) -> cv2.VideoCapture:
  capture = cv2.VideoCapture(str(path))
  if not capture.isOpened():
    raise UserError(f"{path}: cannot open this file as a video")
  return capture


def _frames(path: pathlib.Path, capture, batch_size: int) -> Iterator[list[np.ndarray]]:
  """RGB frames of an opened video in batches; UserError if it has none."""
  batch, count = [], 0
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    if count == 0:
      check_image_size(frame, path)
    count += 1
    batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch
  if count == 0:
    raise UserError(f"{path}: the video has no readable frames")


class _Outputs:
  """Unique output names in `out_dir`, and the prediction entries (one image id per image/frame)."""

  def __init__(self, out_dir: pathlib.Path):
    self.out_dir = out_dir
    self.entries: list[dict] = []
    self._names: set[str] = set()
    self._images = 0

  def path_for(self, source: pathlib.Path, suffix: str) -> pathlib.Path:
    name, index = source.stem, 1
    while name + suffix in self._names:
      name, index = f"{source.stem}_{index}", index + 1
    self._names.add(name + suffix)
    return self.out_dir / (name + suffix)

  def add(self, poses: Poses, min_score: float, **extra) -> np.ndarray:
    """Records one image's people scoring at least `min_score`; returns them (P, J, 3)."""
    self._images += 1
    keep = poses.scores >= min_score
    people = poses.people[keep, :, :3]
    for entry in coco_results.person_results(self._images, people, poses.scores[keep]):
      self.entries.append({**entry, **extra})
    return people


def predict(estimator: PoseEstimator, paths, out_dir, threshold: float = 0.1,
            min_score: float = 0.0, batch_size: int = 4, draw: bool = True,
            progress: bool = True) -> list[dict]:
  """Runs `estimator` on every image and video frame; writes `predictions.json` and drawings.

  Args:
    estimator: the pose estimator (any backend).
    paths: image files, video files and folders of them.
    out_dir: where the outputs go (created).
    threshold: joints with a value <= threshold are not drawn.
    min_score: people with a lower score are left out of the JSON and the drawings.
    batch_size: video frames per network call.
    draw: write the drawn images/videos.
    progress: show a progress bar (images + frames).

  Returns:
    The entries written to `predictions.json`.
  """
  files = collect_inputs(paths)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  outputs = _Outputs(out_dir)
  captures = {f: _open_video(f) for f in files if is_video(f)}
  total = sum(int(c.get(cv2.CAP_PROP_FRAME_COUNT)) or 1 for c in captures.values())
  keypoint_set = estimator.keypoint_set
  with tqdm.tqdm(total=total + len(files) - len(captures), unit="image",
                 disable=not progress) as bar:
    for path in files:
      if path in captures:
        _predict_video(estimator, path, captures.pop(path), outputs, threshold, min_score,
                       batch_size, draw, bar)
        continue
      image = read_image(path)
      people = outputs.add(estimator([image])[0], min_score, file_name=str(path))
      if draw:
        canvas = drawing.draw_people(image, people, keypoint_set, threshold)
        cv2.imwrite(str(outputs.path_for(path, ".jpg")), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
      bar.update(1)
  (out_dir / "predictions.json").write_text(json.dumps(outputs.entries))
  return outputs.entries


def _predict_video(estimator, path, capture, outputs, threshold, min_score, batch_size, draw,
                   bar) -> None:
  fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
  writer = None
  frame_index = 0
  try:
    for frames in _frames(path, capture, batch_size):
      for frame, poses in zip(frames, estimator(frames)):
        people = outputs.add(poses, min_score, file_name=str(path), frame=frame_index)
        frame_index += 1
        if draw:
          if writer is None:
            writer = _video_writer(outputs.path_for(path, ".mp4"), fps, frame.shape)
          canvas = drawing.draw_people(frame, people, estimator.keypoint_set, threshold)
          writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
      bar.update(len(frames))
  finally:
    capture.release()
    if writer is not None:
      writer.release()


def _video_writer(path: pathlib.Path, fps: float, shape) -> cv2.VideoWriter:
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
  if not writer.isOpened():
    raise UserError(f"{path}: OpenCV cannot write an MPEG-4 video here")
  return writer
