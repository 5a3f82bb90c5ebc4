"""The training loop's evaluation hook: COCO keypoint AP through `ehrnet_jax.evaluate`.

Runs the reference's single-scale test (flip test on, every person kept) on a split of the TFDS
build the loop trains from, with the network and decoding on device. One decoder is kept for
the whole run, so each evaluation after the first reuses the compiled network for every image
size. Every process runs the same evaluation (the metrics rank the checkpoints everywhere).
"""

from typing import Any

from ehrnet_jax.scaling import ScalingSpec


class CocoEvaluator:
  """`(variables, spec) -> {"ap": ..., "ap50": ..., "ar": ...}` on `split` of `tfds_dir`."""

  def __init__(self, tfds_dir: str, split: str, input_size: int, max_images: int = 0):
    from ehrnet_jax import evaluate  # TensorFlow and pycocotools: import only when used.
    self._evaluate = evaluate
    self._source = evaluate.tfds_dataset(tfds_dir, split, max_images or None)
    self._input_size = input_size
    self._estimator = None

  def _estimator_for(self, variables: dict[str, Any], spec: ScalingSpec):
    from ehrnet_jax import decode, inference, keypoints
    from ehrnet_jax.models import EfficientHRNet
    if self._estimator is None:
      model = EfficientHRNet(spec)
      decoder = decode.JaxDecoder(lambda v, x: model.apply(v, x, train=False), variables,
                                  keypoints.COCO.flip_index)
      self._estimator = inference.PoseEstimator(decoder, self._input_size)
    self._estimator.decoder.variables = variables
    return self._estimator

  def __call__(self, variables: dict[str, Any], spec: ScalingSpec) -> dict[str, float]:
    estimator = self._estimator_for(variables, spec)
    stats = self._evaluate.evaluate(estimator, self._source, progress=False).stats
    return {"ap": stats["AP"], "ap50": stats["AP50"], "ar": stats["AR"]}
