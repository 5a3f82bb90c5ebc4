"""Reading photos and turning them into network inputs."""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from ehrnet_jax.errors import UserError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
  """(H, W, 3) uint8 RGB; grayscale, palette, RGBA and CMYK are converted. EXIF orientation is
  ignored, as COCO's annotations (and the reference) use the stored pixel grid."""
  try:
    with Image.open(path) as image:
      rgb = np.asarray(image.convert("RGB"))
  except FileNotFoundError:
    raise UserError(f"{path}: no such image file") from None
  except (UnidentifiedImageError, OSError) as error:
    raise UserError(f"{path}: not a readable image ({error})") from None
  if rgb.shape[0] == 0 or rgb.shape[1] == 0:
    raise UserError(f"{path}: the image is empty ({rgb.shape[1]}x{rgb.shape[0]})")
  return rgb


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32 ImageNet-normalised."""
  return (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def network_input(image: np.ndarray, short_side: int, multiple: int = 64) -> np.ndarray:
  """(1, H', W', 3) normalised batch: the short side scaled to `short_side` (rounded up to a
  multiple of `multiple`), the long side scaled alike and rounded up, aspect ratio kept."""
  height, width = image.shape[:2]
  short = -(-short_side // multiple) * multiple
  scale = short / min(height, width)
  size = tuple(-(-round(side * scale) // multiple) * multiple for side in (height, width))
  resized = Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR)
  return normalize(np.asarray(resized))[None]
