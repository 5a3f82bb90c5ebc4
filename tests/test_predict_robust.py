"""`ehrnet predict` and `ehrnet evaluate` on inputs that cannot all be read, killed and rerun:
every readable input is done, the others warned about and listed, results streamed and resumed.

The commands run with a host estimator (`support.host_pose`: exact NumPy, no network), so that
runs can be compared exactly and a test takes seconds.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from ehrnet_jax import cli, inference, samples
from ehrnet_jax.inference import jax_decoder, predict, result_log
from support import host_pose, tiny_pose

HERE = pathlib.Path(__file__).resolve().parent
PREDICT = ["predict", "--backend", "onnx", "--checkpoint", "model.onnx", "--no-draw"]


def _image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


def _bad_folder(folder: pathlib.Path) -> tuple[list[str], list[str]]:
  """Writes readable and unreadable files; returns (readable, unreadable) file names."""
  folder.mkdir()
  cv2.imwrite(str(folder / "a_good.jpg"), _image(0))
  cv2.imwrite(str(folder / "b_good.png"), _image(1))
  (folder / "c_empty.jpg").write_bytes(b"")
  data = cv2.imencode(".jpg", _image(2))[1].tobytes()
  (folder / "d_truncated.jpg").write_bytes(data[:len(data) // 2])
  (folder / "e_text.jpg").write_text("not an image\n")
  cv2.imwrite(str(folder / "f_rgba.png"), np.dstack([_image(3), np.full((48, 64), 9, np.uint8)]))
  cv2.imwrite(str(folder / "g_16bit.png"), _image(4).astype(np.uint16) * 257)
  cv2.imwrite(str(folder / "h_tiny.jpg"), _image(5, 10, 10))
  return (["a_good.jpg", "b_good.png", "f_rgba.png", "g_16bit.png"],
          ["c_empty.jpg", "d_truncated.jpg", "e_text.jpg", "h_tiny.jpg"])


def _by_file(entries) -> dict:
  """Entries without their image id, by file name."""
  found = {}
  for entry in entries:
    found.setdefault(pathlib.Path(entry["file_name"]).name, []).append(
        {k: v for k, v in entry.items() if k not in ("image_id", "file_name")})
  return found


def test_every_readable_file_is_predicted_and_the_others_listed(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  loads = host_pose.use_in_commands(monkeypatch)
  readable, unreadable = _bad_folder(tmp_path / "in")
  assert cli.main([*PREDICT, "--out", "out", "in"]) == 1
  err = capsys.readouterr().err
  warnings = [line for line in err.splitlines() if line.startswith("warning: in/")]
  assert sorted(line.split(":")[1].strip() for line in warnings) == [f"in/{n}" for n in unreadable]
  assert all(line.endswith("; skipped") for line in warnings)
  assert "4 of 8 input(s) could not be read" in err
  failed = json.loads((tmp_path / "out" / "failed.json").read_text())
  assert [f["file"] for f in failed] == [f"in/{n}" for n in unreadable]
  reasons = dict(zip(unreadable, (f["reason"] for f in failed)))
  assert reasons["c_empty.jpg"] == "the file is empty"
  assert reasons["h_tiny.jpg"].startswith("image is 10x10 pixels")
  assert "cannot decode" in reasons["d_truncated.jpg"] and "cannot decode" in reasons["e_text.jpg"]
  # The same results as predicting the readable files alone; ids are positions in the folder.
  entries = json.loads((tmp_path / "out" / "predictions.json").read_text())
  alone = tmp_path / "alone"
  alone.mkdir()
  for name in readable:
    shutil.copy(tmp_path / "in" / name, alone / name)
  assert cli.main([*PREDICT, "--out", "out_alone", "alone"]) == 0
  expected = json.loads((tmp_path / "out_alone" / "predictions.json").read_text())
  assert set(_by_file(entries)) == set(readable) and _by_file(entries) == _by_file(expected)
  names = sorted(readable + unreadable)
  assert {(pathlib.Path(e["file_name"]).name, e["image_id"]) for e in entries} == {
      (n, names.index(n) + 1) for n in readable}
  # --strict: exit 2 at the first unreadable file, before any model loads.
  loads.clear()
  assert cli.main([*PREDICT, "--strict", "--out", "strict", "in"]) == 2
  assert "error: in/c_empty.jpg: the file is empty" in capsys.readouterr().err
  assert loads == [] and not (tmp_path / "strict").exists()


def test_16_bit_images_round_to_8_bits_and_alpha_is_dropped(tmp_path):
  # By hand: v * 255 / 65535 = 0.778 -> 1 (OpenCV alone cuts to 0), 1.498 -> 1, 254.5 -> 255 (up).
  values = np.array([200, 385, 65407, 65535], np.uint16).repeat(10)[None].repeat(32, 0)
  cv2.imwrite(str(tmp_path / "gray16.png"), values)
  np.testing.assert_array_equal(inference.read_image(tmp_path / "gray16.png")[0, ::10],
                                np.array([1, 1, 255, 255])[:, None].repeat(3, 1))
  rgba = np.dstack([_image(3, 32, 32).astype(np.uint16) * 257, np.full((32, 32), 5, np.uint16)])
  cv2.imwrite(str(tmp_path / "rgba16.png"), rgba)
  np.testing.assert_array_equal(inference.read_image(tmp_path / "rgba16.png"),
                                _image(3, 32, 32)[..., ::-1])


def _lines(path: pathlib.Path) -> int:
  return path.read_bytes().count(b"\n") if path.exists() else 0


def test_killed_run_resumes_without_redoing_images(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  folder = tmp_path / "in"
  folder.mkdir()
  for seed in range(8):
    cv2.imwrite(str(folder / f"{seed}.png"), _image(seed))
  host_pose.use_in_commands(monkeypatch)
  assert cli.main([*PREDICT, "--out", "whole", "in"]) == 0
  # Killed once the first line is written: each image takes 0.3 s more, so not all are done.
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
  process = subprocess.Popen([sys.executable, str(HERE / "support" / "host_pose.py"), "0.3",
                              *PREDICT, "--out", "out", "in"], env=env, stderr=subprocess.PIPE)
  log = tmp_path / "out" / predict.LOG_FILE
  deadline = time.monotonic() + 120
  while _lines(log) < 1 and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  done = _lines(log)
  assert 1 <= done < 8 and not (tmp_path / "out" / "predictions.json").exists()
  # The same command again: only the other images run.
  backend = host_pose.CountingBackend()
  host_pose.use_in_commands(monkeypatch, backend)
  capsys.readouterr()
  assert cli.main([*PREDICT, "--out", "out", "in"]) == 0
  assert backend.images == 8 - done and _lines(log) == 8
  assert f"resuming: {done} image(s)/frame(s)" in capsys.readouterr().err
  # Exact: the same NumPy program on the same images.
  assert (json.loads((tmp_path / "out" / "predictions.json").read_text())
          == json.loads((tmp_path / "whole" / "predictions.json").read_text()))


def test_video_resumes_by_frame_and_its_drawing_is_complete(tmp_path):
  writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5,
                           (64, 48))
  for seed in range(5):
    writer.write(_image(seed))
  writer.release()
  checked = predict.check_inputs([tmp_path / "clip.mp4"])
  whole = predict.predict(host_pose.estimator(), checked, tmp_path / "whole", batch_size=2,
                          progress=False, settings={})
  log = tmp_path / "whole" / predict.LOG_FILE
  lines = log.read_bytes().splitlines(keepends=True)
  out = tmp_path / "out"
  out.mkdir()
  (out / predict.LOG_FILE).write_bytes(b"".join(lines[:3]) + lines[3][:20])   # killed in line 4
  backend = host_pose.CountingBackend()
  resumed = predict.predict(host_pose.estimator(backend), checked, out, batch_size=2,
                            progress=False, settings={})
  assert backend.images == 2 and resumed.resumed == 3 and resumed.entries == whole.entries
  assert (out / predict.LOG_FILE).read_bytes().count(b"\n") == 5
  assert cv2.VideoCapture(str(out / "clip.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 5
  assert not list(out.glob(".*partial*"))


def test_other_settings_are_refused_and_overwrite_starts_over(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  host_pose.use_in_commands(monkeypatch)
  _bad_folder(tmp_path / "in")
  assert cli.main([*PREDICT, "--out", "out", "in"]) == 1
  capsys.readouterr()
  assert cli.main([*PREDICT, "--min-score", "0.5", "--out", "out", "in"]) == 2
  err = capsys.readouterr().err
  assert "min_score: 0.0 then, 0.5 now" in err and "--overwrite" in err
  assert _lines(tmp_path / "out" / predict.LOG_FILE) == 4
  assert cli.main([*PREDICT, "--min-score", "0.5", "--overwrite", "--out", "out", "in"]) == 1
  entries = json.loads((tmp_path / "out" / "predictions.json").read_text())
  # The peaks' value is 0.375 (tests/test_predict.py): no one scores 0.5.
  assert entries == [] and _lines(tmp_path / "out" / predict.LOG_FILE) == 4
  assert json.loads((tmp_path / "out" / "run.json").read_text())["min_score"] == 0.5


def test_partial_last_line_is_cut_off(tmp_path):
  path = tmp_path / "log.jsonl"
  path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
  assert result_log.read_records(path) == [{"a": 1}, {"b": 2}]
  assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'


def _evaluate(out, *flags) -> list[str]:
  return ["evaluate", "--backend", "onnx", "--checkpoint", "model.onnx", "--coco-dir",
          str(samples.coco_dir()), "--split", samples.SPLIT, "--out", str(out), *flags]


def test_evaluate_resumes_and_lists_unreadable_images(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  host_pose.use_in_commands(monkeypatch)
  assert cli.main(_evaluate("whole")) == 0
  whole = json.loads((tmp_path / "whole" / "results.json").read_text())
  partial = tmp_path / "whole" / "partial" / "process-0.jsonl"
  assert _lines(partial) == 7
  # Interrupted after 3 images: the rerun runs the 4 others and scores the same results.
  (tmp_path / "out" / "partial").mkdir(parents=True)
  shutil.copy(tmp_path / "whole" / "run.json", tmp_path / "out" / "run.json")
  (tmp_path / "out" / "partial" / "process-1.jsonl").write_bytes(
      b"".join(partial.read_bytes().splitlines(keepends=True)[:3]))
  backend = host_pose.CountingBackend()
  host_pose.use_in_commands(monkeypatch, backend)
  assert cli.main(_evaluate("out")) == 0
  assert backend.images == 4 and "resumed: 3 image(s)" in capsys.readouterr().err
  assert json.loads((tmp_path / "out" / "results.json").read_text()) == whole
  metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert metrics["num_images"] == 7 and metrics["failed_images"] == []
  # An unreadable image: warned about, listed, exit 1; the others are scored.
  coco = tmp_path / "coco"
  shutil.copytree(samples.coco_dir(), coco)
  broken = sorted((coco / samples.SPLIT).glob("*.jpg"))[2]
  broken.write_text("not an image")
  assert cli.main([*_evaluate("bad")[:6], str(coco), *_evaluate("bad")[7:]]) == 1
  err = capsys.readouterr().err
  # Known from its header before the model loads (the summary), then warned about when met.
  assert err.index("warning: 1 of 7 images cannot be read") < err.index(
      f"warning: {broken}: cannot decode")
  metrics = json.loads((tmp_path / "bad" / "metrics.json").read_text())
  assert metrics["num_failed"] == 1 and metrics["num_images"] == 6
  assert metrics["failed_images"][0]["image_id"] == int(broken.stem)
  assert {r["image_id"] for r in json.loads((tmp_path / "bad" / "results.json").read_text())} \
      == {r["image_id"] for r in whole} - {int(broken.stem)}


@pytest.mark.slow
def test_progress_bar_says_when_jax_compiles(tmp_path, capsys):
  """A tiny network on JAX: the first image of each input size compiles, the others do not;
  the host backend never does."""
  variables = tiny_pose.init_tiny(64)
  decoder = jax_decoder.JaxDecoder(
      lambda v, x: tiny_pose.TinyPoseNet().apply(v, x, train=False), variables)
  estimator = inference.PoseEstimator(decoder, input_size=64)
  for name, (h, w) in (("a.png", (48, 64)), ("b.png", (48, 64)), ("c.png", (64, 40))):
    cv2.imwrite(str(tmp_path / name), _image(0, h, w))
  sizes = {estimator.input_sizes(hw)[0] for hw in ((48, 64), (64, 40))}
  assert len(sizes) == 2 and estimator.compiles((48, 64))
  checked = predict.check_inputs([tmp_path])
  predict.predict(estimator, checked, tmp_path / "out", progress=True)
  err = capsys.readouterr().err
  assert {tuple(map(int, found)) for found in re.findall(r"compiling (\d+)x(\d+)", err)} == sizes
  assert not estimator.compiles((48, 64)) and not estimator.compiles((64, 40))
  predict.predict(host_pose.estimator(), checked, tmp_path / "host", progress=True)
  assert "compiling" not in capsys.readouterr().err
