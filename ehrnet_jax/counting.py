"""Parameter and compute counts, counted live: the true numbers and the paper's convention.

Counting traces the network with JAX (1-3 s per model on 2 cores, after ~3 s importing JAX and
Flax); `ehrnet_jax.stored_counts` holds these functions' results for the published models, which
`ehrnet info` reads instead.

* Parameters: the exact count of trainable parameters (equal to the reference's
  `model.parameters()`).
* FLOPs: XLA's `cost_analysis()` of the lowered (not compiled) eval-mode network: every operation
  of the program as written counted once (a multiply-add counts 2; a convolution only over the
  positions its window covers inside the input, not over padding or the zeros a transposed conv
  inserts; element-wise work included, batch norm as its per-channel multiply and add). The
  compiled program's figure is 0.7-0.8% higher for H0 ... H-4 only because XLA's fusion
  recomputes cheap element-wise producers (ReLUs and residual adds that feed several HRNet fuse
  paths) inside each consumer; that is an artefact of the CPU compiler, not work the network
  needs, and compiling takes ~8 s per variant.
* Conv MACs: multiply-accumulates of every convolution and dense layer, read off the jaxpr, with a
  transposed conv counted over its input (the convention of fvcore and PyTorch's counters).
* The paper's numbers come from HigherHRNet's `get_model_summary`, which counts every MBConv
  block's parameters twice (once for the block, once for its inner layers; only the stem escapes)
  and counts the transposed conv's MACs over its output, i.e. 4x. Its "FLOPs" are those MACs.
"""

import math

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from ehrnet_jax.models import (BACKBONE, EfficientHRNet, EfficientNetClassifier, ExecutionForm,
                               abstract_variables)
from ehrnet_jax.scaling import ScalingSpec


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _macs(jaxpr) -> tuple[int, int]:
  """(MACs with transposed convs counted over their input, MACs counted over their output)."""
  true_macs = output_macs = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      out_shape = eqn.outvars[0].aval.shape
      rhs_shape = eqn.invars[1].aval.shape
      out_features = rhs_shape[eqn.params["dimension_numbers"].rhs_spec[0]]
      macs = math.prod(out_shape) * math.prod(rhs_shape) // out_features
      output_macs += macs
      true_macs += macs // math.prod(eqn.params["lhs_dilation"])
    elif eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      macs = math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in contracting)
      true_macs += macs
      output_macs += macs
    for sub in _subjaxprs(eqn):
      sub_true, sub_output = _macs(sub)
      true_macs += sub_true
      output_macs += sub_output
  return true_macs, output_macs


def _counts(model, height: int, width: int, with_flops: bool) -> tuple[dict, dict]:
  """(variables shapes, {"params", "conv_macs", "paper_flops"[, "flops"]}) of `model` at batch 1.

  The eval network is traced once: its jaxpr gives the MACs, its lowered (unoptimised) program
  XLA's FLOPs, with nothing compiled.
  """
  images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  variables = abstract_variables(model)
  traced = jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, images)
  true_macs, output_macs = _macs(traced.jaxpr.jaxpr)
  counts = {"params": count_params(variables["params"]), "conv_macs": true_macs,
            "paper_flops": output_macs}
  if with_flops:
    cost = traced.lower().cost_analysis()
    counts["flops"] = int((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  return variables, counts


def model_counts(spec: ScalingSpec, size: tuple[int, int] | None = None,
                 with_flops: bool = True) -> dict:
  """Counts for `EfficientHRNet(spec)` at batch 1 and `size` (H, W; default: the native input)."""
  height, width = size or (spec.input_size, spec.input_size)
  # The network as specified: depthwise and transposed convs as such, no alignment channels.
  model = EfficientHRNet(spec, ExecutionForm.plain())
  variables, counts = _counts(model, height, width, with_flops)
  backbone = count_params(variables["params"][BACKBONE])
  stem = count_params(variables["params"][BACKBONE]["stem"])
  return {
      "name": spec.name, "phi": spec.phi, "counted_at_hw": [height, width],
      "params": counts["params"], "backbone_params": backbone,
      "batch_stats": count_params(variables["batch_stats"]),
      "conv_macs": counts["conv_macs"],
      "paper_params": counts["params"] + backbone - stem,
      "paper_flops": counts["paper_flops"],
      **({"flops": counts["flops"]} if with_flops else {}),
  }


def classifier_counts(spec: ScalingSpec, num_classes: int = 1000, with_flops: bool = True
                      ) -> dict:
  """Counts for the backbone classifier `EfficientNetClassifier(spec, num_classes)` at batch 1
  and its Table-2 input size."""
  size = spec.classifier_input_size
  model = EfficientNetClassifier(spec, num_classes, form=ExecutionForm.plain())
  _, counts = _counts(model, size, size, with_flops)
  return {"name": spec.classifier_name, "phi": spec.phi, "input_size": size,
          "num_classes": num_classes, "params": counts["params"],
          "conv_macs": counts["conv_macs"], **({"flops": counts["flops"]} if with_flops else {})}
