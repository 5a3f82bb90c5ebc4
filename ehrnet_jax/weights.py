"""Inference checkpoints: a model's variables plus the spec they belong to, in one orbax
checkpoint directory.

The directory holds two orbax items: `variables` (`{"params", "batch_stats"}`, orbax's standard
pytree format) and `metadata` (JSON: format, variant name and phi, provenance, and for a backbone
classifier its number of classes), saved and restored together through
`ocp.args.Composite` as the training checkpoints are (`training.checkpointing`). Orbax writes to
a temporary directory and renames it into place, so a crash never leaves a half-written
checkpoint.

Two kinds of model are stored: the pose model `EfficientHRNet(spec)` (`load_variables`) and the
backbone classifier `EfficientNetClassifier(spec, num_classes)` (`load_classifier`); the backbone
of either initialises a pose model through `ehrnet_jax.backbones`.

Checkpoints written before this layout (format 1: the metadata in a plain `ehrnet.json` beside
the same `variables/` item) are still read: only their metadata is found differently.
"""

import json
import os
import pathlib

import jax
import orbax.checkpoint as ocp

from ehrnet_jax import traced_programs
from ehrnet_jax.errors import UserError
from ehrnet_jax.models import EfficientHRNet, EfficientNetClassifier
from ehrnet_jax.scaling import ScalingSpec

FORMAT = "ehrnet_jax.variables/2"
# Format 1 kept the metadata in this file instead of an orbax item.
LEGACY_FORMAT = "ehrnet_jax.variables/1"
LEGACY_METADATA_FILE = "ehrnet.json"


def check_new_directory(directory: str | os.PathLike, overwrite: bool = False) -> pathlib.Path:
  """The absolute path of a checkpoint to write; a UserError when it exists and `overwrite` is
  not set (commands call it before any long work)."""
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and not overwrite:
    raise UserError(f"{directory} already exists; choose another --out, remove it, or pass "
                    "--overwrite to replace it")
  return directory


def save_variables(directory: str | os.PathLike, variables: dict, spec: ScalingSpec,
                   source: str = "", overwrite: bool = False,
                   num_classes: int | None = None) -> pathlib.Path:
  """Writes `variables` for `spec` to `directory` atomically; returns the absolute path.

  With `num_classes`, the variables are those of `EfficientNetClassifier(spec, num_classes)`,
  otherwise of the pose model `EfficientHRNet(spec)`.
  """
  directory = check_new_directory(directory, overwrite)
  metadata = {"format": FORMAT, "variant": spec.name, "phi": spec.phi, "source": source,
              "spec": spec.summary()}
  if num_classes is not None:
    metadata.update(variant=spec.classifier_name, num_classes=num_classes)
  directory.parent.mkdir(parents=True, exist_ok=True)
  _checkpointer().save(directory, args=ocp.args.Composite(
      variables=ocp.args.StandardSave(jax.device_get(variables)),
      metadata=ocp.args.JsonSave(metadata)), force=overwrite)
  return directory


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _not_a_checkpoint(directory: pathlib.Path) -> UserError:
  return UserError(f"{directory} is not an ehrnet checkpoint (no orbax `metadata` item there); "
                   "pass the --out directory of `ehrnet convert` or WORKDIR/variables of `ehrnet "
                   "train`, or convert the authors' weights first: `ehrnet convert SRC.pth "
                   "--variant NAME --out DIR`")


def _stored_metadata(directory: pathlib.Path) -> tuple[dict, str]:
  """The metadata as stored and the format it must have: the orbax item, or a format-1 file."""
  legacy = directory / LEGACY_METADATA_FILE
  if legacy.is_file():
    try:
      return json.loads(legacy.read_text()), LEGACY_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      raise UserError(f"{legacy} is corrupt ({_one_line(error)})") from None
  if not directory.is_dir():
    raise _not_a_checkpoint(directory)
  try:
    restored = _checkpointer().restore(directory, args=ocp.args.Composite(
        metadata=ocp.args.JsonRestore()))
  except (FileNotFoundError, KeyError, ValueError) as error:
    if (directory / "metadata").is_dir():   # the item is there but cannot be read
      raise UserError(f"{directory}: its metadata item (metadata/) is damaged "
                      f"({_one_line(error)}); expected the JSON that `ehrnet convert` or "
                      "`ehrnet train` writes: re-create the checkpoint") from None
    raise _not_a_checkpoint(directory) from None
  return restored.metadata, FORMAT


def read_metadata(directory: str | os.PathLike) -> dict:
  """The checkpoint's metadata, checked: format, variant, phi, source, [num_classes]."""
  directory = pathlib.Path(directory).absolute()
  metadata, expected_format = _stored_metadata(directory)
  found_format = metadata.get("format") if isinstance(metadata, dict) else None
  if found_format != expected_format:
    raise UserError(f"{directory}: its metadata has format {found_format!r}, not "
                    f"{expected_format!r}: not a checkpoint of this version of ehrnet_jax (made "
                    "by another program or a newer version?); re-create it with `ehrnet convert` "
                    "or `ehrnet train`")
  try:
    float(metadata["phi"])
    return metadata
  except (KeyError, TypeError, ValueError) as error:
    raise UserError(f"{directory}: its metadata is corrupt ({error!r}); expected a number "
                    "under 'phi'") from None


def read_spec(directory: str | os.PathLike) -> ScalingSpec:
  """The spec a checkpoint directory was saved for."""
  return ScalingSpec.from_phi(read_metadata(directory)["phi"])


def is_classifier(directory: str | os.PathLike) -> bool:
  """Whether the checkpoint holds a backbone classifier (else a pose model)."""
  return "num_classes" in read_metadata(directory)


def _restore(directory: pathlib.Path, spec: ScalingSpec, num_classes: int | None) -> dict:
  if num_classes is None:
    name, model = spec.name, EfficientHRNet(spec)
  else:
    name, model = spec.classifier_name, EfficientNetClassifier(spec, num_classes)
  target = traced_programs.abstract_variables(model)
  try:
    return _checkpointer().restore(directory, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(target))).variables
  except (ValueError, KeyError, FileNotFoundError, OSError) as error:
    stored = _stored_shapes(directory / "variables")
    if stored is not None and stored != _shapes(target):
      raise UserError(f"{directory}: its variables do not fit {name} as this version of "
                      f"ehrnet_jax builds it ({_one_line(error)}); re-create it with `ehrnet "
                      "convert` or `ehrnet train`") from None
    raise UserError(f"{directory}: its variables cannot be read: a file under variables/ is "
                    f"truncated or missing ({_one_line(error)}); copy the whole directory again "
                    "or re-create it with `ehrnet convert` or `ehrnet train`") from None


def _shapes(tree) -> dict:
  """{key path: shape} of a tree of arrays or array metadata."""
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _stored_shapes(item: pathlib.Path) -> dict | None:
  """The {key path: shape} orbax recorded for a saved tree, or None when it cannot be read."""
  try:
    metadata = ocp.StandardCheckpointer().metadata(item).item_metadata
    return _shapes(metadata.tree if hasattr(metadata, "tree") else metadata) or None
  except (ValueError, KeyError, OSError, AttributeError):
    return None


def _one_line(error: BaseException) -> str:
  """An error's message on one line (messages of other libraries may span several)."""
  return " ".join(str(error).split())


def load_variables(directory: str | os.PathLike, expected: ScalingSpec | None = None
                   ) -> tuple[dict, ScalingSpec]:
  """Restores a pose model's `(variables, spec)`; with `expected`, a checkpoint of another
  variant is an error."""
  directory = pathlib.Path(directory).absolute()
  metadata = read_metadata(directory)
  spec = ScalingSpec.from_phi(metadata["phi"])
  if "num_classes" in metadata:
    raise UserError(f"{directory} holds the backbone classifier {spec.classifier_name}, not a "
                    f"pose model; start pose training from its backbone with "
                    f"--set init.checkpoint={directory}")
  if expected is not None and expected != spec:
    raise UserError(f"{directory} holds variant {spec.name} (phi={spec.phi:g}), not "
                    f"{expected.name} (phi={expected.phi:g}); pass --variant {spec.variant_arg} or "
                    "another checkpoint")
  return _restore(directory, spec, None), spec


def load_classifier(directory: str | os.PathLike) -> tuple[dict, ScalingSpec, int]:
  """Restores a backbone classifier's `(variables, spec, num_classes)`."""
  directory = pathlib.Path(directory).absolute()
  metadata = read_metadata(directory)
  spec = ScalingSpec.from_phi(metadata["phi"])
  if "num_classes" not in metadata:
    raise UserError(f"{directory} holds the pose model {spec.name}, not a backbone classifier")
  num_classes = int(metadata["num_classes"])
  return _restore(directory, spec, num_classes), spec, num_classes
