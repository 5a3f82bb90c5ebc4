"""Grouping parity with the reference parser (fixtures/reference/grouping_*); refine's search."""

import json

import numpy as np
import pytest

from ehrnet_jax import keypoints
from ehrnet_jax.inference import coco_results, grouping, transforms
from support.dense_maps import dense_maps

NUM_CASES = 12


@pytest.fixture(scope="module")
def expected(reference_dir):
  return json.loads((reference_dir / "grouping_expected.json").read_text())


@pytest.fixture(scope="module")
def cases(reference_dir):
  return np.load(reference_dir / "grouping_cases.npz")


def _people(value, tag_dim=2):
  """A list of people (lists of J joints) as a float (P, J, 3 + T) array, empty lists included."""
  return np.asarray(value, np.float64).reshape(-1, keypoints.COCO.num_joints, 3 + tag_dim)


def test_settings_are_the_defaults(expected):
  settings, config = expected["settings"], grouping.GroupingConfig()
  assert settings["DETECTION_THRESHOLD"] == config.detection_threshold
  assert settings["TAG_THRESHOLD"] == config.tag_threshold
  assert settings["MAX_NUM_PEOPLE"] == config.max_num_people
  assert settings["NMS_KERNEL"] == config.nms_kernel
  assert tuple(settings["joint_order"]) == keypoints.COCO.grouping_order


def test_a_near_tie_breaks_as_in_the_reference(reference_dir):
  """At joint 10 of the grouping order two assignments cost the same in exact arithmetic; the
  reference's float32 costs pick the one that starts a fifth person (fixtures README)."""
  case = np.load(reference_dir / "grouping_tie_case.npz")
  candidates = grouping.Candidates(case["loc_k"], case["val_k"], case["tag_k"])
  matched = grouping.match_by_tag(candidates, keypoints.COCO.grouping_order)
  np.testing.assert_array_equal(matched, case["expected_people"])


@pytest.mark.parametrize("case", range(NUM_CASES))
def test_grouping_matches_reference(case, cases, expected):
  want = expected["cases"][case]
  heatmaps, tags = cases[f"heatmaps_{case}"][0], cases[f"tags_{case}"][0]

  candidates = grouping.top_k_candidates(heatmaps, tags)
  for joint, want_joint in enumerate(want["topk_above_threshold"]):
    above = candidates.values[joint] > 0.1
    got = np.concatenate([candidates.xy[joint][above], candidates.values[joint][above, None],
                          candidates.tags[joint][above]], axis=1)
    np.testing.assert_array_equal(got, np.asarray(want_joint, np.float32).reshape(-1, 5))

  matched = grouping.match_by_tag(candidates, keypoints.COCO.grouping_order)
  np.testing.assert_array_equal(matched, _people(want["matched"]).astype(np.float32))
  adjusted = grouping.adjust(matched, grouping.HostMaps(heatmaps, tags))
  np.testing.assert_array_equal(adjusted, _people(want["adjusted"]).astype(np.float32))
  scores = grouping.person_scores(adjusted)
  np.testing.assert_allclose(scores, want["scores"], rtol=0, atol=1e-5)
  refined = grouping.refine(adjusted, grouping.HostMaps(heatmaps, tags))
  np.testing.assert_allclose(refined, _people(want["parsed"]), rtol=0, atol=1e-5)

  # The one-call API gives the same, and so does the mapping to the image.
  people, parse_scores = grouping.parse(heatmaps, tags)
  np.testing.assert_array_equal(people, refined)
  np.testing.assert_array_equal(parse_scores, scores)
  final = transforms.map_to_image(people, want["center"], want["scale"], want["heatmap_size_wh"])
  np.testing.assert_allclose(final, _people(want["final"]), rtol=0, atol=1e-3)

  results = coco_results.person_results(want["image_id"], final, scores)
  assert len(results) == len(want["coco_results"])
  for got, ref in zip(results, want["coco_results"]):
    assert (got["image_id"], got["category_id"]) == (ref["image_id"], ref["category_id"])
    np.testing.assert_allclose(got["keypoints"], ref["keypoints"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(got["bbox"], ref["bbox"], rtol=0, atol=2e-3)
    assert got["score"] == pytest.approx(ref["score"], abs=1e-5)


def _refine_by_full_scan(people, heatmaps, tags):
  """The refine rule written plainly: one full-map argmax per (person, missing joint)."""
  people = people.copy()
  _, h, w = heatmaps.shape
  for person in people:
    found = person[:, 2] > 0
    x, y = person[:, 0].astype(int), person[:, 1].astype(int)
    mean_tag = np.mean([tags[j, y[j], x[j]] for j in np.flatnonzero(found)], axis=0)
    for j in np.flatnonzero(~found):
      objective = heatmaps[j] - np.round(np.sqrt(((tags[j] - mean_tag) ** 2).sum(-1)))
      row, col = np.unravel_index(np.argmax(objective), (h, w))
      value = heatmaps[j, row, col]
      if value > 0:
        step_x = 0.25 if heatmaps[j, row, min(col + 1, w - 1)] > heatmaps[j, row, max(col - 1, 0)] \
            else -0.25
        step_y = 0.25 if heatmaps[j, min(row + 1, h - 1), col] > heatmaps[j, max(row - 1, 0), col] \
            else -0.25
        person[j, :3] = col + 0.5 + step_x, row + 0.5 + step_y, value
  return people


@pytest.mark.parametrize("size_hw, quantise", [((61, 45), False), ((96, 128), True)])
def test_refine_equals_full_scan_on_dense_maps(size_hw, quantise):
  """Dense noisy maps (unlike the mostly-zero fixture), odd sizes, and many exact ties."""
  heatmaps, tags = dense_maps(size_hw, quantise)
  config = grouping.GroupingConfig(refine=False, detection_threshold=0.2)
  people, _ = grouping.parse(heatmaps, tags, config=config)
  assert len(people) > 3 and (people[:, :, 2] == 0).any()
  np.testing.assert_array_equal(grouping.refine(people, grouping.HostMaps(heatmaps, tags)),
                                _refine_by_full_scan(people, heatmaps, tags))


def test_no_detection_gives_no_people():
  heatmaps = np.full((17, 64, 96), 0.05, np.float32)
  people, scores = grouping.parse(heatmaps, np.zeros((17, 64, 96, 2), np.float32))
  assert people.shape == (0, 17, 5) and scores.shape == (0,)
  assert coco_results.person_results(1, people, scores) == []
