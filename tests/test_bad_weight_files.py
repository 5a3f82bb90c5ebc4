"""Issue 23: every bad weight file, given to `ehrnet convert` or as a checkpoint directory, ends
with one error line that names the file and says what was expected: exit 2, no traceback, and
no advice to load the file unsafely."""

import json
import shutil

import numpy as np
import pytest

from ehrnet_jax import samples, weights
from ehrnet_jax.cli import main
from ehrnet_jax.scaling import ScalingSpec

UNSAFE_ADVICE = ("weights_only", "allow_pickle", "Traceback")


def run_cli(argv, capsys) -> str:
  """stderr of `ehrnet argv` run in-process, checked: exit 2 and exactly one line."""
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"ehrnet {argv[0]}: error: ") and err.count("\n") == 1, err
  assert not any(advice in err for advice in UNSAFE_ADVICE), err
  return err


def convert_error(source, tmp_path, capsys) -> str:
  err = run_cli(["convert", str(source), "--variant", "H-4", "--out", str(tmp_path / "out")],
                capsys)
  assert str(source) in err and not (tmp_path / "out").exists()
  return err


def halved(source, destination):
  data = source.read_bytes()
  destination.write_bytes(data[:len(data) // 2])
  return destination


class RunsCode:
  """Unpickling it would call `open(marker, "w")`: harmless, and detectable by the file."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return open, (self.marker, "w")


def test_pth_whose_pickle_would_run_code_is_refused_without_running_it(tmp_path, capsys):
  torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
  marker = tmp_path / "code_ran"
  evil = tmp_path / "evil.pth"
  torch.save({"features.0.1.weight": torch.zeros(3), "payload": RunsCode(marker)}, evil)
  err = convert_error(evil, tmp_path, capsys)
  assert not marker.exists()
  assert "would run Python code" in err and "state dict of tensors" in err
  assert "torch.save(model.state_dict(), PATH)" in err


def test_truncated_pth_is_named(tmp_path, capsys):
  torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
  good = tmp_path / "good.pth"
  torch.save({"w": torch.zeros(4096)}, good)
  err = convert_error(halved(good, tmp_path / "half.pth"), tmp_path, capsys)
  assert "cannot read it as a PyTorch file (truncated" in err


def test_npz_with_an_object_array_is_refused(tmp_path, capsys):
  source = tmp_path / "objects.npz"
  np.savez(source, weights=np.zeros(3), extra=np.array([{"any": "object"}], dtype=object))
  err = convert_error(source, tmp_path, capsys)
  assert "array 'extra' holds Python objects" in err and "numeric arrays only" in err


@pytest.mark.parametrize("make", [
    lambda tmp: halved(samples.reference_weights(), tmp / "half.npz"),
    lambda tmp: (tmp / "text.npz").write_text("not an archive") and tmp / "text.npz",
], ids=["truncated", "text"])
def test_truncated_or_foreign_npz_is_named(make, tmp_path, capsys):
  err = convert_error(make(tmp_path), tmp_path, capsys)
  assert "cannot read it as an .npz archive (truncated" in err


def test_npz_of_other_keys_lists_them(tmp_path, capsys):
  source = tmp_path / "other.npz"
  np.savez(source, foo=np.zeros(3))
  err = convert_error(source, tmp_path, capsys)
  assert "does not match variant H-4; 797 missing: features.0.1.weight" in err
  assert "1 unexpected: foo" in err


@pytest.fixture(scope="module")
def saved_h4(h4_variables, tmp_path_factory):
  return weights.save_variables(tmp_path_factory.mktemp("ckpt") / "H-4", h4_variables,
                                ScalingSpec.from_name("H-4"))


def _largest_file(directory):
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


DAMAGE = {
    "truncated array file": lambda ck: halved(_largest_file(ck / "variables" / "ocdbt.process_0"),
                                              _largest_file(ck / "variables" / "ocdbt.process_0")),
    "missing array file": lambda ck: _largest_file(ck / "variables" / "ocdbt.process_0").unlink(),
    "missing tree metadata": lambda ck: (ck / "variables" / "_METADATA").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_checkpoint_directory_is_named(damage, saved_h4, tmp_path, capsys):
  checkpoint = shutil.copytree(saved_h4, tmp_path / "H-4")
  damage(checkpoint)
  err = run_cli(["predict", "--variant", "H-4", "--checkpoint", str(checkpoint), "--out",
                 str(tmp_path / "p"), str(samples.images()[0])], capsys)
  assert f"{checkpoint}: its variables cannot be read" in err and "truncated or missing" in err


@pytest.mark.parametrize("metadata, expected", [
    ('{"format": "someone_else/1", "phi": 0}', "has format 'someone_else/1', not "
                                               "'ehrnet_jax.variables/2'"),
    ("[1, 2]", "has format None"),
    ("{not json", "its metadata item (metadata/) is damaged"),
], ids=["foreign format", "not a mapping", "not JSON"])
def test_foreign_or_damaged_metadata_is_named(metadata, expected, saved_h4, tmp_path, capsys):
  checkpoint = shutil.copytree(saved_h4, tmp_path / "H-4")
  (checkpoint / "metadata" / "metadata").write_text(metadata)
  err = run_cli(["predict", "--variant", "H-4", "--checkpoint", str(checkpoint), "--out",
                 str(tmp_path / "p"), str(samples.images()[0])], capsys)
  assert str(checkpoint) in err and expected in err
