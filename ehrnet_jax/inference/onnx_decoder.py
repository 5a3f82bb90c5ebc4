"""Running an exported ONNX model with onnxruntime; no JAX import anywhere on this path.

`OnnxNetwork` wraps an `onnxruntime.InferenceSession` of a model written by
`ehrnet export --format onnx` and reads its metadata. Called with normalised float32 NHWC images
it returns the three NHWC maps: the `host_decoder.Backend` that `host_decoder.HostDecoder` expects,
whatever the model's layout and batch. The model's spatial size is fixed at export: smaller
inputs are padded at the bottom/right with black, as `jax_decoder.JaxDecoder(bucket=...)` does,
and the outputs cropped; larger inputs are an error that says which `--size` to export.
`onnx_estimator` builds the whole `PoseEstimator`; by default it fits every image into the
model's size (`transforms.fit_size`), so that any image runs; with `input_wh=None` it warps as
the reference does (per-image test sizes, which the model must hold: evaluation's protocol).
"""

import dataclasses
import pathlib

import numpy as np
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from ehrnet_jax import images as images_lib
from ehrnet_jax import keypoints as keypoints_lib
from ehrnet_jax.errors import UserError
from ehrnet_jax.inference import grouping
from ehrnet_jax.inference.estimator import PoseEstimator
from ehrnet_jax.inference.host_decoder import HostDecoder
from ehrnet_jax.scaling import ScalingSpec

EXPORT_HINT = ("write the model with `ehrnet export --variant NAME --checkpoint DIR --format onnx "
               "--out FILE.onnx`")
# `onnx_estimator(input_wh=MODEL_SIZE)`: fit every image into the model's exported size.
MODEL_SIZE = "model"
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """The metadata `ehrnet export` stores in the model (keys `ehrnet.*`)."""
  spec: ScalingSpec               # the exported variant (from its phi)
  input_size: int                 # the variant's training size: sets the test-time warp
  image_hw: tuple[int, int]       # the network input the graph was exported for
  batch: int | None               # None: dynamic
  layout: str                     # "NHWC" or "NCHW", input and outputs

  @classmethod
  def from_metadata(cls, props: dict[str, str], path) -> "ModelInfo":
    try:
      h, w = (int(v) for v in props["ehrnet.image_hw"].split("x"))
      batch = props["ehrnet.batch"]
      return cls(ScalingSpec.from_phi(float(props["ehrnet.phi"])),
                 int(props["ehrnet.input_size"]), (h, w),
                 None if batch == "dynamic" else int(batch), props["ehrnet.layout"])
    except (KeyError, ValueError) as error:
      raise UserError(f"{path}: not an ONNX model written by `ehrnet export` (metadata "
                      f"{error} missing or malformed); {EXPORT_HINT}") from None


def session_providers(device: str) -> list[str]:
  """Execution providers for `device` ("cpu", "cuda", "tensorrt"), those available, in order."""
  if device not in PROVIDERS:
    raise UserError(f"--device must be one of {', '.join(PROVIDERS)}; got {device!r}")
  available = set(onnxruntime.get_available_providers())
  wanted = PROVIDERS[device]
  if wanted[0] not in available:
    raise UserError(f"--device {device}: onnxruntime here has no {wanted[0]} (available: "
                    f"{', '.join(sorted(available))}); install onnxruntime-gpu (on a Jetson: "
                    "the wheel for its JetPack, docs/deployment.md) or use --device cpu")
  return [p for p in wanted if p in available]


class OnnxNetwork:
  """An exported model as a `host_decoder.Backend`: float32 NHWC images -> NHWC maps."""

  def __init__(self, path, device: str = "cpu"):
    path = pathlib.Path(path)
    if not path.is_file():
      raise UserError(f"{path}: no such ONNX file ({EXPORT_HINT}; a checkpoint directory runs "
                      "with --backend jax)")
    try:
      self.session = onnxruntime.InferenceSession(str(path), providers=session_providers(device))
    except (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph) as error:
      raise UserError(f"{path}: onnxruntime cannot load this file ({error}); is it an ONNX "
                      f"model? {EXPORT_HINT}") from None
    self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, path)
    self.path = path

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, h, w, _ = images.shape
    (model_h, model_w), batch = self.info.image_hw, self.info.batch
    if h > model_h or w > model_w:
      raise UserError(f"{self.path} takes images up to {model_w}x{model_h} (WxH) but this one "
                      f"needs {w}x{h}; export with a larger `--size` (HxW, e.g. "
                      f"--size {max(h, model_h)}x{max(w, model_w)})")
    x = np.broadcast_to(images_lib.normalize(np.zeros((1, 1, 1, 3), np.uint8)),
                        (b, model_h, model_w, 3)).copy()   # normalised black
    x[:, :h, :w] = images
    step = batch or b
    chunks = [self._run(x[i:i + step]) for i in range(0, b, step)]
    outputs = [np.concatenate(maps)[:b] for maps in zip(*chunks)]
    return (outputs[0][:, :h // 4, :w // 4], outputs[1][:, :h // 4, :w // 4],
            outputs[2][:, :h // 2, :w // 2])

  def _run(self, x: np.ndarray) -> list[np.ndarray]:
    """One session run on at most the model's batch (padded to it when static), NHWC maps."""
    count = len(x)
    if self.info.batch and count < self.info.batch:
      x = np.concatenate([x, np.zeros((self.info.batch - count, *x.shape[1:]), x.dtype)])
    if self.info.layout == "NCHW":
      x = x.transpose(0, 3, 1, 2)
    outputs = self.session.run(None, {self.session.get_inputs()[0].name:
                                      np.ascontiguousarray(x)})
    if self.info.layout == "NCHW":
      outputs = [o.transpose(0, 2, 3, 1) for o in outputs]
    return [o[:count] for o in outputs]


def onnx_estimator(path, variant: str | None = None, scales=(1.0,), flip: bool = True,
                   device: str = "cpu",
                   config: grouping.GroupingConfig = grouping.GroupingConfig(),
                   input_wh: tuple[int, int] | str | None = MODEL_SIZE) -> PoseEstimator:
  """A `PoseEstimator` running an exported ONNX model; `variant`, if given, must match it.

  `input_wh`: `MODEL_SIZE` (default) fits every image into the model's exported size; (w, h)
  into that network input (padded to the model's size), which with every test scale must fit the
  model (UserError otherwise); None: the reference's per-image test sizes (`PoseEstimator`).
  """
  network = OnnxNetwork(path, device)
  stored = network.info.spec
  if variant is not None and ScalingSpec.from_name(variant) != stored:
    raise UserError(f"{path} holds variant {stored.name}, not {variant}; pass "
                    f"--variant {stored.variant_arg} or another model")
  model_h, model_w = network.info.image_hw
  if input_wh == MODEL_SIZE:
    input_wh = (model_w, model_h)
  keypoint_set = keypoints_lib.COCO
  decoder = HostDecoder(network, keypoint_set.flip_index if flip else None, config)
  estimator = PoseEstimator(decoder, network.info.input_size, scales, keypoint_set, config,
                            input_wh)
  if input_wh is not None:
    w, h = estimator.input_sizes(input_wh[::-1])[0]   # the largest scale's, for any image
    if w > model_w or h > model_h:
      raise UserError(f"{path} takes network inputs up to {model_h}x{model_w} (HxW), but "
                      f"{input_wh[1]}x{input_wh[0]} at scale {max(estimator.scales):g} needs "
                      f"{h}x{w}; choose a smaller input size or scales, or export with a larger "
                      "`--size`")
  return estimator
