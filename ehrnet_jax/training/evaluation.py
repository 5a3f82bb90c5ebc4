"""The training loop's evaluation hooks: `(variables, spec) -> metrics`.

- `CocoEvaluator`, pose: COCO keypoint AP through `ehrnet_jax.inference.coco_evaluation`. Runs
  the reference's single-scale test (flip test on, every person kept) on a split of the TFDS
  build the loop trains from, with the network and decoding on device: the processes share the
  images, each batching them over its local devices, and process 0 scores them
  (`coco_evaluation.evaluate`). One decoder is kept for the whole run, so each evaluation after
  the first reuses the compiled network for every image size.
- `ClassificationEvaluator`, backbone classifier: top-1 and top-5 accuracy on centre crops of a
  TFDS split (`ehrnet_jax.data.classification.eval_dataset`), one compiled batch shape.
Every process calls the evaluation and gets the same metrics (they rank the checkpoints
everywhere).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ehrnet_jax.errors import UserError
from ehrnet_jax.images import normalize
from ehrnet_jax.scaling import ScalingSpec

TOP_K = (1, 5)


class CocoEvaluator:
  """`(variables, spec) -> {"ap": ..., "ap50": ..., "ar": ...}` on `split` of `tfds_dir`."""

  def __init__(self, tfds_dir: str, split: str, input_size: int, max_images: int = 0):
    # TensorFlow and pycocotools: import only when used.
    from ehrnet_jax.inference import coco_evaluation
    from ehrnet_jax.training import process_exchange
    self._evaluate = coco_evaluation
    self._source = coco_evaluation.tfds_dataset(tfds_dir, split, max_images or None)
    self._input_size = input_size
    self._estimator = None
    self._processes = process_exchange.JaxProcesses()

  def _estimator_for(self, variables: dict[str, Any], spec: ScalingSpec):
    from ehrnet_jax import inference, keypoints
    from ehrnet_jax.inference import jax_decoder
    from ehrnet_jax.models import fold_batch_norm
    if self._estimator is None:
      decoder = jax_decoder.network_decoder(spec, variables, keypoints.COCO.flip_index,
                                            devices=jax.local_devices())
      self._estimator = inference.PoseEstimator(decoder, self._input_size)
    else:
      self._estimator.decoder.variables = fold_batch_norm(variables)
    return self._estimator

  def __call__(self, variables: dict[str, Any], spec: ScalingSpec) -> dict[str, float]:
    estimator = self._estimator_for(variables, spec)
    stats = self._evaluate.evaluate(estimator, self._source, progress=False,
                                    processes=self._processes).stats
    return {"ap": stats["AP"], "ap50": stats["AP50"], "ar": stats["AR"]}


def top_k_hits(logits: jax.Array, labels: jax.Array, ks: tuple[int, ...] = TOP_K) -> jax.Array:
  """(N, C) logits and (N,) int labels -> (len(ks), N) bool: whether the label is among the k
  highest logits (ties resolved in the label's favour)."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=1)  # (N, 1)
  rank = (logits > label_logit).sum(axis=1)  # (N,) classes scored above the label
  return jnp.stack([rank < k for k in ks])


class ClassificationEvaluator:
  """`(variables, spec) -> {"top1": ..., "top5": ...}` (fractions of the images) of `model` on
  `split` of the TFDS `builder`; batches of `batch_size` on the default device."""

  def __init__(self, model: nn.Module, builder, split: str, input_size: int,
               crop_fraction: float, batch_size: int, max_images: int = 0):
    from ehrnet_jax.data import classification  # TensorFlow: import only when used.
    self._dataset = classification.eval_dataset(
        builder, input_size=input_size, batch_size=batch_size, split=split,
        crop_fraction=crop_fraction, max_images=max_images)
    self._batch_size = batch_size

    @jax.jit
    def hits(variables, images, labels, valid):  # -> (len(TOP_K),) hit counts of the batch
      logits = model.apply(variables, normalize(images, jnp), train=False)
      return (top_k_hits(logits, labels) & valid).sum(axis=1)

    self._hits = hits

  def __call__(self, variables: dict[str, Any], spec: ScalingSpec) -> dict[str, float]:
    import tensorflow_datasets as tfds  # Already imported by the dataset.
    total, counted = np.zeros(len(TOP_K), np.int64), 0
    for batch in tfds.as_numpy(self._dataset):
      count = len(batch["label"])
      pad = self._batch_size - count  # The last batch is padded to the compiled shape.
      images = np.pad(batch["image"], ((0, pad), (0, 0), (0, 0), (0, 0)))
      labels = np.pad(batch["label"], (0, pad))
      valid = np.arange(self._batch_size) < count
      total += np.asarray(self._hits(variables, images, labels, valid))
      counted += count
    if counted == 0:
      raise UserError("run.eval_split: the evaluation split has no images")
    return {f"top{k}": float(hits) / counted for k, hits in zip(TOP_K, total)}
