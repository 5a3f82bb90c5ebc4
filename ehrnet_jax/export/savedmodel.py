"""TF SavedModel export with jax2tf (native serialization), for TensorFlow Serving.

The SavedModel holds the network as one `XlaCallModule` op (StableHLO, lowered for CPU and
CUDA) and the weights as TF variables. Its `serving_default` signature takes `images` (float32,
normalised, in the chosen layout) and returns `heatmaps_4`, `tags_4` and `heatmaps_2`. The
metadata of `ehrnet_jax.export.network.metadata` is in `assets.extra/ehrnet.json`.

The StableHLO is serialized for the StableHLO version of the installed TensorFlow when that is
older than the one JAX targets (`stablehlo_for_tensorflow`).
"""

import contextlib
import json
import pathlib
from unittest import mock

import tensorflow as tf
from jax._src import xla_bridge
from jax._src.export import _export
from jax._src.lib import _jax
from jax._src.lib.mlir.dialects import hlo
from jax.experimental import jax2tf
from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo

from ehrnet_jax.export import network
from ehrnet_jax.scaling import ScalingSpec

PLATFORMS = ("cpu", "cuda")
METADATA_FILE = "assets.extra/ehrnet.json"


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in text.split("."))


@contextlib.contextmanager
def stablehlo_for_tensorflow():
  """Within: JAX serializes StableHLO that the installed TensorFlow's XlaCallModule can read.

  JAX writes StableHLO for readers at most 4 weeks older than itself (JAX 0.12.1: version
  1.22.0); TensorFlow 2.21 reads up to 1.13.7 and fails on newer ops (`vhlo.custom_call_v2`,
  from the batch dimension's shape assertions). JAX has no option for the target version, so
  this replaces its private serializer (`mock.patch.object` fails loudly if that moves) with one
  that targets the older of the two versions."""
  jax_target = hlo.get_version_from_compatibility_requirement(
      hlo.StablehloCompatibilityRequirement.WEEK_4)
  target = min(jax_target, tf_stablehlo.get_current_version(), key=_version)

  def module_to_bytecode(module) -> bytes:
    return _jax.mlir.serialize_portable_artifact(
        module, target, xla_bridge.get_backend().serialize_with_sdy)
  with mock.patch.object(_export, "_module_to_bytecode", module_to_bytecode):
    yield


def export_savedmodel(spec: ScalingSpec, variables, options: network.ExportOptions,
                      directory) -> pathlib.Path:
  """Writes the SavedModel for `spec` with `variables` to `directory`; returns its path."""
  with stablehlo_for_tensorflow():
    return _export_savedmodel(spec, variables, options, pathlib.Path(directory))


def _export_savedmodel(spec: ScalingSpec, variables, options: network.ExportOptions,
                       directory: pathlib.Path) -> pathlib.Path:
  shape = options.input_shape("b")
  converted = jax2tf.convert(
      network.inference_fn(spec, options.layout), with_gradient=False,
      polymorphic_shapes=[None, "(" + ", ".join(map(str, shape)) + ")"],
      native_serialization_platforms=PLATFORMS)
  module = tf.Module()
  module.weights = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), variables)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None if d == "b" else d for d in shape], tf.float32, network.INPUT_NAME)])
  def serve(images):
    return dict(zip(network.OUTPUT_NAMES, converted(module.weights, images)))

  module.serve = serve
  tf.saved_model.save(module, str(directory), signatures={"serving_default": serve})
  (directory / METADATA_FILE).parent.mkdir(exist_ok=True)
  (directory / METADATA_FILE).write_text(json.dumps(network.metadata(spec, options), indent=2))
  return directory
