"""Every named execution form computes the plain network: outputs and gradients.

The accelerator and export forms are thus checked on every commit although CI has no
accelerator: a form changes how XLA is asked to compute, never what."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.models import EfficientHRNet, ExecutionForm, fold_batch_norm
from ehrnet_jax.models.execution import NAMES
from ehrnet_jax.scaling import ScalingSpec
from support.tolerances import scaled_atol

SPEC = ScalingSpec.from_name("H-4")
# Through the ~100 layers of the network, two programs that round differently (the forms'
# kernels sum in other orders) differ by up to ~1e-5 of the largest output; a wrong kernel or
# a mislaid channel is off by O(1).
OUTPUTS = 1e-4
# Training-mode gradients go back through batch norms over small batches, whose bias and
# scale gradients are sums with much cancellation (some are exactly zero in exact arithmetic: a
# shift that the next batch norm removes, so they are rounding noise in both programs), and
# through the backbone's last stages at 2x2 pixels, where batch norm divides by the spread of
# 8 values: float32 rounding is amplified. Against a float64 computation of the plain program
# (same dropout masks), the float32 plain program is off by up to 3.7e-3 of the largest element
# and the training forms by 1.3e-3 (cpu_training) to 3.9e-3; form and plain differ by up to
# 4.3e-3 (measured, XLA:CPU, JAX 0.12.1, AMD Zen 4; below 1e-3 with JAX 0.10.2). Compared
# against the largest gradient element of the whole network: a wrong or missing gradient term
# is off by O(1) of its leaf.
GRADIENTS = 1e-2


def _outputs(form, variables, images):
  model = EfficientHRNet(SPEC, form)
  if form.fold_batch_norm:
    variables = fold_batch_norm(variables)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)


def _training_gradients(form, variables, images):
  """Gradients of a scalar of the training-mode outputs w.r.t. the parameters and the images."""
  model = EfficientHRNet(SPEC, form)

  def objective(params, x):
    outputs, _ = model.apply({**variables, "params": params}, x, train=True,
                             rngs={"dropout": jax.random.key(7)}, mutable=["batch_stats"])
    return sum(jnp.sum(jnp.sin(o)) for o in outputs)
  return jax.jit(jax.grad(objective, argnums=(0, 1)))(variables["params"], images)


@pytest.fixture(scope="module")
def images():
  return jax.random.normal(jax.random.key(3), (2, 64, 64, 3))


@pytest.fixture(scope="module")
def plain(h4_variables, images):
  form = ExecutionForm.plain()
  return (_outputs(form, h4_variables, images),
          _training_gradients(form, h4_variables, images))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n != "plain"])
def test_named_form_computes_the_plain_network(name, h4_variables, images, plain):
  form = ExecutionForm.named(name)
  for got, want in zip(_outputs(form, h4_variables, images), plain[0]):
    np.testing.assert_allclose(got, want, rtol=0, atol=scaled_atol(want, OUTPUTS))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n.endswith("_training")])
def test_training_form_has_the_plain_gradients(name, h4_variables, images, plain):
  got_gradients = _training_gradients(ExecutionForm.named(name), h4_variables, images)
  largest = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(plain[1]))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(plain[1])]
  for path, got, want in zip(paths, jax.tree.leaves(got_gradients), jax.tree.leaves(plain[1])):
    np.testing.assert_allclose(got, want, rtol=0, atol=GRADIENTS * largest, err_msg=path)


def test_forms_are_what_their_names_say():
  # The alternatives reach the traced program: the CPU forms' shifted depthwise and sub-pixel
  # head leave no grouped or dilated convolution, the plain and export forms keep them.
  x = jnp.zeros((1, 64, 64, 3))
  for name, primitives_expected in (("plain", True), ("export", True),
                                    ("cpu_inference", False), ("cpu_training", False)):
    model = EfficientHRNet(SPEC, ExecutionForm.named(name))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables))
    grouped = re.search(r"feature_group_count=(?!1\b)\d+", jaxpr) is not None
    assert grouped == primitives_expected, name
    assert ("lhs_dilation=(2, 2)" in jaxpr) == primitives_expected, name


def test_form_values_are_checked_and_resolved_per_backend():
  assert ExecutionForm.for_backend("cpu", train=True) == ExecutionForm.cpu_training()
  assert ExecutionForm.for_backend("gpu", train=False) == ExecutionForm.accelerator_inference()
  assert ExecutionForm.for_backend("tpu", train=True) == ExecutionForm.accelerator_training()
  with pytest.raises(ValueError, match="ExecutionForm.depthwise: expected one of"):
    ExecutionForm(depthwise="grouped")
  with pytest.raises(ValueError, match="ExecutionForm.channel_align"):
    ExecutionForm(channel_align=0)
  with pytest.raises(ValueError, match="unknown execution form 'fast'"):
    ExecutionForm.named("fast")
