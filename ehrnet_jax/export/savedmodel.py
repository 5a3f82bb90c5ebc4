"""TF SavedModel export with jax2tf (native serialization), for TensorFlow Serving.

The SavedModel holds the network as one `XlaCallModule` op (StableHLO, lowered for CPU and
CUDA) and the weights as TF variables. Its `serving_default` signature takes `images` (float32,
normalised, in the chosen layout) and returns `heatmaps_4`, `tags_4` and `heatmaps_2`. The
metadata of `ehrnet_jax.export.network.metadata` is in `assets.extra/ehrnet.json`.
"""

import json
import pathlib

import tensorflow as tf
from jax.experimental import jax2tf

from ehrnet_jax.export import network
from ehrnet_jax.scaling import ScalingSpec

PLATFORMS = ("cpu", "cuda")
METADATA_FILE = "assets.extra/ehrnet.json"


def export_savedmodel(spec: ScalingSpec, variables, options: network.ExportOptions,
                      directory) -> pathlib.Path:
  """Writes the SavedModel for `spec` with `variables` to `directory`; returns its path."""
  directory = pathlib.Path(directory)
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
