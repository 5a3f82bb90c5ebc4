"""The stored counts of the published models, so that `ehrnet info` answers without JAX.

Counting a model live (`ehrnet_jax.counting`) traces it with JAX: ~3 s to import JAX and Flax and
1-3 s per model on 2 CPU cores, half a minute for the five pose models. Their counts are
properties of the architecture, so `model_counts.json` (package data) holds, for the published
pose models H0 ... H-4 and backbone classifiers B0 ... B-4 (ImageNet and CIFAR-100 heads), exactly
what `counting.model_counts(spec)` and `counting.classifier_counts(spec, num_classes)` return,
with the jax, jaxlib and flax versions they were counted with (XLA's FLOPs come from its cost
analysis, which may change between versions; everything else is exact). `model_counts` and
`classifier_counts` here return the stored row for those and count live (importing JAX) for
anything else, or for everything with `recount=True` (`ehrnet info --recount`).

This module imports neither JAX nor `counting` until it counts live. Regenerate the file after a
change to the architecture or to the counting (tests/test_counting.py recounts it and says so):

  python -m ehrnet_jax.stored_counts            # rewrites ehrnet_jax/model_counts.json atomically
"""

import argparse
import functools
import importlib.metadata
import json
import pathlib

from ehrnet_jax import atomic
from ehrnet_jax.scaling import CLASSIFIER_VARIANTS, VARIANT_NAMES, ScalingSpec, classifier_variant

TABLE_PATH = pathlib.Path(__file__).with_name("model_counts.json")
# The packages whose versions the counts depend on (XLA's cost analysis lives in jaxlib).
COUNTING_PACKAGES = ("jax", "jaxlib", "flax")
# The classifier heads `ehrnet info --classifiers` shows: ImageNet and CIFAR-100.
CLASSIFIER_HEADS = (1000, 100)


def installed_versions() -> dict[str, str]:
  """{package: version} of the installed `COUNTING_PACKAGES` (read without importing them)."""
  return {name: importlib.metadata.version(name) for name in COUNTING_PACKAGES}


@functools.cache
def _table() -> dict:
  return json.loads(TABLE_PATH.read_text())


def counted_with() -> dict[str, str]:
  """{package: version} the stored counts were counted with."""
  return dict(_table()["counted_with"])


def published_counts(spec: ScalingSpec) -> dict | None:
  """The stored `counting.model_counts(spec)` if `spec` is a published model, else None."""
  if spec.name not in VARIANT_NAMES or spec != ScalingSpec.from_name(spec.name):
    return None
  return next(dict(row) for row in _table()["models"] if row["name"] == spec.name)


def published_classifier_counts(spec: ScalingSpec, num_classes: int) -> dict | None:
  """The stored `counting.classifier_counts(spec, num_classes)` for B0 ... B-4 with a head in
  `CLASSIFIER_HEADS`, else None."""
  name = spec.classifier_name
  if (name not in CLASSIFIER_VARIANTS or num_classes not in CLASSIFIER_HEADS
      or spec != classifier_variant(name)[0]):
    return None
  return next(dict(row) for row in _table()["classifiers"]
              if (row["name"], row["num_classes"]) == (name, num_classes))


def model_counts(spec: ScalingSpec, recount: bool = False) -> tuple[dict, bool]:
  """(`counting.model_counts(spec)` at the native input, whether it is the stored row): stored
  for a published model unless `recount`, else counted live."""
  stored = None if recount else published_counts(spec)
  if stored is not None:
    return stored, True
  from ehrnet_jax import counting  # pylint: disable=import-outside-toplevel
  return counting.model_counts(spec), False


def classifier_counts(spec: ScalingSpec, num_classes: int, recount: bool = False
                      ) -> tuple[dict, bool]:
  """(`counting.classifier_counts(spec, num_classes)`, whether it is the stored row): stored for
  B0 ... B-4 with a head in `CLASSIFIER_HEADS` unless `recount`, else counted live."""
  stored = None if recount else published_classifier_counts(spec, num_classes)
  if stored is not None:
    return stored, True
  from ehrnet_jax import counting  # pylint: disable=import-outside-toplevel
  return counting.classifier_counts(spec, num_classes), False


def count_table() -> dict:
  """The table as `model_counts.json` holds it, every row counted live now."""
  models = [model_counts(ScalingSpec.from_name(name), recount=True)[0] for name in VARIANT_NAMES]
  classifiers = [classifier_counts(classifier_variant(name)[0], heads, recount=True)[0]
                 for name in CLASSIFIER_VARIANTS for heads in CLASSIFIER_HEADS]
  return {"about": "ehrnet_jax/stored_counts.py: regenerate with "
                   "`python -m ehrnet_jax.stored_counts`",
          "counted_with": installed_versions(), "models": models, "classifiers": classifiers}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m ehrnet_jax.stored_counts",
      description="Counts the published models live and writes the stored table atomically.")
  parser.add_argument("--out", type=pathlib.Path, default=TABLE_PATH,
                      help=f"where to write it (default: {TABLE_PATH})")
  args = parser.parse_args(argv)
  table = count_table()
  atomic.write_atomically(args.out, json.dumps(table, indent=1) + "\n")
  print(f"wrote {args.out}: {len(table['models'])} models, {len(table['classifiers'])} "
        f"classifier rows, counted with {table['counted_with']}")


if __name__ == "__main__":
  main()
