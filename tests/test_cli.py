"""The `ehrnet` command line: help pages, the demo (README command 1) and clear errors."""

import subprocess
import sys

import pytest

from ehrnet_jax.cli import build_parser, main


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


def test_demo_converts_the_bundled_weights_and_finds_people(tmp_path, capsys):
  assert main(["demo", "--workdir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert (tmp_path / "H-4_reference" / "ehrnet.json").is_file()
  assert "people found" in out and "000000000790.jpg (640x422)" in out


@pytest.mark.parametrize("argv,message", [
    (["info", "--variant", "H7"], "unknown variant 'H7'"),
    (["convert", "nope.pth", "--variant", "H-4", "--out", "x"], "nope.pth: no such file"),
])
def test_user_errors_are_one_line_messages(argv, message, capsys):
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
