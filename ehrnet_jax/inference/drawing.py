"""Drawing people (keypoints, skeletons, track ids), ignore masks and heatmaps on RGB uint8 images,
and writing drawn frames as a video (`video_writer`).

OpenCV only (no matplotlib). Every function returns a new image and leaves its input alone.

  canvas = draw_people(image, people, keypoints.COCO, threshold=0.1)  # people (N, J, 3)
  canvas = overlay_heatmaps(canvas, heatmaps)  # (h, w, J) in [0, 1]
  cv2.imwrite("out.png", cv2.cvtColor(contact_sheet([canvas, ...], columns=4), cv2.COLOR_RGB2BGR))
"""

import colorsys

import cv2
import numpy as np

from ehrnet_jax.errors import UserError
from ehrnet_jax.keypoints import KeypointSet


def person_color(index: int) -> tuple[int, int, int]:
  """A distinct saturated RGB colour for person `index` (golden-ratio hue steps)."""
  r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.9, 1.0)
  return int(r * 255), int(g * 255), int(b * 255)


def draw_people(image_rgb: np.ndarray, people: np.ndarray, keypoint_set: KeypointSet,
                threshold: float = 0.1, radius: int | None = None,
                track_ids: np.ndarray | None = None) -> np.ndarray:
  """Draws each person's skeleton and joints in its own colour.

  Args:
    image_rgb: (H, W, 3) uint8.
    people: (N, J, 3): x, y in image pixels and a score or visibility; joints with a score
      <= threshold are not drawn, nor the bones that touch them.
    keypoint_set: gives J and the skeleton edges.
    radius: joint radius in pixels (default: from the image size).
    track_ids: (N,) ints: person n gets the colour of its track id (`person_color(id)`) and the id
      is written above its highest joint; default: colours by position, no labels.
  """
  people = np.asarray(people, np.float64)
  if people.ndim != 3 or people.shape[1:] != (keypoint_set.num_joints, 3):
    raise ValueError(f"people must be (N, {keypoint_set.num_joints}, 3), got {people.shape}")
  canvas = np.ascontiguousarray(image_rgb, np.uint8).copy()
  radius = radius or max(2, round(max(canvas.shape[:2]) / 160))
  thickness = max(1, radius // 2)
  for index, joints in enumerate(people):
    color = person_color(index if track_ids is None else int(track_ids[index]))
    shown = joints[:, 2] > threshold
    points = [(int(round(x)), int(round(y))) for x, y in joints[:, :2]]
    for a, b in keypoint_set.skeleton:
      if shown[a] and shown[b]:
        cv2.line(canvas, points[a], points[b], color, thickness, cv2.LINE_AA)
    for point in np.asarray(points)[shown]:
      cv2.circle(canvas, tuple(int(v) for v in point), radius, color, -1, cv2.LINE_AA)
      cv2.circle(canvas, tuple(int(v) for v in point), radius, (0, 0, 0), 1, cv2.LINE_AA)
    if track_ids is not None and shown.any():
      top = min((points[j] for j in np.flatnonzero(shown)), key=lambda p: p[1])
      _put_text(canvas, str(int(track_ids[index])), (top[0] - radius, top[1] - 2 * radius),
                color, radius / 8)
  return canvas


def _put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], color,
              scale: float) -> None:
  """`text` at `origin` (its bottom left) in `color` with a black outline, in place."""
  scale = max(0.4, scale)
  for ink, width in (((0, 0, 0), 3), (color, 1)):
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, ink, width, cv2.LINE_AA)


def _resize_to(array: np.ndarray, image: np.ndarray, interpolation: int) -> np.ndarray:
  return cv2.resize(array, (image.shape[1], image.shape[0]), interpolation=interpolation)


def overlay_mask(image_rgb: np.ndarray, valid: np.ndarray, color=(255, 0, 255),
                 alpha: float = 0.6) -> np.ndarray:
  """Tints where `valid` (h, w) is 0 (ignored by the loss); any h, w, nearest-neighbour."""
  ignored = _resize_to(np.asarray(valid, np.uint8), image_rgb, cv2.INTER_NEAREST) == 0
  canvas = image_rgb.astype(np.float32)
  canvas[ignored] = (1 - alpha) * canvas[ignored] + alpha * np.asarray(color, np.float32)
  return canvas.round().astype(np.uint8)


def overlay_heatmaps(image_rgb: np.ndarray, heatmaps: np.ndarray, alpha: float = 0.6
                     ) -> np.ndarray:
  """Blends the max over joints of (h, w, J) heatmaps in [0, 1] as a JET colour map."""
  peak = np.clip(np.max(np.asarray(heatmaps, np.float32), axis=-1), 0.0, 1.0)
  peak = _resize_to(peak, image_rgb, cv2.INTER_LINEAR)
  colored = cv2.applyColorMap((peak * 255).astype(np.uint8), cv2.COLORMAP_JET)
  colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB).astype(np.float32)
  weight = alpha * peak[..., None]
  return ((1 - weight) * image_rgb + weight * colored).round().astype(np.uint8)


def label(image_rgb: np.ndarray, text: str) -> np.ndarray:
  """Writes `text` in the top-left corner on a dark band."""
  canvas = image_rgb.copy()
  scale = max(0.4, canvas.shape[1] / 800)
  (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
  cv2.rectangle(canvas, (0, 0), (w + 6, h + base + 6), (0, 0, 0), -1)
  cv2.putText(canvas, text, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
              cv2.LINE_AA)
  return canvas


def contact_sheet(tiles: list[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
  """Lays equally sized (H, W, 3) uint8 tiles out row by row on a white background."""
  if not tiles:
    raise ValueError("no tiles to lay out")
  h, w = tiles[0].shape[:2]
  rows = -(-len(tiles) // columns)
  sheet = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), 255, np.uint8)
  for i, tile in enumerate(tiles):
    y, x = gap + (i // columns) * (h + gap), gap + (i % columns) * (w + gap)
    sheet[y:y + h, x:x + w] = tile
  return sheet


def video_writer(path, fps: float, shape) -> cv2.VideoWriter:
  """An MPEG-4 writer of BGR frames of `shape` (H, W, 3); UserError if OpenCV cannot write one
  at `path`."""
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
  if not writer.isOpened():
    raise UserError(f"{path}: OpenCV cannot write an MPEG-4 video here")
  return writer
