"""EfficientHRNet in JAX/Flax: scalable bottom-up multi-person pose estimation."""

__version__ = "0.1.0"
