"""Image decoding and normalisation shared by training, inference and export."""

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(images, xp=np):
  """uint8 RGB (..., h, w, 3) -> float32 ImageNet-normalised; `xp` is numpy or jax.numpy."""
  return (images.astype(xp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def decode_image(encoded: bytes) -> np.ndarray | None:
  """(H, W, 3) uint8 BGR as the reference reads images (OpenCV; grayscale and alpha converted),
  or None if the bytes do not decode.

  EXIF orientation is NOT applied: COCO keypoints are in the stored pixel frame, and applying an
  EXIF rotation would move the image away from its keypoints.
  """
  return cv2.imdecode(np.frombuffer(encoded, np.uint8),
                      cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
