"""Inference checkpoints: the model's variables (orbax) plus the spec they belong to.

A checkpoint directory holds `variables/` (an orbax checkpoint of `{"params", "batch_stats"}`)
and `ehrnet.json` (format, variant name and phi, provenance, and for a backbone classifier its
number of classes). It is written to a temporary sibling directory and renamed into place, so a
crash never leaves a half-written checkpoint.

Two kinds of model are stored: the pose model `EfficientHRNet(spec)` (`load_variables`) and the
backbone classifier `EfficientNetClassifier(spec, num_classes)` (`load_classifier`); the backbone
of either initialises a pose model through `ehrnet_jax.backbones`.
"""

import json
import os
import pathlib
import shutil
import uuid

import jax
import orbax.checkpoint as ocp

from ehrnet_jax.errors import UserError
from ehrnet_jax.scaling import ScalingSpec

FORMAT = "ehrnet_jax.variables/1"
METADATA_FILE = "ehrnet.json"


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
  staging = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
  staging.parent.mkdir(parents=True, exist_ok=True)
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / "variables", jax.device_get(variables))
    checkpointer.wait_until_finished()
    metadata = {"format": FORMAT, "variant": spec.name, "phi": spec.phi, "source": source,
                "spec": spec.summary()}
    if num_classes is not None:
      metadata.update(variant=spec.classifier_name, num_classes=num_classes)
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    if directory.exists():
      shutil.rmtree(directory)
    staging.rename(directory)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return directory


def read_metadata(directory: str | os.PathLike) -> dict:
  """The checkpoint's `ehrnet.json`, checked: format, variant, phi, source, [num_classes]."""
  metadata_path = pathlib.Path(directory) / METADATA_FILE
  if not metadata_path.is_file():
    raise UserError(f"{directory} is not an ehrnet checkpoint (no {METADATA_FILE} there); pass "
                    "the --out directory of `ehrnet convert` or WORKDIR/variables of `ehrnet "
                    "train`, or convert the authors' weights first: `ehrnet convert SRC.pth "
                    "--variant NAME --out DIR`")
  try:
    metadata = json.loads(metadata_path.read_text())
    if metadata.get("format") != FORMAT:
      raise UserError(f"{metadata_path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    float(metadata["phi"])
    return metadata
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
    raise UserError(f"{metadata_path} is corrupt ({error!r})") from None


def read_spec(directory: str | os.PathLike) -> ScalingSpec:
  """The spec a checkpoint directory was saved for."""
  return ScalingSpec.from_phi(read_metadata(directory)["phi"])


def is_classifier(directory: str | os.PathLike) -> bool:
  """Whether the checkpoint holds a backbone classifier (else a pose model)."""
  return "num_classes" in read_metadata(directory)


def _restore(directory: pathlib.Path, spec: ScalingSpec, num_classes: int | None) -> dict:
  from ehrnet_jax.convert import abstract_variables  # pylint: disable=import-outside-toplevel
  target = abstract_variables(spec, num_classes)
  name = spec.name if num_classes is None else spec.classifier_name
  try:
    return ocp.StandardCheckpointer().restore(directory / "variables", target)
  except (ValueError, KeyError, FileNotFoundError) as error:
    raise UserError(f"{directory}: its variables do not fit {name} as this version of "
                    f"ehrnet_jax builds it ({error}); re-create it with `ehrnet convert` or "
                    "`ehrnet train`") from None


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
