"""How the network is executed: one frozen value naming every alternative lowering.

The same parameters give the same numbers (up to float rounding) in every form; what changes is
what XLA, or an exporter, is given to run. The forms exist because XLA:CPU runs some primitives
much faster spelled otherwise (`ehrnet_jax.ops`), because exported graphs want the primitives a
deployment runtime knows, and because a model folded for inference does less work. Modules
take one `ExecutionForm` as a field and call its methods for the primitives that have
alternatives; they never read the backend. The entry points (the trainer's task, the decoders,
export, counting, the benchmarks) choose the form, usually with `for_backend`.
"""

import dataclasses
from typing import Callable

import jax

from ehrnet_jax.ops import (batch_norm, conv, conv_1x1, conv_transpose, depthwise, im2col,
                            late_kernel_gradient, residual, upsample)
from ehrnet_jax.ops.written_gradient import Padding

Activation = Callable[[jax.Array], jax.Array] | None

DEPTHWISE = ("conv", "shifted")
DENSE_TRAINING = ("autodiff", "cpu_kernels")
SQUEEZE_EXCITE = ("dense", "conv")
# The named forms (`ExecutionForm.named`).
NAMES = ("plain", "cpu_training", "cpu_inference", "accelerator_training",
         "accelerator_inference", "export")


@dataclasses.dataclass(frozen=True)
class ExecutionForm:
  """Which lowering the network uses for each primitive that has several.

  depthwise: "conv" (XLA's grouped convolution: what accelerators and exporters want) or
    "shifted" (`ops.depthwise`: k*k shifted slices, 20-80x faster on XLA:CPU).
  transposed_conv: "conv_transpose" (the primitive) or "subpixel" (one ordinary convolution and
    a depth-to-space, 4x faster on XLA:CPU); see `ops.conv_transpose`.
  dense_training: how dense convolutions run under `train=True`: "autodiff" (XLA's convolution)
    or "cpu_kernels" (1x1 as matrix products also undifferentiated, few-input convolutions as
    one product (`ops.im2col`), the rest with the kernel gradient made late
    (`ops.late_kernel_gradient`)).
  written_gradients: batch norm, 1x1 and transposed convolutions differentiate with their
    hand-written gradients (`ops.batch_norm`, `ops.conv_1x1`, `ops.conv_transpose`) instead of
    autodiff's.
  store_residuals: in training, the ends of residual blocks are computed once and stored
    (`ops.residual`) rather than recomputed by each consumer (XLA:CPU's fusion).
  channel_align: the high-resolution network and head carry zero channels up to a multiple of
    this (parameters and numbers unchanged; XLA:CPU's convolutions run 1.2-1.7x faster on widths
    such as 16/32 than on 14/27).
  fold_batch_norm: evaluation on `fold_batch_norm(variables)`: each batch norm already folded
    into its convolution, once rather than on every call.
  upsample: nearest upsampling as "repeat" (`jnp.repeat`) or "resize" (`jax.image.resize`,
    which exporters write as one Resize; needs a static batch to trace); see `ops.upsample`.
  squeeze_excite: the squeeze-excitation's pooled vector through "dense" layers, or kept as a
    (B, 1, 1, C) map through 1x1 "conv"olutions with the same variables (exporters write
    GlobalAveragePool + Conv instead of ReduceSum + Div + Gemm with reshapes and transposes).
  batch_norm_axis: None, or the mapped axis (the trainer's mesh axis, "data") over whose
    devices training-mode batch norm takes its statistics (cross-replica batch norm: the
    global batch's statistics, through collectives; the model must then train under that axis,
    e.g. in `jax.shard_map`). Unlike the other fields this one changes the numbers of a
    multi-device training step (with one device it changes nothing); evaluation ignores it.
  """
  depthwise: str = "conv"
  transposed_conv: str = "conv_transpose"
  dense_training: str = "autodiff"
  written_gradients: bool = False
  store_residuals: bool = False
  channel_align: int = 1
  fold_batch_norm: bool = False
  upsample: str = "repeat"
  squeeze_excite: str = "dense"
  batch_norm_axis: str | None = None

  def __post_init__(self):
    for field, allowed in (("depthwise", DEPTHWISE), ("transposed_conv", conv_transpose.FORMS),
                           ("dense_training", DENSE_TRAINING), ("upsample", upsample.METHODS),
                           ("squeeze_excite", SQUEEZE_EXCITE)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"ExecutionForm.{field}: expected one of {allowed}; "
                         f"got {getattr(self, field)!r}")
    if not isinstance(self.channel_align, int) or self.channel_align < 1:
      raise ValueError(f"ExecutionForm.channel_align: expected a positive integer; "
                       f"got {self.channel_align!r}")

  # The named forms.
  @classmethod
  def plain(cls) -> "ExecutionForm":
    """Every primitive as XLA's own, differentiated by autodiff: the reference for the others,
    and what counting reads."""
    return cls()

  @classmethod
  def cpu_training(cls) -> "ExecutionForm":
    """The fastest training on XLA:CPU (docs/benchmarks/training.md)."""
    return cls(depthwise="shifted", transposed_conv="subpixel", dense_training="cpu_kernels",
               written_gradients=True, store_residuals=True, channel_align=8)

  @classmethod
  def cpu_inference(cls) -> "ExecutionForm":
    """The fastest inference on XLA:CPU: shifted depthwise, sub-pixel head, batch norm folded."""
    return cls(depthwise="shifted", transposed_conv="subpixel", channel_align=8,
               fold_batch_norm=True)

  @classmethod
  def accelerator_training(cls) -> "ExecutionForm":
    """Training on GPU/TPU: XLA's own convolutions, with the hand-written gradients.

    Until `benchmarks/accelerator.py` has run on a GPU this is the form the GPU has had since
    the first release (the primitives that accelerators run natively; the written gradients,
    which remove work on any backend); its "forms" rows will confirm or change it."""
    return cls(written_gradients=True, channel_align=8)

  @classmethod
  def accelerator_inference(cls) -> "ExecutionForm":
    """Inference on GPU/TPU: XLA's own convolutions, batch norm folded."""
    return cls(channel_align=8, fold_batch_norm=True)

  @classmethod
  def export(cls) -> "ExecutionForm":
    """Exported graphs (ONNX, SavedModel): each layer as the operator deployment runtimes have
    for it (grouped convolution, ConvTranspose, Resize, GlobalAveragePool + Conv); no alignment
    channels: alignment 8 measured no faster in onnxruntime and adds Pad/Slice nodes
    (BENCHMARKS.md, "Export")."""
    return cls(upsample="resize", squeeze_excite="conv")

  @classmethod
  def named(cls, name: str) -> "ExecutionForm":
    """The form of that name (one of `NAMES`)."""
    if name not in NAMES:
      raise ValueError(f"unknown execution form {name!r}; expected one of {', '.join(NAMES)}")
    return getattr(cls, name)()

  @property
  def name(self) -> str:
    """This form's name in `NAMES`, or "custom" for a form that has none."""
    return next((name for name in NAMES if ExecutionForm.named(name) == self), "custom")

  @classmethod
  def for_backend(cls, backend: str, train: bool) -> "ExecutionForm":
    """The fastest form on `backend` (JAX's backend name: "cpu", "gpu", "tpu") for training
    (`train=True`: the model is also evaluated in that form during training) or inference."""
    if backend == "cpu":
      return cls.cpu_training() if train else cls.cpu_inference()
    return cls.accelerator_training() if train else cls.accelerator_inference()

  # The primitives with alternatives.
  def conv(self, x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, groups: int,
           train: bool) -> jax.Array:
    """A convolution (NHWC, kernel (k, k, C_in / groups, C_out)) in this form."""
    if groups > 1 and groups == x.shape[-1] == kernel.shape[-1]:
      if self.depthwise == "shifted":
        return depthwise.depthwise_conv_shifted(x, kernel, stride, padding)
      return conv.conv(x, kernel, stride, padding, groups)
    cpu_kernels = train and self.dense_training == "cpu_kernels"
    is_1x1 = (kernel.shape[:2] == (1, 1) and stride == 1
              and all(p == 0 for pair in padding for p in pair))
    if is_1x1 and (self.written_gradients or cpu_kernels):
      return conv_1x1.conv_1x1(x, kernel, "product" if cpu_kernels else "conv")
    if cpu_kernels and groups == 1:
      if x.shape[-1] <= im2col.IM2COL_MAX_INPUTS:
        return im2col.conv_im2col(x, kernel, stride, padding)
      return late_kernel_gradient.conv_late_kernel_gradient(x, kernel, stride, padding)
    return conv.conv(x, kernel, stride, padding, groups)

  def conv_transpose(self, x: jax.Array, kernel: jax.Array, stride: int,
                     padding: Padding) -> jax.Array:
    """A transposed convolution (NHWC, kernel (k, k, C_out, C_in)) in this form."""
    return conv_transpose.conv_transpose(x, kernel, stride, padding, self.transposed_conv,
                                         self.written_gradients)

  def batch_norm_train(self, x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                       activation: Activation) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch norm then `activation`: `(y, mean, biased variance)`, the statistics
    over the devices of `batch_norm_axis` too."""
    if self.written_gradients:
      return batch_norm.batch_norm_train(x, scale, bias, epsilon, activation,
                                         self.batch_norm_axis)
    return batch_norm.batch_norm_train_plain(x, scale, bias, epsilon, activation,
                                             self.batch_norm_axis)

  def batch_norm_devices(self) -> int:
    """How many devices' batches one training-mode batch norm normalises together."""
    return 1 if self.batch_norm_axis is None else jax.lax.axis_size(self.batch_norm_axis)

  def residual_end(self, x: jax.Array, train: bool) -> jax.Array:
    """The output of a residual block (`x` itself; stored once in training if so chosen)."""
    return residual.stored_once(x) if train and self.store_residuals else x

  def upsample_nearest(self, x: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour upsampling of NHWC maps by an integer factor."""
    return upsample.upsample_nearest(x, factor, self.upsample)
