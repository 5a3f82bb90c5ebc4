"""Any image into a fixed network input: `transforms.fit_size`, `PoseEstimator(input_wh=...)` on
host and JAX decoders, and `--input-size`."""

import cv2
import numpy as np
import pytest

from ehrnet_jax import inference, keypoints
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import predict, transforms
from support import host_pose

J = keypoints.COCO.num_joints


@pytest.mark.parametrize("input_wh, scale, rows", [
    # 640x360 into 384x384: zoom min(384/640, 384/360) = 0.6, so the width fills the input:
    # 640 image pixels = 3.2 x 200 across and down; the 360 rows become 216, 84 black above.
    ((384, 384), (3.2, 3.2), (84, 300)),
    # into 640x384 (WxH): zoom min(1, 1.0667) = 1; 384 rows cover 1.92 x 200; 12 black above.
    ((640, 384), (3.2, 1.92), (12, 372)),
])
def test_a_16_9_frame_fits_centred_with_black_bands(input_wh, scale, rows):
  size = transforms.fit_size((640, 360), input_wh)
  assert size.size_wh == input_wh and size.center == (320, 180)
  np.testing.assert_allclose(size.scale, scale, rtol=1e-12)   # float64 of exact decimals
  warped = transforms.warp_image(np.full((360, 640, 3), 255, np.uint8), size)
  assert warped.shape == (input_wh[1], input_wh[0], 3)
  top, bottom = rows
  # Black bands (the reference pads its warp with 0) and the whole image between them: at a zoom
  # of 0.6 or 1 every band row falls outside the image and every image row inside it.
  assert (warped[:top] == 0).all() and (warped[bottom:] == 0).all()
  assert (warped[top:bottom] == 255).all()


@pytest.mark.parametrize("image_wh", [(640, 427), (427, 640), (500, 500), (641, 359), (300, 600),
                                      (1280, 720), (97, 301)])
@pytest.mark.parametrize("input_size", [384, 512])
def test_fitting_into_the_reference_test_size_is_the_reference_warp(image_wh, input_size):
  """Where the reference's size for an image holds it whole, it is the image fitted into that
  size: same centre, same scale (same floats), so a fixed-size model of that size gives exactly
  the reference's results (300x600 at 384 is a tie: both sides fill 384x768)."""
  reference = transforms.multi_scale_size(image_wh, input_size, 1.0, 1.0)
  assert transforms.fit_size(image_wh, reference.size_wh) == reference


def test_fitting_keeps_the_pixel_the_reference_rounding_cuts_off():
  """640x426 at 384: the reference zooms by 384 / 426 (576.9 pixels wide) into 576x384, cutting
  0.9 pixel off; fitted, the width fills: zoom 0.9, 640 pixels = 3.2 x 200 across."""
  reference = transforms.multi_scale_size((640, 426), 384, 1.0, 1.0)
  fitted = transforms.fit_size((640, 426), (576, 384))
  assert reference.size_wh == fitted.size_wh == (576, 384) and fitted.center == reference.center
  np.testing.assert_allclose(reference.scale, (576 / 384 * 2.13, 2.13), rtol=1e-12)
  np.testing.assert_allclose(fitted.scale, (3.2, 384 / 576 * 3.2), rtol=1e-12)


@pytest.mark.parametrize("image_wh, input_wh", [((640, 360), (384, 384)), ((360, 640), (640, 384)),
                                                ((1001, 333), (384, 288))])
def test_a_point_of_the_image_maps_back_through_the_warp(image_wh, input_wh):
  """A bright blob drawn at a known image point, warped by OpenCV, found in the network input
  (centroid) and mapped back by `map_to_image` lands on the point."""
  w, h = image_wh
  point = np.array([0.3 * w + 0.4, 0.7 * h - 0.2])
  ys, xs = np.mgrid[:h, :w]
  blob = np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 8.0 ** 2))
  image = np.repeat(np.round(255 * blob)[..., None], 3, -1).astype(np.uint8)
  size = transforms.fit_size(image_wh, input_wh)
  warped = transforms.warp_image(image, size)[..., 0].astype(np.float64)
  ys, xs = np.mgrid[:warped.shape[0], :warped.shape[1]]
  centroid = np.array([(xs * warped).sum(), (ys * warped).sum()]) / warped.sum()
  back = transforms.map_to_image(centroid, size.center, size.scale, size.size_wh)
  # Bilinear resampling and 8-bit rounding of a sigma-8 blob (>= 2.6 input pixels at these
  # zooms) move its centroid by well under 0.1 image pixel; a wrong centre or zoom by pixels.
  np.testing.assert_allclose(back, point, atol=0.1)


def test_fitted_pyramid_runs_the_same_region_at_every_scale():
  sizes = transforms.pyramid_sizes((640, 360), 384, (0.5, 1.0, 1.5), input_wh=(384, 256))
  fitted = transforms.fit_size((640, 360), (384, 256))
  assert [(s, size.size_wh) for s, size in sizes] == [(1.5, (576, 384)), (1.0, (384, 256)),
                                                      (0.5, (192, 128))]
  assert all((size.center, size.scale) == (fitted.center, fitted.scale) for _, size in sizes)
  with pytest.raises(UserError, match="scale 0.6 .* 230x154, which is not a multiple of 32"):
    transforms.pyramid_sizes((640, 360), 384, (0.6, 1.0), input_wh=(384, 256))


def test_input_size_flags_are_height_first_and_checked():
  assert transforms.parse_hw("384x640", "--input-size") == (384, 640)
  with pytest.raises(UserError, match="--input-size must be HxW"):
    transforms.parse_hw("384", "--input-size")
  with pytest.raises(UserError, match="--input-size 360x640: both sides must be positive "
                                      "multiples of 32"):
    transforms.parse_hw("360x640", "--input-size")
  with pytest.raises(UserError, match="multiples of 32"):
    inference.PoseEstimator(inference.HostDecoder(host_pose.content_backend), 384,
                            input_wh=(640, 360))


def test_every_image_is_fitted_into_the_input_and_people_map_back(tmp_path):
  """Known peaks in the fitted network input land where the inverse fit sends them, for a 16:9
  photo, a portrait photo and a 16:9 video: one network input size for all."""
  peaks_2 = np.stack([np.arange(J) * 9 + 20, np.arange(J) * 5 + 60], -1)
  estimator = inference.PoseEstimator(inference.HostDecoder(host_pose.peak_backend(peaks_2)), 384,
                                      input_wh=(384, 384))
  rng = np.random.default_rng(0)
  landscape = rng.integers(0, 255, (360, 640, 3), np.uint8)
  portrait = rng.integers(0, 255, (500, 300, 3), np.uint8)
  cv2.imwrite(str(tmp_path / "a.png"), landscape)
  cv2.imwrite(str(tmp_path / "b.png"), portrait)
  writer = cv2.VideoWriter(str(tmp_path / "c.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (640, 360))
  for _ in range(2):
    writer.write(landscape)
  writer.release()
  assert {estimator.input_sizes(hw) for hw in ((360, 640), (500, 300))} == {((384, 384),)}
  entries = predict.predict(estimator, [tmp_path / n for n in ("a.png", "b.png", "c.mp4")],
                            tmp_path / "out", batch_size=2, progress=False).entries
  assert [(e["file_name"][-5:], e.get("frame")) for e in entries] == [
      ("a.png", None), ("b.png", None), ("c.mp4", 0), ("c.mp4", 1)]
  # Decoded in the input at 2 * peak + 1.25 (`peak_backend`); the input's centre (192, 192) is
  # the image centre. 640x360: zoom 384 / 640 = 0.6, centre (320, 180); 300x500: zoom 384 / 500
  # = 0.768, centre (150, 250).
  landscape_xy = (2 * peaks_2 + 1.25 - 192) / 0.6 + (320, 180)
  portrait_xy = (2 * peaks_2 + 1.25 - 192) / 0.768 + (150, 250)
  for entry, expected in zip(entries, [landscape_xy, portrait_xy, landscape_xy, landscape_xy]):
    found = np.asarray(entry["keypoints"]).reshape(J, 3)
    np.testing.assert_allclose(found[:, :2], expected, atol=1e-3)   # float32 map-back rounding


@pytest.mark.slow
def test_a_fixed_input_compiles_once_for_images_of_any_size(tmp_path):
  """`--input-size` with JAX: a tiny network's decoder compiles for the first image only (its
  `compiles`, which the progress bar shows), whatever the sizes that follow."""
  from ehrnet_jax.inference import jax_decoder  # pylint: disable=import-outside-toplevel
  from support import tiny_pose  # pylint: disable=import-outside-toplevel
  variables = tiny_pose.init_tiny(64)
  network = tiny_pose.TinyPoseNet()
  decoder = jax_decoder.JaxDecoder(lambda v, x: network.apply(v, x, train=False), variables)
  estimator = inference.PoseEstimator(decoder, 64, input_wh=(96, 64))
  compiled = []
  compiles = decoder.compiles
  decoder.compiles = lambda sizes, count: compiled.append(compiles(sizes, count)) or compiled[-1]
  rng = np.random.default_rng(0)
  shapes = [(360, 640), (500, 300), (64, 64), (101, 203)]
  for index, shape in enumerate(shapes):
    cv2.imwrite(str(tmp_path / f"{index}.png"), rng.integers(0, 255, (*shape, 3), np.uint8))
  predict.predict(estimator, [tmp_path / f"{i}.png" for i in range(len(shapes))],
                  tmp_path / "out", progress=False)
  assert compiled == [True, False, False, False]
