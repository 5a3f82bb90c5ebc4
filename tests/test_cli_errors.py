"""Issue #8: every mistake a new user can make on the command line ends with one error line that
names the file, flag or field and says what to do next: no traceback, exit code 2."""

import pathlib
import sys

import pytest

from ehrnet_jax import export, samples, weights
from ehrnet_jax.cli import main
from ehrnet_jax.scaling import ScalingSpec

# Placeholders in the command lines: {tmp} a fresh folder holding notes.txt, garbage.onnx, empty/
# and old/ (a TFDS dir with a version 1.0.0 build); {ckpt} an H-4 checkpoint; {coco} the bundled
# COCO folder (split train2017 only); {weights} the bundled H-4 state dict (.npz); {image} a
# bundled image; {experiments} the repository's experiments/ folder.
CHECKPOINT = ["--variant", "H-4", "--checkpoint", "{ckpt}"]
SAMPLE_COCO = ["--coco-dir", "{coco}", "--split", "train2017", "--out", "{tmp}/eval"]
CASES = {
    # Variants
    "unknown variant": (["info", "--variant", "H-5"],
                        ["unknown variant 'H-5'", "H0, H-1, H-2, H-3, H-4", "phi=<number>"]),
    "lower-case variant": (["benchmark", "--variant", "h4"],
                           ["unknown variant 'h4'", "case-sensitive", "ehrnet info"]),
    "classifier name for a pose command": (
        ["evaluate", "--variant", "B0", "--checkpoint", "{ckpt}", *SAMPLE_COCO],
        ["unknown variant 'B0'", "H-4"]),
    "phi not a number": (["info", "--variant", "phi=abc"], ["phi must be a number", "phi=-2.5"]),
    "checkpoint of another variant": (
        ["evaluate", "--variant", "H-3", "--checkpoint", "{ckpt}", *SAMPLE_COCO],
        ["holds variant H-4", "not H-3", "pass --variant H-4"]),
    # Checkpoints and weights
    "missing checkpoint": (["evaluate", "--variant", "H-4", "--checkpoint", "{tmp}/nope",
                            *SAMPLE_COCO],
                           ["nope is not an ehrnet checkpoint", "ehrnet convert"]),
    "folder that is not a checkpoint": (
        ["export", "--variant", "H-4", "--checkpoint", "{tmp}/empty", "--format", "onnx",
         "--out", "{tmp}/m.onnx"],
        ["empty is not an ehrnet checkpoint", "WORKDIR/variables", "ehrnet convert"]),
    "ONNX file as a JAX checkpoint": (
        ["predict", "--variant", "H-4", "--checkpoint", "{tmp}/garbage.onnx", "--out",
         "{tmp}/p", "{image}"], ["garbage.onnx is an ONNX model", "--backend onnx"]),
    "missing weights file": (["convert", "{tmp}/nope.pth", "--variant", "H-4", "--out",
                              "{tmp}/c"], ["nope.pth: no such file", ".npz"]),
    "weights of another variant": (["convert", "{weights}", "--variant", "H-3", "--out",
                                    "{tmp}/c"],
                                   ["does not match variant H-3", "ehrnet info"]),
    "existing --out": (["convert", "{weights}", "--variant", "H-4", "--out", "{ckpt}"],
                       ["already exists", "--overwrite"]),
    "existing --out, before reading SRC": (
        ["convert", "{tmp}/notes.txt", "--variant", "H-4", "--out", "{ckpt}"],
        ["already exists", "--overwrite"]),
    # Data
    "missing COCO folder": (["evaluate", *CHECKPOINT, "--coco-dir", "{tmp}/nope", "--out",
                             "{tmp}/eval"], ["nope: no such folder", "--coco-dir"]),
    "COCO folder without annotations": (
        ["evaluate", *CHECKPOINT, "--coco-dir", "{tmp}/empty", "--out", "{tmp}/eval"],
        ["person_keypoints_val2017.json: annotation file not found",
         "annotations_trainval2017.zip"]),
    "split absent from the COCO folder": (
        ["evaluate", *CHECKPOINT, "--coco-dir", "{coco}", "--out", "{tmp}/eval"],
        ["person_keypoints_val2017.json: annotation file not found", "--split train2017"]),
    "TFDS dataset not built": (["evaluate", *CHECKPOINT, "--data-dir", "{tmp}/empty", "--out",
                                "{tmp}/eval"],
                               ["no 'coco' dataset built there", "ehrnet data --coco-dir"]),
    "TFDS dataset of an older version": (
        ["evaluate", *CHECKPOINT, "--data-dir", "{tmp}/old", "--out", "{tmp}/eval"],
        ["coco_keypoints/coco: built as version 1.0.0", "`ehrnet data --coco-dir ROOT",
         "delete the old", "old/coco_keypoints/coco/1.0.0"]),
    "ehrnet data without the COCO folder": (
        ["data", "--coco-dir", "{tmp}/nope", "--data-dir", "{tmp}/tfds"],
        ["nope: no such folder", "person_keypoints_train2017.json with its images in train2017/",
         "unpack annotations_trainval2017.zip"]),
    "missing input": (["predict", *CHECKPOINT, "--out", "{tmp}/p", "{tmp}/nope.jpg"],
                      ["nope.jpg: no such file or folder"]),
    "folder without images": (["predict", *CHECKPOINT, "--out", "{tmp}/p", "{tmp}/empty"],
                              ["empty: no images or videos in this folder", ".jpg"]),
    "missing config": (["train", "--config", "{tmp}/nope.py", "--workdir", "{tmp}/w"],
                       ["nope.py: no such file", "experiments/coco_pose.py:H-4"]),
    "unknown variant of the pose experiment": (
        ["train", "--config", "{experiments}/coco_pose.py:H5", "--workdir", "{tmp}/w"],
        ["coco_pose.py:H5: unknown variant 'H5'", "expected one of H0, H-1, H-2, H-3, H-4"]),
    "missing demo config": (["demo", "--config", "{tmp}/nope.py", "--workdir", "{tmp}/w"],
                            ["nope.py: no such config", "--config"]),
    # Flags
    "size not a multiple of 32": (["export", *CHECKPOINT, "--format", "onnx", "--size",
                                   "100x96", "--out", "{tmp}/m.onnx"],
                                  ["--size 100x96", "multiples of 32", "384x640"]),
    "input size not a multiple of 32": (["predict", *CHECKPOINT, "--input-size", "360x640",
                                         "--out", "{tmp}/p", "{image}"],
                                        ["--input-size 360x640", "multiples of 32", "384x640"]),
    "bad --scales": (["predict", *CHECKPOINT, "--scales", "1,x", "--out", "{tmp}/p", "{image}"],
                     ["--scales", "0.5,1,1.5", "'1,x'"]),
    "predict without --variant": (["predict", "--checkpoint", "{ckpt}", "--out", "{tmp}/p",
                                   "{image}"], ["--variant is required", "ehrnet info"]),
    "predict without --checkpoint": (["predict", "--variant", "H-4", "--out", "{tmp}/p",
                                      "{image}"],
                                     ["--checkpoint DIR is required", "ehrnet convert"]),
    "export without --checkpoint": (["export", "--variant", "H-4", "--format", "onnx", "--out",
                                     "{tmp}/m.onnx"],
                                    ["--variant and --checkpoint are required"]),
    # ONNX and TensorRT
    "onnx backend without a model": (["predict", "--backend", "onnx", "--out", "{tmp}/p",
                                      "{image}"],
                                     ["--backend onnx needs the model", "ehrnet export"]),
    "onnx backend with a checkpoint folder": (
        ["predict", "--backend", "onnx", "--checkpoint", "{ckpt}", "--out", "{tmp}/p",
         "{image}"], ["no such ONNX file", "ehrnet export", "--backend jax"]),
    "onnx backend with a non-ONNX file": (
        ["predict", "--backend", "onnx", "--checkpoint", "{tmp}/notes.txt", "--out", "{tmp}/p",
         "{image}"], ["notes.txt: onnxruntime cannot load this file", "is it an ONNX model?",
                      "ehrnet export"]),
    "onnx backend without inputs": (
        ["predict", "--backend", "onnx", "{tmp}/garbage.onnx", "--out", "{tmp}/p"],
        ["no INPUT after the model", "images, videos or folders"]),
    "onnx backend with a corrupt model": (
        ["predict", "--backend", "onnx", "{tmp}/garbage.onnx", "{image}", "--out", "{tmp}/p"],
        ["garbage.onnx: onnxruntime cannot load this file", "ehrnet export"]),
    "tensorrt from a corrupt model": (
        ["export", "--format", "tensorrt", "--onnx", "{tmp}/garbage.onnx", "--out",
         "{tmp}/m.engine"], ["garbage.onnx: not an ONNX model", "ehrnet export --format onnx"]),
    "tensorrt from a missing model": (
        ["export", "--format", "tensorrt", "--onnx", "{tmp}/nope.onnx", "--out",
         "{tmp}/m.engine"], ["nope.onnx: no such ONNX file", "ehrnet export --format onnx"]),
}
# Caught by argparse: usage, then the flags to add or the values allowed.
ARGPARSE_CASES = {
    "missing required flags": (["convert", "x.pth"], ["required: --variant, --out"]),
    "no data source": (["evaluate", *CHECKPOINT, "--out", "{tmp}/eval"],
                       ["one of the arguments --coco-dir --data-dir is required"]),
    "unknown format": (["export", "--format", "tflite", "--out", "x"],
                       ["invalid choice: 'tflite'", "'onnx', 'savedmodel', 'tensorrt'"]),
}


@pytest.fixture(scope="module")
def places(h4_variables, tmp_path_factory) -> dict[str, str]:
  ckpt = weights.save_variables(tmp_path_factory.mktemp("ckpt") / "H-4", h4_variables,
                                    ScalingSpec.from_name("H-4"))
  return {"ckpt": str(ckpt), "coco": str(samples.coco_dir()),
          "weights": str(samples.reference_weights()), "image": str(samples.images()[0]),
          "experiments": str(pathlib.Path(__file__).resolve().parents[1] / "experiments")}


@pytest.fixture
def run(places, tmp_path, capsys):
  """argv with placeholders -> (exit code, stderr) of `ehrnet argv` run in-process."""
  (tmp_path / "notes.txt").write_text("not a model\n")
  (tmp_path / "garbage.onnx").write_bytes(b"not a model")
  (tmp_path / "empty").mkdir()
  old_build = tmp_path / "old" / "coco_keypoints" / "coco" / "1.0.0"
  old_build.mkdir(parents=True)
  (old_build / "dataset_info.json").write_text("{}")

  def run_argv(argv):
    argv = [arg.format(tmp=tmp_path, **places) for arg in argv]
    try:
      code = main(argv)
    except SystemExit as exit_:
      code = exit_.code
    return code, capsys.readouterr().err
  return run_argv


@pytest.mark.parametrize("argv, fragments", CASES.values(), ids=CASES.keys())
def test_mistakes_give_one_line_saying_what_to_do(run, argv, fragments):
  code, err = run(argv)
  assert code == 2 and "Traceback" not in err
  assert err.startswith(f"ehrnet {argv[0]}: error: ") and err.count("\n") == 1, err
  for fragment in fragments:
    assert fragment in err


@pytest.mark.parametrize("argv, fragments", ARGPARSE_CASES.values(), ids=ARGPARSE_CASES.keys())
def test_flag_mistakes_show_usage_and_the_flags(run, argv, fragments):
  code, err = run(argv)
  assert code == 2 and err.startswith("usage: ehrnet") and "Traceback" not in err
  for fragment in fragments:
    assert fragment in err


def test_pth_without_torch_says_which_extra_to_install(run, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` fails as if not installed
  code, err = run(["convert", "{tmp}/notes.txt", "--variant", "H-4", "--out", "{tmp}/c"])
  assert code == 2 and "Traceback" not in err
  assert "notes.txt: reading PyTorch checkpoints needs torch" in err
  assert "pip install -e '.[torch]'" in err


def test_onnx_export_without_the_export_extra_says_which_extra_to_install(run, monkeypatch):
  monkeypatch.setitem(sys.modules, "jax2onnx", None)   # `import jax2onnx` fails as if absent
  monkeypatch.delitem(sys.modules, "ehrnet_jax.export.onnx", raising=False)
  monkeypatch.delattr(export, "onnx", raising=False)
  code, err = run(["export", *CHECKPOINT, "--format", "onnx", "--out", "{tmp}/h4.onnx"])
  assert code == 2 and "Traceback" not in err
  assert "needs the Python package 'jax2onnx'" in err and "pip install -e '.[export]'" in err
