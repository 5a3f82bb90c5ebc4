"""Grouping on maps kept on the JAX device (`device_maps.DeviceMaps`) equals the host's.

The device runs refine's search in its own float32 arithmetic and certifies each answer; the
people must equal `grouping.HostMaps`' exactly (the host finishes any uncertain query), on the
reference's fixture cases and on dense noisy maps full of exact ties.
"""

import json

import jax
import numpy as np
import pytest

from ehrnet_jax import keypoints
from ehrnet_jax.inference import device_maps, grouping
from support.dense_maps import dense_maps


def _device_maps(heatmaps, tags, config=grouping.GroupingConfig()):
  """DeviceMaps over one image's NumPy maps, with candidates found on the host."""
  stacked = np.concatenate([heatmaps[None], np.moveaxis(tags, -1, 0)])[:, None]  # (1+T, 1, J, H, W)
  candidates = grouping.top_k_candidates(heatmaps, tags, config)
  joint = np.broadcast_to(np.arange(len(heatmaps))[:, None], candidates.values.shape)
  offsets = np.stack(grouping.quarter_offsets(heatmaps, joint, *np.moveaxis(candidates.xy, -1, 0)),
                     -1).astype(np.float32)
  tiled = device_maps.tile_summaries(jax.device_put(stacked), config.refine_tile)
  return device_maps.DeviceMaps(tiled, heatmaps.shape[1:], 0, candidates, offsets, config)


@pytest.mark.parametrize("size_hw, quantise", [((61, 45), False), ((96, 128), True)])
def test_device_refine_equals_host_refine(size_hw, quantise):
  heatmaps, tags = dense_maps(size_hw, quantise)
  config = grouping.GroupingConfig(detection_threshold=0.2)
  host, host_scores = grouping.parse(heatmaps, tags, config=config)
  device = _device_maps(heatmaps, tags, config)
  people, scores = grouping.parse_maps(device, config=config)
  assert len(people) > 3 and (people[:, :, 2] > 0).sum() > (host[:, :, 2] > 0).sum() / 2
  np.testing.assert_array_equal(people, host)
  np.testing.assert_array_equal(scores, host_scores)
  # Only the queries' answers came back (21 bytes each), no map.
  assert device.host_fallbacks == 0
  assert device.fetched_bytes < (heatmaps.nbytes + tags.nbytes) / 4


def test_uncertain_answers_are_finished_on_the_host(monkeypatch):
  """With a huge assumed device error every pixel is uncertain: the host answers each query
  from that joint's maps alone, and the people are still the host's."""
  heatmaps, tags = dense_maps((61, 45), False)
  config = grouping.GroupingConfig(detection_threshold=0.2)
  monkeypatch.setattr(device_maps, "_RELATIVE_ERROR", 0.5)
  device = _device_maps(heatmaps, tags, config)
  people, _ = grouping.parse_maps(device, config=config)
  np.testing.assert_array_equal(people, grouping.parse(heatmaps, tags, config=config)[0])
  assert device.host_fallbacks > 0


@pytest.mark.slow
def test_device_grouping_matches_reference(reference_dir):
  """Three of the twelve fixture cases (each map size compiles the search; the host path runs
  all twelve in test_group.py): both orientations and the crowd of 44 people."""
  expected = json.loads((reference_dir / "grouping_expected.json").read_text())["cases"]
  cases = np.load(reference_dir / "grouping_cases.npz")
  for index in (2, 8, 11):
    want = expected[index]
    heatmaps, tags = cases[f"heatmaps_{index}"][0], cases[f"tags_{index}"][0]
    people, scores = grouping.parse_maps(_device_maps(heatmaps, tags), keypoints.COCO)
    np.testing.assert_allclose(people, np.asarray(want["parsed"]).reshape(people.shape),
                               rtol=0, atol=1e-5)   # the JSON keeps float32 values as decimals
    np.testing.assert_allclose(scores, want["scores"], rtol=0, atol=1e-5)
