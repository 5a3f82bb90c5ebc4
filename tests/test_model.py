"""The Flax model: parameter counts, shapes, train/eval behaviour, layer semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.counting import count_params
from ehrnet_jax.errors import UserError
from ehrnet_jax.models import (EfficientHRNet, EfficientNetClassifier, ExecutionForm,
                               fold_batch_norm)
from ehrnet_jax.models.layers import BatchNorm
from ehrnet_jax.ops.depthwise import depthwise_conv_shifted
from ehrnet_jax.scaling import ScalingSpec
from ehrnet_jax.xla_options import inference_compiler_options

# True counts of the reference models (`model.parameters()`), total and backbone.
REFERENCE_PARAMS = {
    "H0": (19_725_359, 3_595_388), "H-1": (13_004_446, 3_050_752),
    "H-2": (8_263_495, 2_125_854), "H-3": (5_360_390, 1_602_678), "H-4": (2_764_706, 993_186),
}


def abstract_init(module, shape=(1, 64, 64, 3)):
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape), train=False))


def evaluate(module, variables, images):
  return jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images)


@pytest.mark.parametrize("name", list(REFERENCE_PARAMS))
def test_parameter_counts_equal_the_reference(name):
  variables = abstract_init(EfficientHRNet(ScalingSpec.from_name(name)))
  assert (count_params(variables["params"]), count_params(variables["params"]["backbone"])) == (
      REFERENCE_PARAMS[name])


def test_classifier_parameter_counts_equal_the_reference_table():
  # Rebuilt reference classifiers (reference-architecture.md §1.1): ImageNet and CIFAR-100 heads.
  imagenet = [5_289, 4_548, 3_464, 2_796, 2_056]
  cifar = [4_136, 3_503, 2_512, 1_931, 1_271]
  for phi, (k_imagenet, k_cifar) in zip(range(0, -5, -1), zip(imagenet, cifar)):
    spec = ScalingSpec.from_phi(phi)
    for classes, thousands in ((1000, k_imagenet), (100, k_cifar)):
      params = abstract_init(EfficientNetClassifier(spec, classes), (1, 32, 32, 3))["params"]
      assert round(count_params(params) / 1000) == thousands


@pytest.mark.slow
def test_output_shapes_for_non_square_inputs(h4_variables):
  model = EfficientHRNet(ScalingSpec.from_name("H-4"))
  images = jnp.zeros((2, 96, 64, 3))
  outputs = evaluate(model, h4_variables, images)
  assert outputs.heatmaps_4.shape == (2, 24, 16, 17) and outputs.tags_4.shape == (2, 24, 16, 17)
  assert outputs.heatmaps_2.shape == (2, 48, 32, 17)
  assert all(o.dtype == jnp.float32 for o in outputs)


@pytest.mark.parametrize("size", [(100, 64), (64, 48), (0, 64)])
def test_sides_that_are_not_multiples_of_32_are_a_clear_error(size):
  model = EfficientHRNet(ScalingSpec.from_name("H-4"))
  with pytest.raises(UserError, match="multiples of 32"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *size, 3)), train=False))


@pytest.mark.slow
def test_train_mode_uses_batch_statistics_and_drop_connect(h4_variables):
  model = EfficientHRNet(ScalingSpec.from_name("H-4"))
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = h4_variables
  train = jax.jit(lambda rng: model.apply(variables, images, train=True, rngs={"dropout": rng},
                                          mutable=["batch_stats"]))
  (out_a, updates), (out_b, _) = train(jax.random.key(2)), train(jax.random.key(3))
  # Drop-connect draws differ -> outputs differ; the running statistics move.
  assert not np.allclose(out_a.heatmaps_2, out_b.heatmaps_2)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), updates["batch_stats"],
                       variables["batch_stats"])
  assert min(jax.tree.leaves(moved)) > 0
  # Evaluation is deterministic and does not need an rng.
  eval_a = evaluate(model, variables, images)
  np.testing.assert_array_equal(eval_a.heatmaps_2, evaluate(model, variables, images).heatmaps_2)


def test_batch_norm_follows_pytorch_semantics():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5)) * 3 + 1
  bn = BatchNorm(5)
  variables = bn.init(jax.random.key(0), x, train=False)
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  flat = np.asarray(x).reshape(-1, 5)
  mean, biased, unbiased = flat.mean(0), flat.var(0), flat.var(0, ddof=1)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 5), (flat - mean) / np.sqrt(biased + 1e-5),
                             atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * unbiased, rtol=1e-5)
  stats = {"mean": np.arange(5.0), "var": np.arange(1.0, 6.0)}
  y_eval = bn.apply({**variables, "batch_stats": stats}, x, train=False)
  np.testing.assert_allclose(y_eval, (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, ((1, 1), (1, 1))),
                                                   (3, 2, ((0, 1), (0, 1))),
                                                   (5, 2, ((1, 2), (1, 2))),
                                                   (5, 1, ((2, 2), (2, 2)))])
def test_shifted_depthwise_conv_equals_grouped_convolution(kernel, stride, padding):
  x = jax.random.normal(jax.random.key(0), (2, 13, 10, 6))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 1, 6))
  expected = jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          feature_group_count=6)
  np.testing.assert_allclose(depthwise_conv_shifted(x, w, stride, padding), expected,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bf16_compute_stays_close_to_float32(h4_variables):
  spec = ScalingSpec.from_name("H-4")
  images = jax.random.normal(jax.random.key(1), (1, 64, 96, 3))
  f32 = evaluate(EfficientHRNet(spec), h4_variables, images)
  bf16 = evaluate(EfficientHRNet(spec, dtype=jnp.bfloat16), h4_variables, images)
  for low, full in zip(bf16, f32):
    assert low.dtype == jnp.float32
    # bfloat16 keeps 8 mantissa bits; through ~100 layers the maps stay strongly correlated.
    assert np.corrcoef(np.ravel(low), np.ravel(full))[0, 1] > 0.97


def test_folded_batch_norm_variables_and_training_refused(h4_variables):
  # fold_batch_norm leaves one bias per convolution and no BN beside it (the folded forms'
  # outputs equal the plain network's: test_execution_forms.py); the folded network refuses to
  # train.
  folded = fold_batch_norm(h4_variables)
  stem = folded["params"]["backbone"]["stem"]
  assert set(stem) == {"conv"} and set(stem["conv"]) == {"kernel", "bias"}
  assert jax.tree.leaves(folded["batch_stats"]) == jax.tree.leaves(
      {"head": h4_variables["batch_stats"]["head"]["deconv_bn"]})   # the only BN not after a conv
  model = EfficientHRNet(ScalingSpec.from_name("H-4"), ExecutionForm.cpu_inference())
  images = jnp.zeros((1, 64, 96, 3))
  with pytest.raises(ValueError, match="evaluation only"):
    model.apply(folded, images, train=True, rngs={"dropout": jax.random.key(0)},
                mutable=["batch_stats"])


@pytest.mark.slow
def test_inference_compiler_options_reach_xla(h4_variables):
  # On CPU the eval network compiles without YNNPACK fusions (xla_options explains why) and
  # computes the same numbers.
  model = EfficientHRNet(ScalingSpec.from_name("H-4"))
  images = jax.random.normal(jax.random.key(3), (1, 64, 64, 3))
  forward = lambda v, x: model.apply(v, x, train=False)
  options = inference_compiler_options("cpu")
  assert options == {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_prefer_vector_width": 512}
  assert inference_compiler_options("gpu") is None
  compiled = jax.jit(forward, compiler_options=options).lower(h4_variables, images).compile()
  assert "__ynn_fusion" not in compiled.as_text()
  for got, want in zip(compiled(h4_variables, images), evaluate(model, h4_variables, images)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
