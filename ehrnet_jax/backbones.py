"""Backbone weights for the pose model: from a trained classifier, a pose model or a state dict.

The pose model H-phi and the classifier B-phi share the EfficientNet backbone (the `backbone`
module of both). `load_backbone(source, spec)` reads that backbone from

* an ehrnet checkpoint directory: a backbone classifier (`ehrnet train` with
  `experiments/backbone.py`, or `ehrnet convert ... --variant B-2`) or a pose model;
* a `.pth`/`.npz` state dict in the narumiruna EfficientNet layout the reference expects
  (`features.*`, the reference's `MODEL.PRETRAINED`): an EfficientNet classifier or a whole
  reference pose model; the keys used and skipped are reported.

The backbones must be the same network (`ScalingSpec.same_backbone`), e.g. B-2 for H-2.
`with_backbone` puts it into a pose model's variables; the features are then bit-identical to
the source model's.
"""

import pathlib
from typing import Any, Callable

from ehrnet_jax import weights
from ehrnet_jax.errors import UserError
from ehrnet_jax.models import backbone_variables
from ehrnet_jax.scaling import ScalingSpec

Variables = dict[str, Any]


def _from_checkpoint(directory: pathlib.Path, spec: ScalingSpec) -> tuple[Variables, str]:
  if weights.is_classifier(directory):
    variables, source_spec, _ = weights.load_classifier(directory)
    name = source_spec.classifier_name
  else:
    variables, source_spec = weights.load_variables(directory)
    name = source_spec.name
  if not spec.same_backbone(source_spec):
    raise UserError(f"{directory} holds {name}, whose backbone differs from {spec.name}'s; use "
                    f"the backbone of {spec.classifier_name} or {spec.name}")
  return backbone_variables(variables), f"the backbone of {name} ({directory})"


def _from_state_dict(path: pathlib.Path, spec: ScalingSpec) -> tuple[Variables, str]:
  from ehrnet_jax import convert  # pylint: disable=import-outside-toplevel
  state_dict = convert.load_state_dict(path)
  backbone, used, skipped = convert.convert_backbone_state_dict(state_dict, spec, str(path))
  report = (f"{len(used)} backbone keys of {path} (features.0 ... "
            f"features.{spec.num_backbone_blocks})")
  if skipped:
    report += f"; skipped {len(skipped)} other keys ({', '.join(_key_groups(skipped))})"
  return backbone, report


def _key_groups(keys: list[str]) -> list[str]:
  """Short names for a listing of keys: `features.N` for backbone indices, else the module."""
  groups = {".".join(k.split(".")[:2]) if k.startswith("features.") else k.split(".")[0]
            for k in keys}
  return sorted(groups)


def load_backbone(source: str | pathlib.Path, spec: ScalingSpec,
                  log: Callable[[str], None] = print) -> Variables:
  """The backbone variables `{"params": {"backbone": ...}, "batch_stats": {"backbone": ...}}`
  for the pose model of `spec`, from a checkpoint directory or a state-dict file."""
  path = pathlib.Path(source).expanduser()
  if path.is_dir():
    backbone, report = _from_checkpoint(path, spec)
  elif path.is_file():
    backbone, report = _from_state_dict(path, spec)
  else:
    raise UserError(f"{source}: no such checkpoint directory or state-dict file (expected an "
                    "ehrnet checkpoint, or a .pth/.npz EfficientNet state dict)")
  log(f"backbone of {spec.name}: loaded {report}")
  return backbone


def with_backbone(variables: Variables, backbone: Variables) -> Variables:
  """`variables` of a pose model with its backbone replaced (parameters and BN statistics)."""
  return {c: {**variables[c], **backbone[c]} for c in variables}
