"""Network outputs rendered from real COCO keypoint annotations, for timing the grouping.

Random weights find hundreds of spurious people per image, which times the grouping of noise. These
outputs look like a trained network's instead: per visible keypoint a Gaussian peak (sigma 2 output
pixels, as HigherHRNet's targets; heights 0.5-1) over a faint background, and per person an
embedding value (people about 2 apart) near its joints over a smooth random tag field elsewhere,
with a little noise; the mirrored half of the batch is the exact mirror (flip test). They are the
three NHWC outputs `host_decoder.Backend` returns for one image at a test size, so they go through
the real decoders (aggregation, NMS, top-k) before the grouping.
"""

import json
import pathlib

import numpy as np

from ehrnet_jax import keypoints
from ehrnet_jax.inference import aggregation, transforms


def coco_people(annotation_file: pathlib.Path):
  """Yields (image_id, (w, h), keypoints (P, 17, 3)) of each image with keypoint-labelled people."""
  data = json.loads(annotation_file.read_text())
  people = {}
  for annotation in data["annotations"]:
    if annotation["num_keypoints"] > 0 and not annotation["iscrowd"]:
      people.setdefault(annotation["image_id"], []).append(annotation["keypoints"])
  for image in data["images"]:
    if image["id"] in people:
      yield (image["id"], (image["width"], image["height"]),
             np.asarray(people[image["id"]], np.float32).reshape(-1, 17, 3))


def _render(points, size_hw, rng):
  """heatmaps (h, w, J), tags (h, w, J) at one output resolution; points (P, J, 3) there."""
  h, w = size_hw
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  heatmaps = rng.uniform(0.0, 0.02, (h, w, 17)).astype(np.float32)
  coarse = rng.normal(0.0, 3.0, (17, h // 8 + 2, w // 8 + 2)).astype(np.float32)
  tags = transforms.resize_bilinear(coarse[None], (h, w))[0].transpose(1, 2, 0)
  embedding = rng.permutation(len(points)) * 2.0 - len(points)
  for person, joints in enumerate(points):
    for j, (x, y, visible) in enumerate(joints):
      if visible:
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        peak = rng.uniform(0.5, 1.0) * np.exp(-d2 / 8.0)                  # sigma 2
        heatmaps[..., j] = np.maximum(heatmaps[..., j], peak)
        near = d2 < 16.0
        tags[..., j][near] = embedding[person] + rng.normal(0.0, 0.1, near.sum())
  return heatmaps, tags


def rendered_outputs(people, image_wh, input_size: int, seed: int = 0):
  """The network outputs at the test size of an image of `image_wh` whose people are `people`
  (image pixels): heatmaps_4, tags_4, heatmaps_2 NHWC for [image, mirrored image], and the test
  size (`transforms.TestSize`)."""
  size = transforms.multi_scale_size(image_wh, input_size, 1.0, 1.0)
  matrix = transforms.affine_matrix(size.center, size.scale, size.size_wh)
  w, h = size.size_wh
  rng = np.random.default_rng(seed)
  outputs = []
  for factor in (4, 2):
    points = np.concatenate([(people[..., :2] @ matrix[:, :2].T + matrix[:, 2] + 0.5) / factor
                             - 0.5, people[..., 2:] > 0], -1)
    outputs.append(_render(points, (h // factor, w // factor), rng))
  (heatmaps_4, tags_4), (heatmaps_2, _) = outputs
  flip = np.asarray(keypoints.COCO.flip_index)
  mirror = lambda m: m[:, ::-1][..., flip]
  return ([np.stack([m, mirror(m)]) for m in (heatmaps_4, tags_4, heatmaps_2)], size)


def rendered_maps(people, image_wh, input_size: int, seed: int = 0):
  """The grouping's maps from `rendered_outputs` through the host aggregation (flip test):
  heatmaps (J, H, W), tags (J, H, W, 2)."""
  outputs, size = rendered_outputs(people, image_wh, input_size, seed)
  maps = aggregation.scale_maps(*outputs, size.size_wh[::-1], keypoints.COCO.flip_index)
  heatmaps, tags = aggregation.split_maps(maps)
  return np.ascontiguousarray(heatmaps[0]), np.ascontiguousarray(tags[0])
