"""Image normalisation shared by training, inference and export (ImageNet statistics, RGB)."""

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(images, xp=np):
  """uint8 RGB (..., h, w, 3) -> float32 ImageNet-normalised; `xp` is numpy or jax.numpy."""
  return (images.astype(xp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
