"""Inference checkpoints: the model's variables (orbax) plus the spec they belong to.

A checkpoint directory holds `variables/` (an orbax checkpoint of `{"params", "batch_stats"}`)
and `ehrnet.json` (format, variant name and phi, provenance). It is written to a temporary
sibling directory and renamed into place, so a crash never leaves a half-written checkpoint.
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


def save_variables(directory: str | os.PathLike, variables: dict, spec: ScalingSpec,
                   source: str = "", overwrite: bool = False) -> pathlib.Path:
  """Writes `variables` for `spec` to `directory` atomically; returns the absolute path."""
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and not overwrite:
    raise UserError(f"{directory} already exists; choose another --out or remove it first")
  staging = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
  staging.parent.mkdir(parents=True, exist_ok=True)
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / "variables", jax.device_get(variables))
    checkpointer.wait_until_finished()
    metadata = {"format": FORMAT, "variant": spec.name, "phi": spec.phi, "source": source,
                "spec": spec.summary()}
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    if directory.exists():
      shutil.rmtree(directory)
    staging.rename(directory)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return directory


def read_spec(directory: str | os.PathLike) -> ScalingSpec:
  """The spec a checkpoint directory was saved for."""
  metadata_path = pathlib.Path(directory) / METADATA_FILE
  if not metadata_path.is_file():
    raise UserError(f"{directory} is not an ehrnet checkpoint (no {METADATA_FILE}); create one "
                    "with `ehrnet convert` or `ehrnet train`")
  try:
    metadata = json.loads(metadata_path.read_text())
    if metadata.get("format") != FORMAT:
      raise UserError(f"{metadata_path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    return ScalingSpec.from_phi(metadata["phi"])
  except (json.JSONDecodeError, KeyError) as error:
    raise UserError(f"{metadata_path} is corrupt ({error!r})") from None


def load_variables(directory: str | os.PathLike, expected: ScalingSpec | None = None
                   ) -> tuple[dict, ScalingSpec]:
  """Restores `(variables, spec)`; with `expected`, a checkpoint of another variant is an error."""
  from ehrnet_jax.convert import abstract_variables  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(directory).absolute()
  spec = read_spec(directory)
  if expected is not None and expected != spec:
    raise UserError(f"{directory} holds variant {spec.name} (phi={spec.phi:g}), not "
                    f"{expected.name} (phi={expected.phi:g}); pass --variant {spec.name} or "
                    "another checkpoint")
  target = abstract_variables(spec)
  try:
    variables = ocp.StandardCheckpointer().restore(directory / "variables", target)
  except (ValueError, KeyError, FileNotFoundError) as error:
    raise UserError(f"{directory}: its variables do not fit {spec.name} as this version of "
                    f"ehrnet_jax builds it ({error}); re-create it with `ehrnet convert` or "
                    "`ehrnet train`") from None
  return variables, spec
