"""Conversion of the authors' state dicts and exact parity with their model's outputs."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ehrnet_jax import convert, weights
from ehrnet_jax.cli import main
from ehrnet_jax.errors import UserError
from ehrnet_jax.models import EfficientHRNet
from ehrnet_jax.scaling import VARIANT_NAMES, ScalingSpec

# The reference moves by up to 1.75e-4 between 1 and 2 threads; a real bug is orders larger.
PARITY_ATOL = 1e-3


def reference_outputs(model, variables, images_nchw):
  """Runs the Flax model on NCHW inputs; returns (out0, out1) in the reference's NCHW layout."""
  outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, images_nchw.transpose(0, 2, 3, 1))
  out0 = np.concatenate([outputs.heatmaps_4, outputs.tags_4], axis=-1).transpose(0, 3, 1, 2)
  return out0, np.asarray(outputs.heatmaps_2).transpose(0, 3, 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANT_NAMES))
def test_every_reference_key_maps_to_exactly_one_variable(reference_dir, name):
  shapes = json.loads((reference_dir / f"state_dict_keys_{name}.json").read_text())
  state_dict = {key: np.zeros(shape, np.float32) for key, shape in shapes.items()}
  # convert_state_dict fails on any missing, unused or mis-shaped key, and on any Flax variable
  # left without a source.
  variables = convert.convert_state_dict(state_dict, ScalingSpec.from_name(name))
  entries = convert.key_map(ScalingSpec.from_name(name))
  assert len({path for _, path, _ in entries}) == len(entries)
  per_entry = {kind: len([v for v in convert.LAYER_VARIABLES[kind].values() if v])
               for kind in convert.LAYER_VARIABLES}
  assert sum(per_entry[kind] for _, _, kind in entries) == len(jax.tree.leaves(variables))
  batch_norms = sum(kind == convert.BN for _, _, kind in entries)
  assert len(shapes) == len(jax.tree.leaves(variables)) + batch_norms  # + num_batches_tracked


@pytest.mark.slow
@pytest.mark.parametrize("name", ["H-4", "H-2"])
def test_outputs_equal_the_reference_model(reference_dir, name):
  spec = ScalingSpec.from_name(name)
  variables = convert.convert_state_dict(
      convert.load_state_dict(reference_dir / f"{name}_state_dict.npz"), spec)
  io = np.load(reference_dir / f"{name}_io.npz")
  for case in ("a", "b"):
    out0, out1 = reference_outputs(EfficientHRNet(spec), variables, io[f"input_{case}"])
    np.testing.assert_allclose(out0, io[f"out0_{case}"], atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(out1, io[f"out1_{case}"], atol=PARITY_ATOL, rtol=0)


def test_pytorch_checkpoint_converts_like_the_npz(reference_dir):
  pytest.importorskip("torch", reason="the [torch] extra is not installed")
  from_pth = convert.load_state_dict(reference_dir / "H-4_state_dict.pth")
  from_npz = convert.load_state_dict(reference_dir / "H-4_state_dict.npz")
  assert from_pth.keys() == from_npz.keys()
  spec = ScalingSpec.from_name("H-4")
  a = convert.convert_state_dict(from_pth, spec)
  b = convert.convert_state_dict(from_npz, spec)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_wrapped_and_prefixed_state_dicts_are_unwrapped():
  arrays = {"features.0.1.weight": np.ones((1,)), "final_layers.0.bias": np.zeros((2,))}
  wrapped = {"state_dict": {f"module.{k}": v for k, v in arrays.items()}, "epoch": 3}
  unwrapped = convert.normalise_state_dict(wrapped, "x.pth")
  assert unwrapped.keys() == arrays.keys()


def test_missing_unexpected_and_misshaped_keys_are_named(h4_variables):
  spec = ScalingSpec.from_name("H-4")
  state_dict = dict(convert.load_state_dict(_bundled()))
  del state_dict["trans1_branch1.0.bias"]
  state_dict["stage9.extra.weight"] = np.zeros(3)
  state_dict["final_layers.1.weight"] = np.zeros((17, 15, 1, 1))
  with pytest.raises(UserError) as error:
    convert.convert_state_dict(state_dict, spec, source="ckpt.pth")
  message = str(error.value)
  for expected in ("ckpt.pth", "H-4", "1 missing: trans1_branch1.0.bias",
                   "1 unexpected: stage9.extra.weight", "final_layers.1.weight: (17, 15, 1, 1)"):
    assert expected in message


def test_weights_of_another_variant_are_rejected(reference_dir):
  with pytest.raises(UserError, match="does not match variant H-4"):
    convert.convert_state_dict(convert.load_state_dict(reference_dir / "H-2_state_dict.npz"),
                               ScalingSpec.from_name("H-4"))


@pytest.mark.slow
def test_convert_command_writes_a_checkpoint_that_loads_back(tmp_path, h4_variables, capsys):
  out = tmp_path / "H-4"
  assert main(["convert", str(_bundled()), "--variant", "H-4", "--out", str(out)]) == 0
  variables, spec = weights.load_variables(out, ScalingSpec.from_name("H-4"))
  assert spec.name == "H-4"
  jax.tree.map(np.testing.assert_array_equal, variables, h4_variables)
  # A second conversion to the same place refuses to overwrite, and the wrong variant is named.
  assert main(["convert", str(_bundled()), "--variant", "H-4", "--out", str(out)]) == 2
  assert "already exists" in capsys.readouterr().err
  with pytest.raises(UserError, match="holds variant H-4"):
    weights.load_variables(out, ScalingSpec.from_name("H-2"))


def test_unreadable_sources_are_clear_errors(tmp_path):
  with pytest.raises(UserError, match="no such file"):
    convert.load_state_dict(tmp_path / "missing.pth")
  bad = tmp_path / "bad.pth"
  bad.write_bytes(b"not a checkpoint")
  with pytest.raises(UserError, match="bad.pth"):
    convert.load_state_dict(bad)


def _bundled():
  from ehrnet_jax import samples  # pylint: disable=import-outside-toplevel
  return samples.reference_weights()


def test_checkpoint_whose_variables_do_not_fit_its_spec_is_a_clear_error(tmp_path, h4_variables):
  directory = weights.save_variables(tmp_path / "ck", h4_variables, ScalingSpec.from_name("H-2"))
  with pytest.raises(UserError, match="do not fit H-2"):
    weights.load_variables(directory)
  for not_a_checkpoint in (tmp_path, tmp_path / "missing"):
    with pytest.raises(UserError, match=f"{not_a_checkpoint} is not an ehrnet checkpoint"):
      weights.load_variables(not_a_checkpoint)


def test_overwrite_replaces_a_checkpoint_and_only_when_asked(tmp_path, h4_variables):
  h4 = ScalingSpec.from_name("H-4")
  directory = weights.save_variables(tmp_path / "ck", h4_variables, h4, source="first")
  with pytest.raises(UserError, match="already exists"):
    weights.save_variables(directory, h4_variables, h4)
  zeros = jax.tree.map(np.zeros_like, h4_variables)
  weights.save_variables(directory, zeros, h4, source="second", overwrite=True)
  variables, _ = weights.load_variables(directory, h4)
  jax.tree.map(np.testing.assert_array_equal, variables, zeros)
  assert weights.read_metadata(directory)["source"] == "second"
  assert [p.name for p in tmp_path.iterdir()] == ["ck"]   # no temporary directory left behind


def test_format_1_checkpoints_still_load(tmp_path, h4_variables):
  """The layout written before the metadata became an orbax item: `variables/` saved by
  `ocp.StandardCheckpointer` and the metadata in `ehrnet.json` beside it."""
  directory = tmp_path / "old"
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / "variables", h4_variables)
  checkpointer.wait_until_finished()
  (directory / "ehrnet.json").write_text(json.dumps(
      {"format": "ehrnet_jax.variables/1", "variant": "H-4", "phi": -4.0, "source": "old"}))
  variables, spec = weights.load_variables(directory, ScalingSpec.from_name("H-4"))
  assert spec.name == "H-4" and weights.read_metadata(directory)["source"] == "old"
  jax.tree.map(np.testing.assert_array_equal, variables, h4_variables)
