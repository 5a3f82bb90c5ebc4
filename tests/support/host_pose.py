"""A pose estimator without a network, for tests of the commands that run one: `ehrnet predict`
and `ehrnet evaluate` with `_runtime.make_estimator` replaced by `use_in_commands`.

`content_backend`'s heatmaps peak at pixels drawn from a hash of each input image: exact,
independent of the batch, and different for different images, so that results can be compared
between runs and files. `peak_backend`'s peak at given pixels of the network input. Run as a script, it is `ehrnet` with that estimator, each network call
`delay_s` slower (for tests that kill it in the middle):
  python tests/support/host_pose.py DELAY_S predict --backend onnx --checkpoint x.onnx ...
"""

import sys
import time
import zlib

import numpy as np

from ehrnet_jax import inference, keypoints


def content_backend(images):
  """Host backend: (B, H, W, 3) -> heatmaps_4, tags_4, heatmaps_2 (zeros but one peak per joint
  of each 1/2-resolution map, at pixels drawn from the image's hash)."""
  b, h, w, _ = images.shape
  joints = np.arange(keypoints.COCO.num_joints)
  heatmaps_2 = np.zeros((b, h // 2, w // 2, len(joints)), np.float32)
  for index, image in enumerate(images):
    rng = np.random.default_rng(zlib.crc32(image.tobytes()))
    xs, ys = rng.integers(1, w // 2 - 2, len(joints)), rng.integers(1, h // 2 - 2, len(joints))
    heatmaps_2[index, ys, xs, joints] = 1.0
    heatmaps_2[index, ys, xs + 1, joints] = heatmaps_2[index, ys + 1, xs, joints] = 0.5
  heatmaps_4 = np.zeros((b, h // 4, w // 4, len(joints)), np.float32)
  return heatmaps_4, np.zeros_like(heatmaps_4), heatmaps_2


def peak_backend(peaks_2):
  """A host backend whose 1/2-resolution heatmap j peaks at `peaks_2[j]` = (x, y), whatever the
  images.

  The peak pixel has value 1 and its right and lower neighbours 0.5, so that the upsampled maps
  have a single maximum, at input pixel (2x + 1, 2y + 1), whose left/upper neighbours are the
  higher ones: the decoded joint is at (2x + 1.25, 2y + 1.25) with value 0.375 (worked by hand).
  """
  def backend(images):
    b, h, w, _ = images.shape
    heatmaps_2 = np.zeros((b, h // 2, w // 2, len(peaks_2)), np.float32)
    for j, (x, y) in enumerate(peaks_2):
      heatmaps_2[:, y, x, j] = 1.0
      heatmaps_2[:, y, x + 1, j] = heatmaps_2[:, y + 1, x, j] = 0.5
    heatmaps_4 = np.zeros((b, h // 4, w // 4, len(peaks_2)), np.float32)
    return heatmaps_4, np.zeros_like(heatmaps_4), heatmaps_2
  return backend


class CountingBackend:
  """`content_backend` that counts the images it is called on and waits `delay_s` per call."""

  def __init__(self, delay_s: float = 0.0):
    self.images, self.delay_s = 0, delay_s

  def __call__(self, images):
    self.images += len(images)
    time.sleep(self.delay_s)
    return content_backend(images)


def estimator(backend=content_backend, batch_size: int = 1) -> inference.PoseEstimator:
  decoder = inference.HostDecoder(backend)
  decoder.batch_size = batch_size
  return inference.PoseEstimator(decoder, input_size=64)


def use_in_commands(monkeypatch, backend=content_backend) -> list:
  """Makes `ehrnet predict/evaluate` run `estimator(backend)`; returns the list of the models
  they were asked to load (one entry per load)."""
  from ehrnet_jax.commands import _runtime  # pylint: disable=import-outside-toplevel
  loads = []

  def make_estimator(args, model, *_, **__):
    loads.append(model)
    return estimator(backend)

  monkeypatch.setattr(_runtime, "make_estimator", make_estimator)
  return loads


if __name__ == "__main__":
  from ehrnet_jax import cli  # pylint: disable=import-outside-toplevel
  from ehrnet_jax.commands import _runtime  # pylint: disable=import-outside-toplevel
  slow = CountingBackend(float(sys.argv[1]))
  _runtime.make_estimator = lambda *_, **__: estimator(slow)
  sys.exit(cli.main(sys.argv[2:]))
