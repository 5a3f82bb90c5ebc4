"""Input files: listed, checked from their headers before the model loads, and read.

`collect_inputs` turns the paths a user gives (files, folders searched recursively) into the image
and video files to run. `check_input` reads only what a file's header says (Pillow for images:
format and size; OpenCV for videos: opened, first frame, frame count), so that a folder of
thousands of photos is checked in seconds, before any slow work (without Pillow, on a runtime-only
install, images are decoded whole instead). `read_image` decodes a whole image (`decode_image`
its bytes, e.g. from a dataset). Some damage shows only then (e.g. a truncated JPEG), so it raises
the same error.

A file that cannot be used raises `UnreadableInput`: a `UserError` holding the file and the reason,
which a caller either reports and skips or lets stop the run.
"""

import dataclasses
import pathlib

import cv2
import numpy as np

from ehrnet_jax.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
# Smallest image side accepted: the network's stride.
MIN_IMAGE_SIDE = 32
NOT_AN_IMAGE = "cannot decode this file as an image (expected JPEG, PNG, BMP, ...)"


class UnreadableInput(UserError):
  """An input file that cannot be used; the message is `<file>: <reason>`."""

  def __init__(self, file, reason: str):
    super().__init__(f"{file}: {reason}")
    self.file, self.reason = str(file), reason

  def record(self) -> dict[str, str]:
    """{"file": ..., "reason": ...}, as listed in an output folder's failed.json."""
    return {"file": self.file, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class Input:
  """A checked input file. `frames`: None for an image; for a video the frame count its header
  gives (0 where it gives none)."""
  path: pathlib.Path
  frames: int | None = None

  @property
  def is_video(self) -> bool:
    return self.frames is not None


def collect_inputs(paths) -> list[pathlib.Path]:
  """Files and folders -> the image and video files to process (folders: recursive, sorted).

  UserError for a path that does not exist or a folder holding no image or video.
  """
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


def check_input(path) -> Input:
  """The checked input for a file, from its header only; UnreadableInput says why not."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UnreadableInput(path, "no such file")
  try:
    with path.open("rb") as file:
      if not file.read(1):
        raise UnreadableInput(path, "the file is empty")
  except OSError as error:
    raise UnreadableInput(path, f"cannot read this file ({error.strerror})") from None
  if is_video(path):
    return _check_video(path)
  _check_image_header(path)
  return Input(path)


def _check_image_header(path: pathlib.Path) -> None:
  try:
    # pylint: disable-next=import-outside-toplevel
    from PIL import Image, UnidentifiedImageError
  except ModuleNotFoundError:   # a runtime-only install (requirements-runtime.txt): decode it all
    read_image(path)
    return
  try:
    with Image.open(path) as image:   # reads the header only
      width, height = image.size
  except (UnidentifiedImageError, OSError, ValueError):
    raise UnreadableInput(path, NOT_AN_IMAGE) from None
  check_size(width, height, path)


def _check_video(path: pathlib.Path) -> Input:
  capture = cv2.VideoCapture(str(path))
  try:
    if not capture.isOpened():
      raise UnreadableInput(path, "cannot open this file as a video")
    frames = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    ok, frame = capture.read()
    if not ok:
      raise UnreadableInput(path, "the video has no readable frames")
    check_size(frame.shape[1], frame.shape[0], path)
    return Input(path, frames)
  finally:
    capture.release()


def check_size(width: int, height: int, name) -> None:
  """UnreadableInput if an image (or video frame) is smaller than the network's stride."""
  if min(width, height) < MIN_IMAGE_SIDE:
    raise UnreadableInput(name, f"image is {width}x{height} pixels; at least {MIN_IMAGE_SIDE} "
                          "pixels per side are needed (the network's stride)")


def read_image(path) -> np.ndarray:
  """Reads an image file as RGB uint8 (h, w, 3).

  Grayscale is repeated to RGB, alpha dropped, 16-bit values mapped to 8 bits by rounding
  v * 255 / 65535 (OpenCV alone would cut off the low byte). EXIF orientation is not applied (as
  in `images.decode_image`). Raises UnreadableInput naming the file if it cannot be decoded or is
  smaller than 32 px (the network's stride) on a side.
  """
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as error:
    raise UnreadableInput(path, f"cannot read this file ({error.strerror})") from None
  return decode_image(data, path)


def decode_image(data: bytes, name) -> np.ndarray:
  """An encoded image (file bytes) as `read_image` reads it; UnreadableInput names it `name`."""
  flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
  image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
  if image is None:
    raise UnreadableInput(name, NOT_AN_IMAGE)
  check_size(image.shape[1], image.shape[0], name)
  return cv2.cvtColor(_to_uint8(image, name), cv2.COLOR_BGR2RGB)


def _to_uint8(image: np.ndarray, name) -> np.ndarray:
  """8- or 16-bit pixels -> uint8 (16-bit: rounded v * 255 / 65535); UnreadableInput otherwise."""
  if image.dtype == np.uint8:
    return image
  if image.dtype == np.uint16:
    return np.round(image.astype(np.float32) * np.float32(255 / 65535)).astype(np.uint8)
  raise UnreadableInput(name, f"{image.dtype} pixels are not supported (expected 8 or 16 bits "
                        "per channel)")
