"""Losses against values computed by hand on tiny arrays."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax import losses


def _tags_1x3(values_j0, values_j1):
  """Tag maps of one image with h=1, w=3, J=2 as (1, 1, 3, 2) NHWC."""
  return jnp.asarray(np.stack([values_j0, values_j1], axis=-1)[None, None], jnp.float32)


def _index(j, x, w=3, h=1, y=0):
  return j * h * w + y * w + x


# Tag maps (h=1, w=3): joint 0 reads [1, 7, 5], joint 1 reads [-2, 3, 4] along x.
TAGS = _tags_1x3([1.0, 7.0, 5.0], [-2.0, 3.0, 4.0])
PAD = [[0, 0], [0, 0]]  # a padding person: no valid joint


def _joints(*people):
  """(1, P, J=2, 2) int32 from per-person [[index, valid], [index, valid]] lists."""
  return jnp.asarray([list(people)], jnp.int32)


def test_ae_loss_no_people_is_zero():
  pull, push = losses.ae_loss(TAGS, _joints(PAD, PAD))
  np.testing.assert_allclose([pull[0], push[0]], [0.0, 0.0])


def test_ae_loss_one_person_pull_only():
  # Joint 0 at x=0 (tag 1), joint 1 at x=1 (tag 3): mean 2, pull ((1-2)^2 + (3-2)^2) / 2 = 1.
  person = [[_index(0, 0), 1], [_index(1, 1), 1]]
  pull, push = losses.ae_loss(TAGS, _joints(PAD, person, PAD))
  np.testing.assert_allclose([pull[0], push[0]], [1.0, 0.0], rtol=1e-6)


def test_ae_loss_three_people():
  a = [[_index(0, 0), 1], [_index(1, 1), 1]]  # tags 1, 3: t = 2, pull 1
  b = [[_index(0, 2), 1], [_index(1, 0), 0]]  # tag 5 (second joint invalid): t = 5, pull 0
  c = [[_index(0, 1), 1], [_index(1, 2), 1]]  # tags 7, 4: t = 5.5, pull 2.25
  pull, push = losses.ae_loss(TAGS, _joints(a, PAD, b, c))
  expected_pull = (1.0 + 0.0 + 2.25) / 3
  # Ordered pairs p != q: 2 * [exp(-(2-5)^2) + exp(-(2-5.5)^2) + exp(-(5-5.5)^2)], / (3*2) * 0.5.
  expected_push = 2 * (math.exp(-9.0) + math.exp(-12.25) + math.exp(-0.25)) / 6 * 0.5
  np.testing.assert_allclose(pull[0], expected_pull, rtol=1e-6)
  np.testing.assert_allclose(push[0], expected_push, rtol=1e-6)


def test_ae_loss_ignores_invalid_joint_indices():
  # An invalid joint whose index points anywhere (even out of range) must not count.
  a = [[_index(0, 0), 1], [_index(1, 1), 1]]
  junk = [[_index(0, 0), 1], [999, 0]]  # one valid joint (tag 1): t = 1, pull 0
  pull, push = losses.ae_loss(TAGS, _joints(a, junk))
  np.testing.assert_allclose(pull[0], 1.0 / 2, rtol=1e-6)
  np.testing.assert_allclose(push[0], 2 * math.exp(-1.0) / 2 * 0.5, rtol=1e-6)


def test_ae_loss_reads_tags_in_joint_major_layout():
  # h=2, w=2, J=2; the flat index is j*h*w + y*w + x into the (J, h, w) layout.
  tags = np.zeros((1, 2, 2, 2), np.float32)
  tags[0, 1, 0, 1] = 6.0  # y=1, x=0, j=1 -> index 1*4 + 1*2 + 0 = 6
  tags[0, 0, 1, 0] = 2.0  # y=0, x=1, j=0 -> index 0*4 + 0*2 + 1 = 1
  joints = jnp.asarray([[[[1, 1], [6, 1]]]], jnp.int32)
  pull, _ = losses.ae_loss(jnp.asarray(tags), joints)
  np.testing.assert_allclose(pull[0], ((2 - 4) ** 2 + (6 - 4) ** 2) / 2, rtol=1e-6)


def test_heatmap_loss_ignores_masked_pixels_and_averages_all_pixels():
  pred = np.zeros((1, 2, 2, 3), np.float32)
  target = np.zeros((1, 2, 2, 3), np.float32)
  pred[0, 0, 0] = [1.0, 2.0, 0.0]  # valid pixel: squared errors 1 + 4
  pred[0, 1, 1] = [100.0, 100.0, 100.0]  # masked pixel: ignored
  mask = np.array([[[1.0, 1.0], [1.0, 0.0]]], np.float32)
  loss = losses.heatmap_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
  np.testing.assert_allclose(loss, [5.0 / (2 * 2 * 3)], rtol=1e-6)


class _Outputs:
  """Stands in for PoseOutputs: pose_loss only reads the three fields."""

  def __init__(self, heatmaps_4, tags_4, heatmaps_2):
    self.heatmaps_4, self.tags_4, self.heatmaps_2 = heatmaps_4, tags_4, heatmaps_2


@pytest.mark.slow
def test_pose_loss_weights_and_batch_average():
  # Two images; J=2, 1/4 maps 1x3, 1/2 maps 2x6. Image 0 has the three-person case above,
  # image 1 has nobody. Heatmap errors: image 0 one pixel off by 3 at 1/4 (9/6), image 1 all
  # pixels off by 1 at 1/2 (1), masks all valid.
  tags = jnp.concatenate([TAGS, TAGS])
  a = [[_index(0, 0), 1], [_index(1, 1), 1]]
  b = [[_index(0, 2), 1], [_index(1, 0), 0]]
  c = [[_index(0, 1), 1], [_index(1, 2), 1]]
  joints = jnp.asarray([[a, PAD, b, c], [PAD, PAD, PAD, PAD]], jnp.int32)
  hm4 = np.zeros((2, 1, 3, 2), np.float32)
  hm4[0, 0, 0, 0] = 3.0
  hm2 = np.zeros((2, 2, 6, 2), np.float32)
  hm2[1] = 1.0
  batch = {
      "heatmaps_4": np.zeros((2, 1, 3, 2), np.float32),
      "heatmaps_2": np.zeros((2, 2, 6, 2), np.float32),
      "mask_4": np.ones((2, 1, 3), np.float32),
      "mask_2": np.ones((2, 2, 6), np.float32),
      "joints_4": joints,
  }
  weights = losses.LossWeights(heatmap_4=1.0, heatmap_2=2.0, pull=1e-3, push=1e-2)
  total, parts = losses.pose_loss(_Outputs(jnp.asarray(hm4), tags, jnp.asarray(hm2)), batch,
                                  weights)
  pull_0 = (1.0 + 0.0 + 2.25) / 3
  push_0 = (math.exp(-9.0) + math.exp(-12.25) + math.exp(-0.25)) / 6
  expected = {
      "heatmap_4": 1.0 * (9.0 / 6 + 0.0) / 2,
      "heatmap_2": 2.0 * (0.0 + 1.0) / 2,
      "pull": 1e-3 * (pull_0 + 0.0) / 2,
      "push": 1e-2 * (push_0 + 0.0) / 2,
  }
  for name, value in expected.items():
    np.testing.assert_allclose(parts[name], value, rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(total, sum(expected.values()), rtol=1e-6)


@pytest.mark.parametrize("people", [0, 1, 2])
def test_ae_loss_gradients_are_finite_with_few_people(people):
  person = [[_index(0, 0), 1], [_index(1, 1), 1]]
  joints = _joints(*([person] * people + [PAD] * (3 - people)))
  grad = jax.grad(lambda t: sum(x.sum() for x in losses.ae_loss(t, joints)))(TAGS)
  assert np.all(np.isfinite(grad))
