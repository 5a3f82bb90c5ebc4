"""Tracking people across frames (`ehrnet_jax.tracking`) on synthetic streams of real poses.

The streams (tests/support/synthetic_streams.py) move and scale people annotated in coco-mini (the
bundled sample annotations where ../shared is absent) along known paths, with pixel noise, missing
joints and hidden people, so that every row's true identity is known: identity switches are
counted against it. OKS and the One-Euro filter are checked against hand-computed values.
"""

import numpy as np
import pytest
from pycocotools.cocoeval import Params

from ehrnet_jax import keypoints, samples, tracking
from ehrnet_jax.errors import UserError
from support.synthetic_streams import FRAMES, Walker, identity_switches, real_poses, stream

# Weight of a new sample in a first-order low-pass of cutoff 1 Hz at 30 frames/s:
# r / (1 + r), r = 2 pi / 30.
ALPHA_1HZ_30FPS = 0.1731707195491541


@pytest.fixture(scope="module")
def poses(request) -> list[np.ndarray]:
  """Six real poses: coco-mini's best-labelled people, else the bundled sample's."""
  try:
    annotation_file = (request.getfixturevalue("coco_mini_dir") / "annotations"
                       / "person_keypoints_train2017.json")
  except pytest.skip.Exception:
    annotation_file = samples.annotation_file()
  return real_poses(annotation_file, 6)


def test_oks_matches_a_hand_computed_value():
  sigmas = (0.1, 0.2, 0.3)
  a = np.array([[[0, 0, 1], [6, 8, 1], [3, 3, 0.5]]])   # box 6 x 8
  b = np.array([[[1, 0, 1], [6, 8, 1], [0, 0, 0]],      # box 5 x 8; joint 2 undetected
                [[0, 0, 0], [0, 0, 0], [3, 3, 1]]])     # only joint 2 in common with a
  # Joints 0 and 1 are detected in both: mean area (48 + 40) / 2 = 44, k_0 = 2 * 0.1;
  # joint 0 is 1 px away: exp(-1 / (2 * 44 * 0.04)) = 0.752698..., joint 1 matches exactly.
  # The second person shares only joint 2 (a single point: box area 0, mean area 24) at 0 px.
  expected = [[(0.752698214485371 + 1) / 2, 1.0]]
  np.testing.assert_allclose(tracking.keypoint_similarity(a, b, sigmas), expected, rtol=1e-12)
  np.testing.assert_allclose(tracking.keypoint_similarity(b, a, sigmas), np.transpose(expected),
                             rtol=1e-12)   # symmetric
  b[1, 2, 2] = 0   # now nothing in common
  assert tracking.keypoint_similarity(a, b, sigmas)[0, 1] == 0


def test_the_assignment_is_optimal_not_greedy():
  # Greedy takes 0.9 first and is left with 0.1 (below 0.3); the optimum pairs 0.8 + 0.85.
  similarity = np.array([[0.9, 0.8], [0.85, 0.1]])
  rows, columns = tracking.matched_pairs(similarity, 0.3)
  assert (rows.tolist(), columns.tolist()) == ([0, 1], [1, 0])
  # Pairs below min_similarity stay unpaired even when nothing else competes.
  rows, columns = tracking.matched_pairs(np.array([[0.25, 0.0]]), 0.2)
  assert (rows.tolist(), columns.tolist()) == ([0], [0])
  assert tracking.matched_pairs(np.array([[0.25, 0.0]]), 0.3)[0].tolist() == []
  assert tracking.matched_pairs(np.array([[0.0]]), 0.0)[0].tolist() == []   # nothing in common


def test_the_keypoint_sets_carry_cocos_oks_sigmas():
  # pycocotools' own values; CrowdPose's are COCO's per limb (crowdposetools).
  # pycocotools writes them as tenths divided by 10: equal to rounding.
  np.testing.assert_allclose(keypoints.COCO.sigmas, Params(iouType="keypoints").kpt_oks_sigmas,
                             rtol=1e-15)
  coco = dict(zip(keypoints.COCO.joints, keypoints.COCO.sigmas))
  crowd = dict(zip(keypoints.CROWDPOSE.joints, keypoints.CROWDPOSE.sigmas))
  assert {j: crowd[j] for j in crowd if j in coco} == {j: coco[j] for j in crowd if j in coco}
  assert len(keypoints.CROWDPOSE.sigmas) == keypoints.CROWDPOSE.num_joints


def _walkers(poses, seed: int) -> list[Walker]:
  """Four people on random straight paths across a 640 x 360 frame, swaying and changing scale
  by up to 30%; the first one hidden for 5 frames mid-stream."""
  rng = np.random.default_rng(seed)
  walkers = []
  for i, pose in enumerate(poses[:4]):
    start, end = rng.uniform((80, 80), (560, 280), (2, 2))
    height = rng.uniform(100, 200)
    walkers.append(Walker(pose, tuple(start), tuple(end), (height, height * rng.uniform(0.7, 1.3)),
                          sway=rng.uniform(0, 20), hidden=range(30, 35) if i == 0 else range(0)))
  return walkers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smooth_streams_have_no_identity_switch(poses, seed):
  people, truth = stream(_walkers(poses, seed), seed)
  ids = tracking.track_poses(people)
  assert identity_switches(truth, ids) == 0
  assert np.unique(np.concatenate(ids)).tolist() == [0, 1, 2, 3]   # no track lost either


@pytest.mark.parametrize("second", [0, 1])
def test_two_people_crossing_keep_their_ids(poses, second):
  # Face to face at the same height and scale, they pass each other between frames 29 and 30.
  # With the same pose (second = 0) only their motion tells them apart: matching each track's
  # last pose instead of its constant-velocity prediction switches both ids there.
  walkers = [Walker(poses[0], (100, 180), (540, 180)),
             Walker(poses[second], (540, 180), (100, 180))]
  people, truth = stream(walkers, seed=3)
  ids = tracking.track_poses(people)
  assert identity_switches(truth, ids) == 0
  first, last = ids[0][np.argsort(truth[0])], ids[-1][np.argsort(truth[-1])]
  assert first.tolist() == last.tolist() and sorted(first.tolist()) == [0, 1]
  # The crossing tests something: the two people's mean x come within 10 px of each other.
  mean_x = [[p[i, p[i, :, 2] > 0, 0].mean() for i in np.argsort(t)] for p, t in zip(people, truth)]
  assert min(abs(a - b) for a, b in mean_x) < 10


@pytest.mark.parametrize("hidden_frames, same_id", [(5, True), (10, True), (11, False)])
def test_ids_survive_gaps_up_to_max_gap(poses, hidden_frames, same_id):
  # A person walking past a standing one is hidden for a while (the default max_gap is 10).
  assert tracking.TrackerConfig().max_gap == 10
  walkers = [Walker(poses[2], (100, 200), (500, 150), hidden=range(20, 20 + hidden_frames)),
             Walker(poses[3], (320, 200), (320, 200))]
  people, truth = stream(walkers, seed=4)
  ids = tracking.track_poses(people)
  before = [i[t == 0] for i, t in zip(ids[:20], truth[:20])]
  after = [i[t == 0] for i, t in zip(ids[20 + hidden_frames:], truth[20 + hidden_frames:])]
  assert np.unique(before).tolist() == [before[0][0]]
  assert np.unique(after).tolist() == ([before[0][0]] if same_id else [2])   # 2: the next id
  assert identity_switches(truth, ids) == (0 if same_id else 1)


def test_new_people_get_new_ids_counting_up(poses):
  walkers = [Walker(poses[0], (100, 100), (200, 100)), Walker(poses[1], (500, 250), (400, 250)),
             Walker(poses[4], (300, 100), (300, 300), present=(10, FRAMES)),
             Walker(poses[5], (550, 100), (100, 100), present=(25, 40))]
  people, truth = stream(walkers, seed=5)
  ids = tracking.track_poses(people)
  assert ids[0].tolist() == [0, 1]   # in row order
  assert dict(zip(truth[10].tolist(), ids[10].tolist()))[2] == 2
  assert dict(zip(truth[25].tolist(), ids[25].tolist()))[3] == 3
  assert identity_switches(truth, ids) == 0
  first_ids = dict(zip(truth[10].tolist(), ids[10].tolist()))
  assert ids[45].tolist() == [first_ids[t] for t in truth[45].tolist()]   # 3 has left


def _still_person(poses, frames: int, noise_px: float, seed: int) -> list[np.ndarray]:
  walker = Walker(poses[0], (320, 180), (320, 180), present=(0, frames))
  return stream([walker], seed, noise_px=noise_px, missing=0.0, frames=frames)[0]


@pytest.mark.parametrize("beta, factor", [(0.0, None), (tracking.OneEuroConfig().beta, 5)])
def test_one_euro_filter_reduces_jitter(poses, beta, factor):
  people = _still_person(poses, 300, noise_px=2.0, seed=6)
  tracker = tracking.Tracker(config=tracking.TrackerConfig(
      smoothing=tracking.OneEuroConfig(beta=beta)))
  smoothed = []
  for frame in people:
    assert tracker.update(frame).tolist() == [0]
    smoothed.append(tracker.smoothed[0, :, :2])
  raw = np.stack(people)[50:, 0, :, :2]   # after the filter's start-up
  ratio = np.stack(smoothed)[50:].var(0).mean() / raw.var(0).mean()
  if factor is None:
    # With beta 0 a first-order low-pass y += a (x - y): white noise's variance times a / (2 - a).
    # 250 x 34 correlated samples: the estimate is good to ~5%; 15% leaves room.
    expected = ALPHA_1HZ_30FPS / (2 - ALPHA_1HZ_30FPS)
    assert ratio == pytest.approx(expected, rel=0.15)
  else:   # the defaults let the noise's apparent speed open the cutoff a little
    assert ratio < 1 / factor


@pytest.mark.parametrize("fps", [None, 60])
def test_one_euro_filter_follows_a_step_with_a_bounded_lag(poses, fps):
  # A still person jumps 10 px right at frame 5: with beta 0 the filter is a first-order low-pass,
  # n frames later 10 (1 - (1 - a)^n) along (a from the frame interval: r / (1 + r), r = 2 pi dt);
  # with beta > 0 the cutoff only rises, so it lags less, but it still lags.
  people = _still_person(poses, 16, noise_px=0.0, seed=7)
  for frame in people[5:]:
    frame[..., 0] = np.where(frame[..., 2] > 0, frame[..., 0] + 10, 0)
  alpha = ALPHA_1HZ_30FPS if fps is None else 0.09479305012366404   # 60 fps
  bound = [10 * (1 - (1 - alpha) ** n) for n in range(1, 11)]
  assert bound[4] == pytest.approx(6.1356252179637 if fps is None else 3.922298052575879)
  for beta in (0.0, tracking.OneEuroConfig().beta):
    tracker = tracking.Tracker(config=tracking.TrackerConfig(
        smoothing=tracking.OneEuroConfig(beta=beta)))
    moved = []
    for index, frame in enumerate(people):
      tracker.update(frame, None if fps is None else index / fps)
      detected = frame[0, :, 2] > 0
      moved.append(tracker.smoothed[0, detected, 0] - people[0][0, detected, 0])
    moved = np.stack(moved[5:15])   # (10 frames after the step, joints)
    if beta == 0:   # float32 outputs of ~300 px: 1e-4 px
      np.testing.assert_allclose(moved, np.broadcast_to(np.array(bound)[:, None], moved.shape),
                                 atol=1e-4)
    else:
      assert (moved >= np.array(bound)[:, None] - 1e-4).all() and (moved < 10).all()


def test_smoothed_is_the_input_without_smoothing():
  people = np.random.default_rng(8).uniform(1, 100, (3, 17, 4)).astype(np.float32)
  people[1, 5] = 0
  people[2, 6, 2] = 0.05   # at most min_keypoint_score: undetected, all zero
  tracker = tracking.Tracker(config=tracking.TrackerConfig(min_keypoint_score=0.1))
  tracker.update(people)
  expected = people[..., :3].copy()
  expected[2, 6] = 0
  assert tracker.smoothed.dtype == np.float32
  np.testing.assert_array_equal(tracker.smoothed, expected)
  with pytest.raises(ValueError):
    tracker.smoothed[0, 0, 0] = 1   # read-only


@pytest.mark.parametrize("people, message", [
    (np.zeros((17, 3)), r"people: expected a number array \(P, 17, >=3\).*\(17, 3\)"),
    (np.zeros((2, 14, 3)), r"\(P, 17, >=3\).*\(2, 14, 3\)"),
    (np.zeros((2, 17, 2)), r"\(P, 17, >=3\).*\(2, 17, 2\)"),
    (np.full((1, 17, 3), "a"), r"\(P, 17, >=3\).*<U1"),
    (np.full((1, 17, 3), np.nan), "people: expected finite"),
])
def test_bad_people_are_refused_naming_the_expected_shape(people, message):
  with pytest.raises(UserError, match=message):
    tracking.Tracker().update(people)


def test_bad_timestamps_and_configs_are_refused():
  tracker = tracking.Tracker()
  tracker.update(np.zeros((0, 17, 3)), 1.0)
  with pytest.raises(UserError, match="timestamp: expected times that increase"):
    tracker.update(np.zeros((0, 17, 3)), 1.0)
  with pytest.raises(UserError, match="max_gap"):
    tracking.TrackerConfig(max_gap=-1)
  with pytest.raises(UserError, match="min_similarity"):
    tracking.TrackerConfig(min_similarity=1.5)
  with pytest.raises(UserError, match="min_cutoff"):
    tracking.OneEuroConfig(min_cutoff=0)
  with pytest.raises(UserError, match="beta"):
    tracking.OneEuroConfig(beta=-1)


def test_the_crowdpose_set_tracks_its_own_joints():
  person = np.zeros((1, 14, 3))
  person[0, :, :2] = np.random.default_rng(9).uniform(0, 100, (14, 2))
  person[0, :, 2] = 1
  ids = tracking.track_poses([person, person + [1, 1, 0], person[:0]], keypoints.CROWDPOSE)
  assert [i.tolist() for i in ids] == [[0], [0], []]
  with pytest.raises(UserError, match=r"\(P, 14, >=3\) of x, y, score per crowdpose joint"):
    tracking.Tracker(keypoints.CROWDPOSE).update(np.zeros((1, 17, 3)))


def test_a_joint_missing_for_a_frame_resumes_its_filter(poses):
  # Beta 0: a first-order low-pass per joint. Joint 0 is missing in frame 1 (zero in `smoothed`),
  # then seen 10 px right in frame 2: one step over 2 / 30 s, a = r / (1 + r), r = 4 pi / 30,
  # so 0.2952183 of the way.
  frames = [Walker(poses[0], (320, 180), (320, 180)).at(0) for _ in range(3)]
  assert frames[0][0, 2] > 0
  frames[1][0] = 0
  frames[2][0, 0] += 10
  tracker = tracking.Tracker(config=tracking.TrackerConfig(
      smoothing=tracking.OneEuroConfig(beta=0.0)))
  outputs = []
  for frame in frames:
    assert tracker.update(frame[None]).tolist() == [0]
    outputs.append(tracker.smoothed[0, 0])
  assert outputs[1].tolist() == [0, 0, 0]
  assert outputs[2][0] == pytest.approx(frames[0][0, 0] + 2.952182775507781, abs=1e-4)  # float32
  assert outputs[2][1:].tolist() == pytest.approx(frames[2][0, 1:].tolist(), abs=1e-4)
