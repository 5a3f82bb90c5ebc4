"""The models' variables: random initialisation and abstract shapes.

Every user of a model's variables gets them here: the trainer (initial state and the restore
target), conversion of the authors' checkpoints (the target of the key map), inference
checkpoints (the restore target), counting and the latency benchmarks.

The networks are fully convolutional (global pooling in the SE blocks and the classifier), so
their variables do not depend on the input size: both functions trace the model on one small
image by default. (At H0's 512x512 the unoptimised init program held 1.3 GB.)
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

INIT_IMAGE_SIZE = 64
INIT_IMAGE_SHAPE = (1, INIT_IMAGE_SIZE, INIT_IMAGE_SIZE, 3)


def _init_fn(model: nn.Module, image_shape: tuple[int, ...]):
  images = jnp.zeros(image_shape, jnp.float32)
  return lambda key: model.init(key, images, train=False)


def init_variables(model: nn.Module, rng: jax.Array,
                   image_shape: tuple[int, ...] = INIT_IMAGE_SHAPE) -> dict[str, Any]:
  """The model's random initial variables `{"params", "batch_stats"}`, traced at `image_shape`.

  Initialisation runs once, so it is compiled without XLA's backend optimisations: for H-4 on
  2 CPU cores this cuts its compilation from ~47 s to ~13 s (hundreds of random initialisers).
  """
  init = jax.jit(_init_fn(model, image_shape))
  return init.lower(rng).compile({"xla_backend_optimization_level": 0})(rng)


def abstract_variables(model: nn.Module,
                       image_shape: tuple[int, ...] = INIT_IMAGE_SHAPE) -> dict[str, Any]:
  """Shapes and dtypes of the model's variables (`jax.ShapeDtypeStruct`s; nothing computed)."""
  return jax.eval_shape(_init_fn(model, image_shape), jax.random.key(0))
