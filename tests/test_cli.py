"""The `ehrnet` command line: help pages, the demo (README command 1) and clear errors."""

import json
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest

from ehrnet_jax import samples, weights
from ehrnet_jax.cli import build_parser, main
from ehrnet_jax.commands import demo
from support import coco_testing

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_sub_command_has_help_with_an_example():
  parser = build_parser()
  (subparsers,) = [a for a in parser._actions if a.dest == "command"]  # pylint: disable=protected-access
  assert {"convert", "info", "benchmark", "demo"} <= set(subparsers.choices)
  for name, sub in subparsers.choices.items():
    assert "example" in sub.format_help(), f"`ehrnet {name} --help` shows no example"


def test_help_does_not_import_jax():
  code = ("import sys; from ehrnet_jax.cli import build_parser; build_parser(); "
          "assert 'jax' not in sys.modules, 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_demo_runs_every_stage_on_the_bundled_data(tmp_path, capsys, monkeypatch):
  """README command 1, shortened to one training step, without the training's own final
  evaluation (stage 3 evaluates the trained model; test_train_loop covers the trainer's).

  Training starts from the authors' H-4 that stage 1 converts (random weights, which find
  people everywhere) rather than Flax's initialisation (which finds nobody), so that the
  evaluation and the predictions have people to check."""
  monkeypatch.chdir(REPO)
  workdir = tmp_path / "demo"
  assert main(["demo", "--workdir", str(workdir), "--set", "train.steps=1",
               "--set", "run.eval_every_steps=-1",
               "--set", f"init.checkpoint={workdir / 'H-4_reference'}",
               "--set", "init.backbone_only=false"]) == 0
  printed = capsys.readouterr().out
  assert weights.read_metadata(workdir / "H-4_reference")["variant"] == "H-4"
  metrics = json.loads((workdir / "evaluate" / "metrics.json").read_text())
  evaluated = json.loads((workdir / "evaluate" / "results.json").read_text())
  assert metrics["num_images"] == 7 and metrics["num_people"] == len(evaluated) > 0
  assert metrics["AP"] == coco_testing.keypoint_ap(samples.annotation_file(), evaluated)
  # The predictions are the people the evaluation scored: same checkpoint, same estimator.
  predictions = json.loads((workdir / "predict" / "predictions.json").read_text())
  assert f"{len(predictions)} people in 7 input(s)" in printed
  by_file = lambda entries, key: sorted((str(key(e)), e["score"], e["keypoints"]) for e in entries)
  ids = {int(p.stem): p.name for p in samples.images()}
  found = by_file(predictions, lambda e: pathlib.Path(e["file_name"]).name)
  scored = by_file(evaluated, lambda e: ids[e["image_id"]])
  assert [f for f, _, _ in found] == [f for f, _, _ in scored]
  np.testing.assert_allclose([s for _, s, _ in found], [s for _, s, _ in scored], atol=1e-6)
  np.testing.assert_allclose([k for _, _, k in found], [k for _, _, k in scored], atol=1e-3)
  assert sorted(p.name for p in (workdir / "predict").glob("*.jpg")) == sorted(ids.values())
  assert "done: everything is in" in printed
  assert printed.rstrip().endswith(demo.CLOSING_WORDS.strip())


@pytest.mark.parametrize("argv,message", [
    (["info", "--variant", "H7"], "unknown variant 'H7'"),
    (["convert", "nope.pth", "--variant", "H-4", "--out", "x"], "nope.pth: no such file"),
])
def test_user_errors_are_one_line_messages(argv, message, capsys):
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_benchmark_prints_its_table_and_writes_only_when_asked(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = ["benchmark", "--variant", "H-4", "--size", "64", "--batch", "2", "--repeats", "2",
          "--warmup", "0"]
  assert main(argv) == 0
  assert list(tmp_path.iterdir()) == []   # no BENCHMARKS.md (or anything) in the current folder
  (printed,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| H-4 |")]
  _, variant, size, compile_s, median, minimum, throughput, _ = printed.split("|")
  assert (variant.strip(), size.strip()) == ("H-4", "64")
  assert float(compile_s) > 0 and 0 < float(minimum) <= float(median)
  assert float(throughput) > 0
  # --write FILE replaces the section between the markers and keeps the rest of the file.
  report = tmp_path / "BENCH.md"
  report.write_text("# Figures\n\nkept before\n\n<!-- ehrnet-benchmark:begin -->\nold table\n"
                    "<!-- ehrnet-benchmark:end -->\n\nkept after\n")
  assert main([*argv, "--write", str(report)]) == 0
  text = report.read_text()
  assert "kept before" in text and "kept after" in text and "old table" not in text
  (row,) = [line for line in text.splitlines() if line.startswith("| H-4 |")]
  assert row in capsys.readouterr().out


def test_demo_closing_words_give_commands_that_parse():
  """The demo's last words say how to get real predictions: convert the authors' weights, then
  predict with the converted checkpoint; both command lines parse as written."""
  commands = [line.strip() for line in demo.CLOSING_WORDS.splitlines()
              if line.strip().startswith("ehrnet ")]
  assert "AP near 0 is expected" in demo.CLOSING_WORDS
  convert_args, predict_args = (build_parser().parse_args(shlex.split(c)[1:]) for c in commands)
  assert (convert_args.command, predict_args.command) == ("convert", "predict")
  assert convert_args.source.endswith(".pth") and convert_args.variant == predict_args.variant
  assert predict_args.checkpoint == convert_args.out and predict_args.inputs
