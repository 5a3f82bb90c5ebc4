"""`ehrnet predict`: images, folders and videos -> JSON and drawings; bad inputs."""

import json
import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ehrnet_jax import cli, inference, keypoints
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import predict
from support import host_pose

J = keypoints.COCO.num_joints
IMAGE = "000000183872.jpg"


def _write_video(path, frames, fps=5):
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                           frames[0].shape[1::-1])
  for frame in frames:
    writer.write(frame)
  writer.release()


@pytest.mark.slow
def test_predict_command_on_image_folder_and_video(reference_dir, coco_mini_dir, tmp_path):
  checkpoint = tmp_path / "ckpt"
  assert cli.main(["convert", str(reference_dir / "H-4_state_dict.npz"), "--variant", "H-4",
                   "--out", str(checkpoint)]) == 0
  folder = tmp_path / "photos"
  folder.mkdir()
  shutil.copy(coco_mini_dir / "train2017" / IMAGE, folder / IMAGE)
  # Frames with the photo's aspect ratio: the same network input (576x384), one compilation.
  frame = cv2.resize(cv2.imread(str(coco_mini_dir / "train2017" / IMAGE)), (240, 160))
  _write_video(tmp_path / "clip.mp4", [frame, frame[:, ::-1].copy(), frame])
  out = tmp_path / "out"
  assert cli.main(["predict", "--variant", "H-4", "--checkpoint", str(checkpoint), "--out",
                   str(out), "--min-score", "0.2", "--batch-size", "1", str(folder),
                   str(tmp_path / "clip.mp4")]) == 0

  entries = json.loads((out / "predictions.json").read_text())
  video = [e for e in entries if e["file_name"].endswith("clip.mp4")]
  photo = [e for e in entries if e["file_name"].endswith(IMAGE)]
  assert len(video) + len(photo) == len(entries) > 0
  assert all(e["score"] >= 0.2 and len(e["keypoints"]) == 3 * J for e in entries)
  assert {e["frame"] for e in video} <= {0, 1, 2} and all("frame" not in e for e in photo)
  # One image id per image or frame.
  assert len({(e["file_name"], e.get("frame")) for e in entries}) == len(
      {e["image_id"] for e in entries})

  drawn = cv2.imread(str(out / IMAGE))
  original = cv2.imread(str(folder / IMAGE))
  assert drawn.shape == original.shape and (np.abs(drawn.astype(int) - original) > 60).any()
  capture = cv2.VideoCapture(str(out / "clip.mp4"))
  assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 3
  assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (240,
                                                                                             160)


def test_predict_maps_peaks_back_to_the_image_without_jax(tmp_path):
  """Known peaks in the network input land where the inverse warp sends them (image + video)."""
  image = np.random.default_rng(0).integers(0, 255, (300, 500, 3), np.uint8)
  cv2.imwrite(str(tmp_path / "a.png"), image)
  _write_video(tmp_path / "b.mp4", [image] * 3)
  peaks_2 = np.stack([np.arange(J) * 9 + 20, np.arange(J) * 5 + 20], -1)
  estimator = inference.PoseEstimator(inference.HostDecoder(host_pose.peak_backend(peaks_2)), 384)
  checked = predict.check_inputs([tmp_path / "a.png", tmp_path / "b.mp4"])
  entries = predict.predict(estimator, checked, tmp_path / "out", batch_size=2,
                            progress=False).entries
  assert [e.get("frame") for e in entries] == [None, 0, 1, 2]
  # 500x300 -> input 640x384 (short side 384, long side rounded up to a multiple of 64), centre
  # (250, 150) -> (320, 192), zoom 384 / 300 = 1.28.
  expected = (2 * peaks_2 + 1.25 - (320, 192)) / 1.28 + (250, 150)
  for entry in entries:
    found = np.asarray(entry["keypoints"]).reshape(J, 3)
    np.testing.assert_allclose(found[:, :2], expected, atol=1e-3)
    np.testing.assert_allclose(found[:, 2], 0.375, atol=1e-6)
    assert entry["score"] == pytest.approx(0.375)


def test_host_path_does_not_import_jax():
  code = ("import sys; from ehrnet_jax.inference import predict, grouping, aggregation, "
          "coco_results, transforms, host_decoder; "
          "assert 'jax' not in sys.modules, 'jax imported'; "
          "assert predict.__file__.startswith(sys.argv[1]), predict.__file__")
  subprocess.run([sys.executable, "-c", code, str(pathlib.Path(__file__).parents[1])], check=True)


def test_grayscale_and_rgba_images_are_read_as_rgb(tmp_path):
  gray = np.random.default_rng(1).integers(0, 255, (40, 50), np.uint8)
  cv2.imwrite(str(tmp_path / "gray.png"), gray)
  rgba = np.dstack([np.full((40, 50, 3), (10, 20, 30), np.uint8), np.full((40, 50), 7, np.uint8)])
  cv2.imwrite(str(tmp_path / "rgba.png"), rgba)   # BGRA on disk: B=10, G=20, R=30
  np.testing.assert_array_equal(inference.read_image(tmp_path / "gray.png"),
                                np.repeat(gray[..., None], 3, -1))
  np.testing.assert_array_equal(inference.read_image(tmp_path / "rgba.png")[0, 0], (30, 20, 10))


@pytest.mark.parametrize("name, content, message", [
    ("broken.jpg", b"not a jpeg", "cannot decode"),
    ("empty.jpg", b"", "cannot decode"),
    ("tiny.png", None, "at least 32 pixels"),
])
def test_bad_images_are_named_in_the_error(tmp_path, name, content, message):
  path = tmp_path / name
  if content is None:
    cv2.imwrite(str(path), np.zeros((20, 100, 3), np.uint8))
  else:
    path.write_bytes(content)
  with pytest.raises(UserError, match=message) as error:
    inference.read_image(path)
  assert str(path) in str(error.value)


def test_bad_paths_and_videos_are_named_in_the_error(tmp_path):
  with pytest.raises(UserError, match="no such file"):
    predict.check_inputs([tmp_path / "missing.jpg"])
  with pytest.raises(UserError, match="no images or videos"):
    predict.check_inputs([tmp_path])
  (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
  with pytest.raises(UserError, match="broken.mp4: cannot open this file as a video"):
    predict.check_inputs([tmp_path / "broken.mp4"], strict=True)
  (failed,) = predict.check_inputs([tmp_path / "broken.mp4"])
  assert failed.record() == {"file": str(tmp_path / "broken.mp4"),
                             "reason": "cannot open this file as a video"}
