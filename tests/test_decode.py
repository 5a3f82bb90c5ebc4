"""On-device decoding: resizing, flip/aggregation, NMS + top-k, and the oracle evaluation path."""

import json

import cv2
import numpy as np
import pytest

from ehrnet_jax import images as images_lib
from ehrnet_jax import inference
from ehrnet_jax import keypoints
from ehrnet_jax.inference import coco_results, grouping, jax_decoder, transforms

FLIP = keypoints.COCO.flip_index
J = keypoints.COCO.num_joints


@pytest.mark.parametrize("size_in, size_out", [((24, 40), (48, 80)), ((48, 81), (32, 54)),
                                               ((37, 29), (64, 64))])
def test_resize_matches_jax_image(size_in, size_out):
  """Bilinear, half-pixel centres, no antialias: ours with NumPy (OpenCV per plane) and with jnp
  (separable formula) == jax.image.resize."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  maps = np.random.default_rng(0).normal(size=(2, 3, *size_in)).astype(np.float32)
  expected = jax.image.resize(maps, (2, 3, *size_out), "linear", antialias=False)
  # Different evaluation orders (OpenCV, XLA's fused multiply-adds, jax.image's weights): a few
  # ulps at |maps| <= ~4 (ulp 4.8e-7).
  np.testing.assert_allclose(transforms.resize_bilinear(maps, size_out), expected, atol=1e-5)
  np.testing.assert_allclose(jax.jit(transforms.resize_bilinear, static_argnums=(1, 2))(
      maps, size_out, jnp), expected, atol=1e-5)


def test_nms_top_k_matches_reference(reference_dir):
  """Device NMS + top-k on a fixture case gives the reference's candidates above threshold."""
  case = 5
  expected = json.loads((reference_dir / "grouping_expected.json").read_text())["cases"][case]
  cases = np.load(reference_dir / "grouping_cases.npz")
  heatmaps, tags = cases[f"heatmaps_{case}"], cases[f"tags_{case}"]
  # Exact: NMS and top-k only select and copy the stored float32 values, no arithmetic.
  xy, values, candidate_tags = map(np.asarray, jax_decoder.nms_top_k(heatmaps, tags, 30, 5))
  for joint, want in enumerate(expected["topk_above_threshold"]):
    above = values[0, joint] > 0.1
    got = np.concatenate([xy[0, joint][above], values[0, joint][above, None],
                          candidate_tags[0, joint][above]], axis=1)
    np.testing.assert_array_equal(got, np.asarray(want, np.float32).reshape(-1, 5))


def _toy_network(images, xp):
  """A fixed, asymmetric stand-in for the network: pooled pixels through fixed projections."""
  b, h, w, _ = images.shape
  weights = np.random.default_rng(1).normal(size=(3, 3 * J)).astype(np.float32)
  pooled_4 = images.reshape(b, h // 4, 4, w // 4, 4, 3).mean(axis=(2, 4))
  pooled_2 = images.reshape(b, h // 2, 2, w // 2, 2, 3).mean(axis=(2, 4))
  ramp = xp.arange(w // 4, dtype=xp.float32) / 100        # makes left and right differ
  heatmaps_4 = xp.sin(pooled_4 @ weights[:, :J]) + ramp[:, None]
  tags_4 = pooled_4 @ weights[:, J:2 * J]
  heatmaps_2 = xp.cos(pooled_2 @ weights[:, 2 * J:])
  return heatmaps_4, tags_4, heatmaps_2


def _jax_decoder(flip=True, **kwargs):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return jax_decoder.JaxDecoder(lambda _, x: _toy_network(x, jnp), None,
                           flip_index=FLIP if flip else None, **kwargs)


def _host_maps(maps) -> tuple[np.ndarray, np.ndarray]:
  """A batch's heatmaps (B, J, H, W) and tags (B, J, H, W, T) on the host, from either decoder."""
  images = [m.to_host() for m in maps.images]
  return np.stack([m.heatmaps for m in images]), np.stack([m.tags for m in images])


def _random_images(shape):
  return np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)


def test_flip_and_projection_match_plain_numpy():
  """Single scale with flip, against the reference's recipe spelled out with OpenCV."""
  images = _random_images((2, 64, 96, 3))
  base_hw = (64, 96)
  maps = _jax_decoder()([(1.0, images)], base_hw)

  def resize(maps_hwc, size_hw):  # OpenCV takes at most 512 channels; these have 17
    return np.stack([cv2.resize(m, size_hw[::-1], interpolation=cv2.INTER_LINEAR)
                     for m in np.moveaxis(maps_hwc, -1, 0)], -1)

  heatmaps, tags = _host_maps(maps)
  x = images_lib.normalize(images)
  for b in range(2):
    views_heat, views_tags = [], []
    for mirrored in (False, True):
      h4, t4, h2 = (o[0] for o in _toy_network(x[b:b + 1, :, ::-1] if mirrored else x[b:b + 1],
                                               np))
      heat = (resize(h4, (32, 48)) + h2) / 2
      tag = resize(t4, (32, 48))
      if mirrored:
        heat, tag = heat[:, ::-1][..., FLIP], tag[:, ::-1][..., FLIP]
      views_heat.append(resize(heat, base_hw))
      views_tags.append(resize(tag, base_hw))
    np.testing.assert_allclose(heatmaps[b], ((views_heat[0] + views_heat[1]) / 2)
                               .transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(tags[b], np.stack(views_tags, -1).transpose(2, 0, 1, 3),
                               atol=1e-5)


@pytest.mark.slow
def test_jax_and_host_decoders_agree_multiscale():
  """Multi-scale (0.5, 1, 1.5) with flip: the JAX decoder equals the NumPy (host) decoder."""
  image = _random_images((150, 100, 3))
  estimator_sizes = transforms.pyramid_sizes((100, 150), 128, (0.5, 1.0, 1.5))
  assert [s.size_wh for _, s in estimator_sizes] == [(192, 384), (128, 256), (64, 128)]
  pyramid = [(s, transforms.warp_image(image, size)[None]) for s, size in estimator_sizes]
  base_hw = estimator_sizes[1][1].size_wh[::-1]
  device = _host_maps(_jax_decoder()(pyramid, base_hw))
  host = _host_maps(inference.HostDecoder(lambda x: _toy_network(x, np), FLIP)(pyramid, base_hw))
  assert device[0].shape == host[0].shape == (1, J, 256, 128)
  assert device[1].shape == host[1].shape == (1, J, 256, 128, 2)
  np.testing.assert_allclose(device[0], host[0], atol=1e-5)
  np.testing.assert_allclose(device[1], host[1], atol=1e-5)


def test_bucketing_crops_back_to_the_exact_maps():
  """Padding the network input to a bucket leaves the maps' shape and the interior unchanged."""
  images = _random_images((1, 64, 128, 3))
  exact = _host_maps(_jax_decoder(flip=False)([(1.0, images)], (64, 128)))[0]
  bucketed = _host_maps(_jax_decoder(flip=False, bucket=256)([(1.0, images)], (64, 128)))[0]
  assert bucketed.shape == exact.shape
  # The toy network is pointwise after pooling, so padding must not change anything beyond
  # rounding: the two programs differ in shape, so XLA may vectorise their sin and resize
  # differently (a few ulps of heatmaps up to ~2, ulp 2.4e-7).
  np.testing.assert_allclose(bucketed, exact, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Oracle: maps rendered from the ground truth must score AP >= 0.95 through the whole path.

def _render(points, size_hw, factor, sigma=4.0):
  """Gaussian heatmaps and per-person tags at 1/`factor` of the input, (h, w, J) each.

  `points` (P, J, 3): input-pixel x, y and a visible flag. The peak sits half a pixel up-left of
  the keypoint, where the reference's +0.5 decoding puts it back.
  """
  h, w = size_hw[0] // factor, size_hw[1] // factor
  centres_y = (np.arange(h) + 0.5) * factor - 0.5
  centres_x = (np.arange(w) + 0.5) * factor - 0.5
  heatmaps = np.zeros((h, w, J), np.float32)
  tags = np.full((h, w, J), -100.0, np.float32)
  for person, joints in enumerate(points):
    for j, (x, y, visible) in enumerate(joints):
      if visible:
        d2 = (centres_y[:, None] - (y - 0.5)) ** 2 + (centres_x[None] - (x - 0.5)) ** 2
        heatmaps[..., j] = np.maximum(heatmaps[..., j], np.exp(-d2 / (2 * sigma ** 2)))
        tags[..., j] = np.where(d2 < (2 * sigma) ** 2, person, tags[..., j])
  return heatmaps, tags


@pytest.mark.slow
def test_oracle_maps_reach_ap_095(coco_mini_dir):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  annotation_file = coco_mini_dir / "annotations" / "person_keypoints_train2017.json"
  ground_truth = coco_results.load_ground_truth(annotation_file)
  image_ids = sorted({a["image_id"] for a in ground_truth.dataset["annotations"]
                      if a["num_keypoints"] > 0 and not a["iscrowd"]})

  def oracle_network(rendered, images):
    """Returns the rendered maps for the images and, mirrored, for the mirrored images."""
    del images
    mirrored = [m[:, :, ::-1][..., np.asarray(FLIP)] for m in rendered]
    return [jnp.concatenate([m, f]) for m, f in zip(rendered, mirrored)]

  decoder = jax_decoder.JaxDecoder(oracle_network, None, flip_index=FLIP)
  results = []
  for image_id in image_ids:
    info = ground_truth.imgs[image_id]
    people = np.array([a["keypoints"] for a in ground_truth.imgToAnns[image_id]
                       if a["num_keypoints"] > 0 and not a["iscrowd"]]).reshape(-1, J, 3)
    size = transforms.multi_scale_size((info["width"], info["height"]), 384, 1.0, 1.0)
    matrix = transforms.affine_matrix(size.center, size.scale, size.size_wh)
    points = np.concatenate([people[..., :2] @ matrix[:, :2].T + matrix[:, 2],
                             people[..., 2:] > 0], -1)
    size_hw = size.size_wh[::-1]
    heat_4, tags_4 = _render(points, size_hw, 4)
    heat_2, _ = _render(points, size_hw, 2)
    decoder.variables = tuple(m[None] for m in (heat_4, tags_4, heat_2))
    maps = decoder([(1.0, np.zeros((1, *size_hw, 3), np.uint8))], size_hw)
    found, scores = grouping.parse_maps(maps.images[0])
    found = transforms.map_to_image(found, size.center, size.scale, size.size_wh)
    results += coco_results.person_results(image_id, found, scores)
  stats = coco_results.evaluate_keypoints(ground_truth, results, image_ids)
  assert stats["AP"] >= 0.95, stats
