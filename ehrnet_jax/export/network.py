"""The network as exported: eval mode, a fixed spatial size, NHWC or NCHW tensors.

The network is traced in `ExecutionForm.export()`, which spells each layer as the operator a
deployment runtime has for it, with the same numbers: XLA's grouped convolution for the
depthwise layers (the shifted-slices form of the CPU would become k*k slices and multiplies per
layer in ONNX), the plain transposed convolution in the head (ONNX ConvTranspose), nearest
upsampling as `jax.image.resize` (one Resize instead of Reshape + Expand chains) and the
squeeze-excitation as a spatial mean and 1x1 convolutions (GlobalAveragePool + Conv instead of
ReduceSum + Div + Gemm and reshapes). Eval-mode batch norm is folded into the convolutions by
the model itself (`ConvBN`); the remaining per-channel arithmetic on the weights is
constant-folded after export.
"""

import dataclasses
from typing import Callable

import jax.numpy as jnp

from ehrnet_jax.errors import UserError
from ehrnet_jax.images import IMAGENET_MEAN, IMAGENET_STD
from ehrnet_jax.inference import transforms
from ehrnet_jax.models import EfficientHRNet, ExecutionForm
from ehrnet_jax.scaling import ScalingSpec

OUTPUT_NAMES = ("heatmaps_4", "tags_4", "heatmaps_2")
# The zero-channel padding of the high-resolution widths in exported graphs: the export form's
# (`ExecutionForm.export`), chosen by onnxruntime latency (BENCHMARKS.md, "Export").
EXPORT_CHANNEL_ALIGN = ExecutionForm.export().channel_align
INPUT_NAME = "images"
LAYOUTS = ("NHWC", "NCHW")


@dataclasses.dataclass(frozen=True)
class ExportOptions:
  """What the exported graph looks like.

  image_hw: network input (H, W), multiples of 32. batch: a fixed batch size, or None for a
  dynamic batch dimension. layout: "NHWC" or "NCHW", for the input and the three outputs.
  channel_align: the zero-channel padding of the high-resolution widths inside the graph (see
  `ExecutionForm.channel_align`; the outputs are the same).
  """
  image_hw: tuple[int, int]
  batch: int | None = None
  layout: str = "NHWC"
  channel_align: int = EXPORT_CHANNEL_ALIGN

  def input_shape(self, batch_name: str = "batch") -> tuple:
    h, w = self.image_hw
    batch = self.batch if self.batch is not None else batch_name
    return (batch, 3, h, w) if self.layout == "NCHW" else (batch, h, w, 3)


def parse_size(text: str | None, spec: ScalingSpec) -> tuple[int, int]:
  """'384x640' (HxW) -> (384, 640); None -> the variant's square input size."""
  if text is None:
    return spec.input_size, spec.input_size
  return transforms.parse_hw(text, "--size")


def parse_batch(text: str) -> int | None:
  """'dynamic' -> None; '1', '2', ... -> that fixed batch size."""
  if text == "dynamic":
    return None
  if not text.isdigit() or int(text) < 1:
    raise UserError(f"--batch must be 'dynamic' or a positive integer; got {text!r}")
  return int(text)


def export_model(spec: ScalingSpec, channel_align: int = EXPORT_CHANNEL_ALIGN) -> EfficientHRNet:
  """The network in its export form (see the module docstring)."""
  return EfficientHRNet(spec, dataclasses.replace(ExecutionForm.export(),
                                                  channel_align=channel_align))


def inference_fn(spec: ScalingSpec, layout: str = "NHWC",
                 channel_align: int = EXPORT_CHANNEL_ALIGN) -> Callable:
  """(variables, images (layout)) -> (heatmaps_4, tags_4, heatmaps_2) (layout)."""
  if layout not in LAYOUTS:
    raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
  model = export_model(spec, channel_align)

  def fn(variables, images):
    if layout == "NCHW":
      images = jnp.transpose(images, (0, 2, 3, 1))
    outputs = model.apply(variables, images, train=False)
    if layout == "NCHW":
      outputs = [jnp.transpose(o, (0, 3, 1, 2)) for o in outputs]
    return tuple(outputs)
  return fn


def metadata(spec: ScalingSpec, options: ExportOptions) -> dict[str, str]:
  """What a runtime needs to feed the model and read its outputs, as strings."""
  h, w = options.image_hw
  return {
      "ehrnet.variant": spec.name,
      "ehrnet.phi": f"{spec.phi:g}",
      "ehrnet.input_size": str(spec.input_size),
      "ehrnet.image_hw": f"{h}x{w}",
      "ehrnet.batch": "dynamic" if options.batch is None else str(options.batch),
      "ehrnet.layout": options.layout,
      "ehrnet.normalization": ("RGB, x / 255, then (x - mean) / std with mean="
                               f"{IMAGENET_MEAN.tolist()} std={IMAGENET_STD.tolist()}"),
      "ehrnet.inputs": INPUT_NAME,
      "ehrnet.outputs": ",".join(OUTPUT_NAMES),
      "ehrnet.num_joints": str(spec.num_joints),
  }


