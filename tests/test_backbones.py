"""Backbone classifiers B0 ... B-4: variants, checkpoint import and loading into the pose model."""


import jax
import numpy as np
import pytest

from ehrnet_jax import backbones, convert, samples, weights
from ehrnet_jax.cli import main
from ehrnet_jax.errors import UserError
from ehrnet_jax.models import EfficientHRNet, EfficientNetClassifier
from ehrnet_jax.scaling import CLASSIFIER_VARIANTS, ScalingSpec, classifier_variant
from support.tolerances import assert_close_to_rounding

H4 = ScalingSpec.from_name("H-4")
NUM_CLASSES = 10


def test_classifier_variants_use_the_input_sizes_of_the_papers_table_2():
  sizes = {name: classifier_variant(name)[1] for name in CLASSIFIER_VARIANTS}
  assert sizes == {"B0": 224, "B-1": 195, "B-2": 170, "B-3": 145, "B-4": 128}
  spec, size = classifier_variant("phi=-2.5")
  assert spec.classifier_name == "B-2.5" and size == int(np.ceil(224 * 1.15 ** -2.5)) == 158
  assert classifier_variant("B-2")[0] == ScalingSpec.from_name("H-2")
  with pytest.raises(UserError, match="unknown classifier variant 'H-2'.*B0, B-1"):
    classifier_variant("H-2")


def _reference_state_dict() -> dict[str, np.ndarray]:
  """The authors' H-4 pose model (bundled, random weights): its features.* are the backbone."""
  return convert.load_state_dict(samples.reference_weights())


def _narumiruna_classifier(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A B-4 classifier in the ZeroPad layout: the H-4 backbone keys, a 1x1 head conv to
  round_filters(1280) = 872 channels (`features.11`, conv at .1, BN at .2) and `classifier.1`."""
  rng = np.random.default_rng(0)
  head, channels, taps = "features.11", H4.classifier_channels, H4.tap_channels[-1]
  classifier = {k: v for k, v in state_dict.items() if k.startswith("features.")}
  classifier.update({
      f"{head}.1.weight": rng.normal(0, 0.05, (channels, taps, 1, 1)).astype(np.float32),
      f"{head}.2.weight": rng.uniform(0.5, 1.5, channels).astype(np.float32),
      f"{head}.2.bias": rng.normal(0, 0.1, channels).astype(np.float32),
      f"{head}.2.running_mean": rng.normal(0, 0.1, channels).astype(np.float32),
      f"{head}.2.running_var": rng.uniform(0.5, 2.0, channels).astype(np.float32),
      f"{head}.2.num_batches_tracked": np.array(7, np.int64),
      "classifier.1.weight": rng.normal(0, 0.05, (NUM_CLASSES, channels)).astype(np.float32),
      "classifier.1.bias": rng.normal(0, 0.1, NUM_CLASSES).astype(np.float32),
  })
  return classifier


def _backbone_taps(module, variables, images):
  """The four backbone outputs of `module` (pose model or classifier), captured in eval mode."""
  _, state = jax.jit(lambda v, x: module.apply(
      v, x, train=False, capture_intermediates=lambda m, _: m.name == "backbone",
      mutable=["intermediates"]))(variables, images)
  return [np.asarray(t) for t in state["intermediates"]["backbone"]["__call__"][0]]


def test_backbone_import_from_a_reference_state_dict_reports_used_and_skipped_keys():
  state_dict = _reference_state_dict()
  backbone, used, skipped = convert.convert_backbone_state_dict(state_dict, H4, "H-4.npz")
  full = convert.convert_state_dict(state_dict, H4)
  for collection in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, backbone[collection]["backbone"],
                 full[collection]["backbone"])
  assert set(used) == {k for k in state_dict if k.startswith("features.")}
  assert set(skipped) == set(state_dict) - set(used) and all(
      not k.startswith("features.") for k in skipped)


@pytest.mark.slow
def test_narumiruna_classifier_converts_and_computes_the_reference_head(tmp_path):
  state_dict = _narumiruna_classifier(_reference_state_dict())
  variables, num_classes = convert.convert_classifier_state_dict(state_dict, H4)
  assert num_classes == NUM_CLASSES
  images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  logits = np.asarray(jax.jit(lambda v, x: EfficientNetClassifier(H4, num_classes).apply(
      v, x, train=False))(variables, images))
  # The head by hand from the state dict: 1x1 conv, BN (eps 1e-5), swish, mean, linear.
  pose_variables = convert.convert_state_dict(_reference_state_dict(), H4)
  last = _backbone_taps(EfficientHRNet(H4), pose_variables, images)[-1]      # (2, 2, 2, 216)
  conv = np.einsum("bhwi,oi->bhwo", last, state_dict["features.11.1.weight"][:, :, 0, 0])
  bn = {k: state_dict[f"features.11.2.{k}"] for k in ("weight", "bias", "running_mean",
                                                        "running_var")}
  x = (conv - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-5) * bn["weight"] + bn["bias"]
  x = (x / (1 + np.exp(-x))).mean(axis=(1, 2))
  expected = x @ state_dict["classifier.1.weight"].T + state_dict["classifier.1.bias"]
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_the_newer_narumiruna_layout_is_refused_with_the_reason():
  state_dict = {"features.0.0.weight": np.zeros((24, 3, 3, 3), np.float32)}
  with pytest.raises(UserError, match="newer narumiruna.*features.0.1"):
    convert.convert_backbone_state_dict(state_dict, H4, "b4.pth")


@pytest.mark.slow
def test_converted_classifier_backbone_loads_into_the_pose_model_unchanged(
    tmp_path, h4_variables, capsys):
  source = tmp_path / "b4.npz"
  np.savez(source, **_narumiruna_classifier(_reference_state_dict()))
  out = tmp_path / "B-4"
  assert main(["convert", str(source), "--variant", "B-4", "--out", str(out)]) == 0
  metadata = weights.read_metadata(out)
  assert (metadata["variant"], metadata["num_classes"]) == ("B-4", NUM_CLASSES)
  classifier_variables, spec, num_classes = weights.load_classifier(out)
  assert (spec, num_classes) == (H4, NUM_CLASSES)

  # The pose model built on the reference H-4 weights gets the classifier's backbone.
  backbone = backbones.load_backbone(out, H4)
  pose_variables = backbones.with_backbone(h4_variables, backbone)
  assert "loaded the backbone of B-4" in capsys.readouterr().out
  images = np.random.default_rng(2).normal(size=(1, 96, 64, 3)).astype(np.float32)
  pose_taps = _backbone_taps(EfficientHRNet(H4), pose_variables, images)
  classifier_taps = _backbone_taps(EfficientNetClassifier(H4, NUM_CLASSES),
                                   classifier_variables, images)
  # The same weights in two separately compiled programs (the pose model and the classifier):
  # equal up to rounding, not bit for bit (tolerances.py).
  for pose_tap, classifier_tap in zip(pose_taps, classifier_taps, strict=True):
    assert_close_to_rounding(pose_tap, classifier_tap)
  # Only the backbone changed (the weights themselves are copies: bit for bit).
  assert jax.tree.all(jax.tree.map(np.array_equal, pose_variables["params"]["hrnet"],
                                   h4_variables["params"]["hrnet"]))

  # The same backbone straight from the state-dict file, with the skipped keys named.
  from_file = backbones.load_backbone(source, H4)
  assert "skipped 8 other keys (classifier, features.11)" in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, from_file, backbone)


def test_a_classifier_checkpoint_is_not_a_pose_model_and_backbones_must_match(tmp_path):
  source = tmp_path / "b4.npz"
  np.savez(source, **_narumiruna_classifier(_reference_state_dict()))
  out = tmp_path / "B-4"
  assert main(["convert", str(source), "--variant", "B-4", "--out", str(out)]) == 0
  with pytest.raises(UserError, match="backbone classifier B-4, not a pose model.*"
                                      "init.checkpoint="):
    weights.load_variables(out)
  with pytest.raises(UserError, match="B-4, whose backbone differs from H-3's"):
    backbones.load_backbone(out, ScalingSpec.from_name("H-3"))
  with pytest.raises(UserError, match="no such checkpoint directory or state-dict file"):
    backbones.load_backbone(tmp_path / "missing", H4)
