"""Training losses of EfficientHRNet, exactly as the reference computes them.

- Heatmap loss at 1/4 and 1/2 resolution: per image, the mean over *all* pixels and joints of
  `(pred - target)**2 * mask` (normalised by the pixel count, not by the mask sum).
- Associative-embedding loss ("exp" form) on the 1/4-resolution tags: for each image with N
  people (a person counts if it has at least one valid joint),
    pull = sum_p mean_{j in p} (tag_j - t_p)**2 / N,       t_p = mean_{j in p} tag_j
    push = sum_{p != q} exp(-(t_p - t_q)**2) / (N (N - 1)) * 0.5,
  with pull = push = 0 for N = 0 and push = 0 for N = 1.
- Every per-image term is multiplied by its weight and averaged over the batch; the total is
  their sum.

The backbone-only classifier (the paper's Table 2) trains on the softmax cross-entropy of its
logits, averaged over the batch (`classification_loss`).

All functions are pure and jittable; arrays are NHWC like the model outputs.
"""

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the loss terms (the reference's LOSS section: 1, 1, 1e-3, 1e-3)."""
  heatmap_4: float = 1.0
  heatmap_2: float = 1.0
  pull: float = 1e-3
  push: float = 1e-3


def heatmap_loss(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked squared error, averaged over all pixels and joints of each image.

  Args:
    pred: (B, h, w, J) predicted heatmaps.
    target: (B, h, w, J) target heatmaps.
    mask: (B, h, w), 1 for valid pixels and 0 for ignored ones.

  Returns:
    (B,) the loss of each image.
  """
  return jnp.mean(jnp.square(pred - target) * mask[..., None], axis=(1, 2, 3))


def _image_ae_loss(tags: jax.Array, joints: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pull and push of one image.

  Args:
    tags: (J * h * w,) the tag maps laid out (J, h, w) and flattened.
    joints: (P, J, 2) per person and joint: (flat index into `tags`, valid flag).

  Returns:
    (pull, push), two scalars.
  """
  index, valid = joints[..., 0], (joints[..., 1] > 0).astype(tags.dtype)  # (P, J) each
  values = tags[jnp.clip(index, 0, tags.shape[0] - 1)]  # (P, J)
  count = valid.sum(axis=1)  # (P,) valid joints per person
  person = (count > 0).astype(tags.dtype)  # (P,)
  num_people = person.sum()
  safe_count = jnp.maximum(count, 1.0)
  mean_tag = (values * valid).sum(axis=1) / safe_count  # (P,) t_p
  pull_p = (jnp.square(values - mean_tag[:, None]) * valid).sum(axis=1) / safe_count  # (P,)
  pull = pull_p.sum() / jnp.maximum(num_people, 1.0)

  pairs = person[:, None] * person[None, :] * (1.0 - jnp.eye(person.shape[0], dtype=tags.dtype))
  similarity = jnp.exp(-jnp.square(mean_tag[:, None] - mean_tag[None, :]))  # (P, P)
  num_pairs = num_people * (num_people - 1.0)
  push = (similarity * pairs).sum() / jnp.maximum(num_pairs, 1.0) * 0.5
  return pull, push


def ae_loss(tags: jax.Array, joints: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Associative-embedding pull and push ("exp" form) of each image.

  Args:
    tags: (B, h, w, J) predicted tags (one tag channel per joint).
    joints: (B, P, J, 2) int, (flat index `j*h*w + y*w + x`, valid flag) per person and joint.

  Returns:
    (pull, push), each (B,).
  """
  batch = tags.shape[0]
  flat = jnp.transpose(tags, (0, 3, 1, 2)).reshape(batch, -1)  # (B, J*h*w)
  return jax.vmap(_image_ae_loss)(flat, joints)


def pose_loss(outputs, batch: Mapping[str, jax.Array],
              weights: LossWeights = LossWeights()) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total training loss and its batch-averaged, weighted components.

  Args:
    outputs: the model's `PoseOutputs` (heatmaps_4, tags_4, heatmaps_2), any float dtype.
    batch: the training batch (`heatmaps_4`, `heatmaps_2`, `mask_4`, `mask_2`, `joints_4`).
    weights: the loss weights.

  Returns:
    (total, components) where components maps heatmap_4, heatmap_2, pull, push to scalars and
    total is their sum. Computed in float32.
  """
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  pull, push = ae_loss(f32(outputs.tags_4), batch["joints_4"])
  components = {
      "heatmap_4": weights.heatmap_4 * heatmap_loss(
          f32(outputs.heatmaps_4), f32(batch["heatmaps_4"]), f32(batch["mask_4"])).mean(),
      "heatmap_2": weights.heatmap_2 * heatmap_loss(
          f32(outputs.heatmaps_2), f32(batch["heatmaps_2"]), f32(batch["mask_2"])).mean(),
      "pull": weights.pull * pull.mean(),
      "push": weights.push * push.mean(),
  }
  return sum(components.values()), components


def classification_loss(logits: jax.Array, batch: Mapping[str, jax.Array]
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Softmax cross-entropy of (B, classes) logits against batch["label"] (B,) int, batch mean.

  Returns (total, {"cross_entropy": total}), like `pose_loss`; computed in float32.
  """
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits, jnp.float32), batch["label"]).mean()
  return cross_entropy, {"cross_entropy": cross_entropy}
