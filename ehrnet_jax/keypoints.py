"""Keypoint sets: joint names, left/right flip pairs, skeletons and OKS sigmas.

COCO's 17 person keypoints are the default everywhere; other sets (e.g. CrowdPose's 14 joints)
are described by a `KeypointSet` with their own names and flip pairs.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class KeypointSet:
  """Names of the joints, the flip permutation, the skeleton edges (0-based) and the per-joint
  sigmas of object keypoint similarity (OKS: the spread of human annotators' clicks, relative to
  the person's scale)."""
  name: str
  joints: tuple[str, ...]
  flip_pairs: tuple[tuple[int, int], ...]
  skeleton: tuple[tuple[int, int], ...]
  # Order in which the associative-embedding grouping visits the joints.
  grouping_order: tuple[int, ...]
  sigmas: tuple[float, ...]

  @property
  def num_joints(self) -> int:
    return len(self.joints)

  @property
  def flip_index(self) -> tuple[int, ...]:
    """Permutation mapping each joint to its mirror image (left <-> right)."""
    index = list(range(self.num_joints))
    for a, b in self.flip_pairs:
      index[a], index[b] = b, a
    return tuple(index)


COCO = KeypointSet(
    name="coco",
    joints=("nose", "left_eye", "right_eye", "left_ear", "right_ear",
            "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
            "left_wrist", "right_wrist", "left_hip", "right_hip",
            "left_knee", "right_knee", "left_ankle", "right_ankle"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    # COCO's own skeleton (categories[0].skeleton), converted to 0-based indices.
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
              (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4),
              (3, 5), (4, 6)),
    # Head, shoulders, hips, elbows, wrists, knees, ankles (the reference's order).
    grouping_order=(0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16),
    # pycocotools' `Params.kpt_oks_sigmas`.
    sigmas=(0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107,
            0.107, 0.087, 0.087, 0.089, 0.089),
)

CROWDPOSE = KeypointSet(
    name="crowdpose",
    joints=("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
            "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
            "right_ankle", "head", "neck"),
    flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    skeleton=((12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5), (13, 6), (13, 7),
              (6, 8), (8, 10), (7, 9), (9, 11)),
    grouping_order=(12, 13, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
    # crowdposetools' `kpt_oks_sigmas`: COCO's for the limbs, 0.079 for head and neck.
    sigmas=(0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
            0.079, 0.079),
)

KEYPOINT_SETS = {s.name: s for s in (COCO, CROWDPOSE)}
