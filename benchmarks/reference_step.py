"""The authors' PyTorch EfficientHRNet training step, rebuilt for a side-by-side speed comparison.

This is NOT the authors' code. It is a plain-PyTorch model written from the documented facts in
`../shared/docs/reference-architecture.md` (section 1: architecture and scaling rules, section 2:
loss, section 5: trainer) and checked against the authors' own state-dict listings and outputs in
`../shared/fixtures/reference` (tests/test_reference_step.py): `build_reference(phi).state_dict()`
has the reference's keys and shapes in the same order, and with the reference's weights it
reproduces the reference's outputs. It uses the standard torch modules (ZeroPad2d + VALID Conv2d
in the backbone, BatchNorm2d eps 1e-5 / momentum 0.1, ConvTranspose2d, nearest Upsample, ...), so
the timing measures what PyTorch (oneDNN on CPU) does with this network.

The loss follows section 2 (masked heatmap MSE at both outputs, AE "exp" pull/push on out0's tag
channels, weights 1e-3, all batch-averaged) but is vectorised: per-person tags are gathered with
masks instead of the reference's Python loop over people and joints, so it is somewhat faster
than the authors' loss; it is a small part of the step either way.

The step is the authors' trainer's: model.train(), Adam(lr=1e-3) over all parameters, and with
--freeze-backbone `requires_grad=False` on every parameter of `model.features` while the backbone
stays in train mode (batch-statistics BN, drop-connect 0.2). Synthetic batches as in
benchmarks/train_step.py (random images, heatmaps in [0, 1], masks of ones, 5 people per image);
the targets are prebuilt, as the reference builds them in its data loader. --inference times the
network's forward pass instead (eval mode, inference mode, images only). Prints one JSON row.

On a GPU: --device cuda (or auto). The model is built there and two batches placed there once,
cudnn.benchmark is on (its autotuning lands in the warm-up), each timed step is synchronised
before and after, and the row has torch.cuda.max_memory_allocated as peak_device_memory_gb.
--precision chooses the float32 flags explicitly, named as in the JAX benchmark: fp32 (no TF32
anywhere), tf32, or bf16 (autocast around forward and loss, the outputs cast to float32 before
the loss, parameters float32). --channels-last converts the model and images; --compile wraps the
model in torch.compile, which compiles in the first step: the first step's seconds are reported
apart (compile_and_first_step_s), then the rest of the warm-up (warmup_s), then the medians.
`measure_training` and `measure_inference` return the rows the CLI prints; --seconds (their
`seconds`) caps the timed steps for a time budget. benchmarks/accelerator.py asks for its rows
through --serve (JSON requests on stdin, rows on stdout; `serve`), in a process of its own.

  python benchmarks/reference_step.py --variant H-4 --batch 8 --size 384 --freeze-backbone
  python benchmarks/reference_step.py --variant H0 --batch 2 --size 512 --steps 6 --warmup 2
  python benchmarks/reference_step.py --device cuda --variant H0 --batch 32 --size 512 \\
      --precision bf16 --channels-last --compile --steps 50 --warmup 5 --seconds 20
  python benchmarks/reference_step.py --device cuda --inference --variant H-4 --batch 1 --size 384
"""

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import time

import torch
from torch import nn

NUM_JOINTS, MAX_PEOPLE = 17, 30
# phi -> (WIDTH_MULT, DEPTH_MULT, stage-3 modules, stage-4 modules): the Example Configs' values.
SCALING = {0: (1.0, 1.0, 4, 3), -1: (0.909, 0.833, 3, 3), -2: (0.826, 0.694, 2, 3),
           -3: (0.751, 0.578, 1, 3), -4: (0.684, 0.483, 1, 2)}
# EfficientNet-B0 stages: expand t, channels c, repeats n, first stride s, kernel k.
B0_STAGES = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
             (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
TAPPED_STAGES = (24, 40, 112, 320)  # the backbone taps: ends of these stages (strides 4/8/16/32)
DROP_CONNECT = 0.2


def _make_divisible(v: float, divisor: int = 8) -> int:
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


def _round_filters(c: int, width: float) -> int:
  return c if width == 1.0 else int(_make_divisible(c * width))


def _round_repeats(n: int, depth: float) -> int:
  return n if depth == 1.0 else int(math.ceil(depth * n))


class Swish(nn.Module):
  def forward(self, x):
    return x * torch.sigmoid(x)


class ConvBNSwish(nn.Sequential):
  """ZeroPad2d(p = max(k - s, 0), split low/high) + VALID conv (no bias) + BN + Swish."""

  def __init__(self, cin, cout, k, stride=1, groups=1):
    p = max(k - stride, 0)
    super().__init__(nn.ZeroPad2d([p // 2, p - p // 2, p // 2, p - p // 2]),
                     nn.Conv2d(cin, cout, k, stride, 0, groups=groups, bias=False),
                     nn.BatchNorm2d(cout), Swish())


class SqueezeExcite(nn.Module):
  def __init__(self, channels, reduced):
    super().__init__()
    self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, reduced, 1), Swish(),
                            nn.Conv2d(reduced, channels, 1), nn.Sigmoid())

  def forward(self, x):
    return x * self.se(x)


class MBConv(nn.Module):
  """[expand 1x1] -> depthwise kxk -> SE (reduced = in/4) -> project 1x1 -> BN, [+ drop-connect]."""

  def __init__(self, cin, cout, expand, k, stride):
    super().__init__()
    hidden = cin * expand
    layers = [ConvBNSwish(cin, hidden, 1)] if expand != 1 else []
    layers += [ConvBNSwish(hidden, hidden, k, stride, groups=hidden),
               SqueezeExcite(hidden, max(1, int(cin / 4))),
               nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    self.conv = nn.Sequential(*layers)
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    if not self.residual:
      return self.conv(x)
    y = self.conv(x)
    if self.training:  # drop whole samples with probability 0.2, rescale the kept ones
      keep = 1.0 - DROP_CONNECT
      y = y * (torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) < keep) / keep
    return x + y


class BasicBlock(nn.Module):
  def __init__(self, channels):
    super().__init__()
    self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.relu = nn.ReLU(inplace=True)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(y)) + x)


class HighResolutionModule(nn.Module):
  """HRNet module: 2 BasicBlocks per branch, then SUM fusion (all outputs or only branch 0)."""

  def __init__(self, widths, multi_scale_output=True):
    super().__init__()
    n = len(widths)
    self.branches = nn.ModuleList(nn.Sequential(BasicBlock(w), BasicBlock(w)) for w in widths)
    self.fuse_layers = nn.ModuleList()
    for i in range(n if multi_scale_output else 1):
      row = nn.ModuleList()
      for j in range(n):
        if j > i:
          row.append(nn.Sequential(nn.Conv2d(widths[j], widths[i], 1, bias=False),
                                   nn.BatchNorm2d(widths[i]),
                                   nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
        elif j == i:
          row.append(None)
        else:
          steps = [nn.Sequential(nn.Conv2d(widths[j], widths[j], 3, 2, 1, bias=False),
                                 nn.BatchNorm2d(widths[j]), nn.ReLU(inplace=True))
                   for _ in range(i - j - 1)]
          steps.append(nn.Sequential(nn.Conv2d(widths[j], widths[i], 3, 2, 1, bias=False),
                                     nn.BatchNorm2d(widths[i])))
          row.append(nn.Sequential(*steps))
      self.fuse_layers.append(row)
    self.relu = nn.ReLU()

  def forward(self, xs):
    xs = [branch(x) for branch, x in zip(self.branches, xs)]
    out = []
    for i, row in enumerate(self.fuse_layers):
      y = xs[0] if i == 0 else row[0](xs[0])
      for j in range(1, len(xs)):
        y = y + (xs[j] if i == j else row[j](xs[j]))
      out.append(self.relu(y))
    return out


class Stage(nn.Sequential):
  def forward(self, xs):
    for module in self:
      xs = module(xs)
    return xs


def _transition(cin, cout):
  return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EfficientHRNetReference(nn.Module):
  """EfficientHRNet H{phi}: compact EfficientNet-B0 backbone, HRNet stages 2-4 fed from the
  backbone taps, 1/4-resolution head (17 heatmaps + 17 tags) and a deconv 1/2-resolution head."""

  def __init__(self, phi: int):
    super().__init__()
    width, depth, modules3, modules4 = SCALING[phi]
    w = [int(math.ceil(base * 1.2455 ** phi)) for base in (32, 64, 128, 256)]
    cin = _round_filters(32, width)
    features = [ConvBNSwish(3, cin, 3, 2)]
    self.taps, tap_channels = [], []
    for t, c, n, s, k in B0_STAGES:
      cout = _round_filters(c, width)
      for i in range(_round_repeats(n, depth)):
        features.append(MBConv(cin, cout, t, k, s if i == 0 else 1))
        cin = cout
      if c in TAPPED_STAGES:
        self.taps.append(len(features) - 1)
        tap_channels.append(_make_divisible(c * width))
    self.features = nn.Sequential(*features)
    c1, c2, c3, c4 = tap_channels
    self.trans1_branch1, self.trans1_branch2 = _transition(c1, w[0]), _transition(c2, w[1])
    self.stage2 = Stage(HighResolutionModule(w[:2]))
    self.trans2_branch1, self.trans2_branch2 = _transition(w[0], w[0]), _transition(w[1], w[1])
    self.trans2_branch3 = _transition(c3, w[2])
    self.stage3 = Stage(*(HighResolutionModule(w[:3]) for _ in range(modules3)))
    self.trans3_branch1, self.trans3_branch2 = _transition(w[0], w[0]), _transition(w[1], w[1])
    self.trans3_branch3, self.trans3_branch4 = _transition(w[2], w[2]), _transition(c4, w[3])
    self.stage4 = Stage(*(HighResolutionModule(w, multi_scale_output=i < modules4 - 1)
                          for i in range(modules4)))
    self.final_layers = nn.ModuleList([nn.Conv2d(w[0], 2 * NUM_JOINTS, 1),
                                       nn.Conv2d(w[0], NUM_JOINTS, 1)])
    deconv = nn.Sequential(
        nn.ConvTranspose2d(w[0] + 2 * NUM_JOINTS, w[0], 4, 2, 1, output_padding=0, bias=False),
        nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True))
    self.deconv_layers = nn.ModuleList([nn.Sequential(
        deconv, nn.Sequential(BasicBlock(w[0])), nn.Sequential(BasicBlock(w[0])))])
    for m in self.features.modules():  # the reference's backbone init (the HR part: torch default)
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        if m.bias is not None:
          nn.init.zeros_(m.bias)

  def forward(self, x):
    taps = []
    for i, layer in enumerate(self.features):
      x = layer(x)
      if i in self.taps:
        taps.append(x)
    x1, x2, x3, x4 = taps
    y = self.stage2([self.trans1_branch1(x1), self.trans1_branch2(x2)])
    y = self.stage3([self.trans2_branch1(y[0]), self.trans2_branch2(y[1]), self.trans2_branch3(x3)])
    y = self.stage4([self.trans3_branch1(y[0]), self.trans3_branch2(y[1]),
                     self.trans3_branch3(y[2]), self.trans3_branch4(x4)])
    x = y[0]
    out0 = self.final_layers[0](x)
    x = self.deconv_layers[0](torch.cat((x, out0), 1))
    return [out0, self.final_layers[1](x)]


def build_reference(phi: int) -> nn.Module:
  """The EfficientHRNet H{phi} (phi in 0..-4) PyTorch model, in train mode."""
  return EfficientHRNetReference(int(phi))


def heatmap_loss(pred, target, mask):
  """Per image: mean over (J, H, W) of (pred - target)^2 * mask."""
  return ((pred - target) ** 2 * mask[:, None]).mean(dim=(1, 2, 3))


def ae_loss(tags, joints):
  """Per image "exp" associative-embedding (push, pull). tags (B, J, H, W); joints (B, P, J, 2)
  as (j*H*W + y*W + x, visible). Vectorised over people and joints (the reference loops)."""
  b, p, j, _ = joints.shape
  values = tags.reshape(b, -1).gather(1, joints[..., 0].reshape(b, -1)).reshape(b, p, j)
  vis = (joints[..., 1] > 0).to(values.dtype)
  count = vis.sum(-1)
  person = count > 0
  mean = (values * vis).sum(-1) / count.clamp(min=1)
  pull_p = ((values - mean[..., None]) ** 2 * vis).sum(-1) / count.clamp(min=1)
  n = person.sum(-1).to(values.dtype)
  pull = (pull_p * person).sum(-1) / n.clamp(min=1)
  pair = (person[:, :, None] & person[:, None, :]).to(values.dtype)
  same = torch.exp(-(mean[:, :, None] - mean[:, None, :]) ** 2) * pair
  push = (same.sum(dim=(1, 2)) - n) / (n * (n - 1)).clamp(min=1) * 0.5
  return torch.where(n > 1, push, torch.zeros_like(push)), pull


def pose_loss(outputs, heatmaps, masks, joints, push_factor=1e-3, pull_factor=1e-3):
  """Section 2: heatmap loss at both outputs + AE loss on out0's tags, each batch-averaged."""
  total = 0.0
  for out, target, mask in zip(outputs, heatmaps, masks):
    total = total + heatmap_loss(out[:, :NUM_JOINTS], target, mask).mean()
  push, pull = ae_loss(outputs[0][:, NUM_JOINTS:], joints)
  return total + (push * push_factor).mean() + (pull * pull_factor).mean()


def synthetic_images(gen: torch.Generator, batch: int, size: int) -> torch.Tensor:
  """Random images in [0, 1] normalised with the ImageNet mean and std, as the network sees them."""
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  return (torch.rand(batch, 3, size, size, generator=gen) - mean) / std


def synthetic_batch(gen: torch.Generator, batch: int, size: int, people: int = 5):
  """Normalised random images, heatmaps in [0, 1] at 1/4 and 1/2, masks of ones and joints with
  `people` valid people of 17 visible joints (indices at 1/4 resolution)."""
  images = synthetic_images(gen, batch, size)
  res = [size // 4, size // 2]
  heatmaps = [torch.rand(batch, NUM_JOINTS, r, r, generator=gen) for r in res]
  masks = [torch.ones(batch, r, r) for r in res]
  r = res[0]
  xy = torch.randint(0, r, (batch, people, NUM_JOINTS, 2), generator=gen)
  index = torch.arange(NUM_JOINTS).view(1, 1, -1) * r * r + xy[..., 1] * r + xy[..., 0]
  joints = torch.zeros(batch, MAX_PEOPLE, NUM_JOINTS, 2, dtype=torch.int64)
  joints[:, :people, :, 0] = index
  joints[:, :people, :, 1] = 1
  return images, heatmaps, masks, joints


def variant_phi(name: str) -> int:
  return int(name.upper().removeprefix("H"))


PRECISIONS = ("fp32", "tf32", "bf16")


def set_precision(precision: str) -> dict:
  """Chooses, process-wide, how float32 convolutions and products run, and returns the flags read
  back (recorded in every result row). "fp32": true float32 (no TF32 in cuBLAS or cuDNN, matmul
  precision "highest"); "tf32": TF32 allowed in both, matmul precision "high"; "bf16": the float32
  flags of "fp32", with forward and loss under bfloat16 autocast (`precision_context`). Chosen
  explicitly because the defaults differ (PyTorch: TF32 in cuDNN's convolutions only; JAX on an
  H100: TF32 in both), so "fp32" would not say what ran. The names are the JAX benchmark's."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
  tf32 = precision == "tf32"
  torch.set_float32_matmul_precision("high" if tf32 else "highest")
  torch.backends.cuda.matmul.allow_tf32 = tf32
  torch.backends.cudnn.allow_tf32 = tf32
  return {"name": precision, "float32_matmul_precision": torch.get_float32_matmul_precision(),
          "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
          "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
          "autocast": "bfloat16" if precision == "bf16" else None}


def precision_context(device: torch.device, precision: str):
  """bfloat16 autocast on `device` for "bf16" (convolutions and products in bfloat16; parameters,
  gradients and Adam's state stay float32); otherwise a disabled autocast: ops run as written."""
  return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def resolve_device(device) -> torch.device:
  """A torch.device from "cpu", "cuda", "cuda:N" or a torch.device; "auto": CUDA if available."""
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  return torch.device(device)


def synchronize(device: torch.device) -> None:
  """Waits for the work queued on `device`: CUDA runs asynchronously, CPU ops return finished."""
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def training_step(model, optimizer, batch, device: torch.device, precision: str) -> torch.Tensor:
  """One step of the authors' trainer: forward and loss under `precision_context`, backward, Adam.
  The outputs are cast to float32 before the loss (a no-op in fp32 and tf32, so the loss is the
  plain step's), so under bf16 autocast the loss is float32: none of its ops is on autocast's
  bfloat16 list. Returns the loss tensor unread (reading it would synchronise the device)."""
  images, heatmaps, masks, joints = batch
  optimizer.zero_grad()
  with precision_context(device, precision):
    loss = pose_loss([out.float() for out in model(images)], heatmaps, masks, joints)
  loss.backward()
  optimizer.step()
  return loss


def inference_step(model, images, device: torch.device, precision: str) -> list:
  """The network's two outputs for `images` under inference mode and `precision_context`."""
  with torch.inference_mode(), precision_context(device, precision):
    return model(images)


def release_device_memory() -> None:
  """Frees what earlier measurements left behind: torch.compile's graphs (only once torch.compile
  is loaded: importing it costs seconds and 70 MB), garbage, and on CUDA the caching allocator's
  unused blocks, which go back to the driver for the next measurement or for another framework
  in this process (JAX)."""
  if "torch._dynamo" in sys.modules:
    torch.compiler.reset()
  gc.collect()
  if torch.cuda.is_initialized():
    torch.cuda.empty_cache()


def _prepare(device, precision: str) -> tuple:
  """Resolves the device, sets the precision and releases earlier measurements' memory and
  torch.compile graphs (so this one compiles its own static shapes afresh instead of reusing them
  or generalising to dynamic shapes); on CUDA, sets cudnn.benchmark (each convolution's algorithm
  autotuned at its first run, in the warm-up) and starts a fresh count of peak device memory.
  Returns (device, the precision's flags)."""
  device = resolve_device(device)
  flags = set_precision(precision)
  release_device_memory()
  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True
    torch.cuda.init()
    torch.cuda.reset_peak_memory_stats(device)
  return device, flags


def _model(variant: str, device: torch.device, channels_last: bool) -> nn.Module:
  """The H{phi} network with seed 0's weights on `device`, in channels_last if asked."""
  torch.manual_seed(0)
  model = build_reference(variant_phi(variant)).to(device)
  return model.to(memory_format=torch.channels_last) if channels_last else model


def _compiled(model: nn.Module, compile: bool):  # pylint: disable=redefined-builtin
  """torch.compile(model) in the default mode (it compiles at the first call), else the model."""
  return torch.compile(model) if compile else model


def _images_on(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
  """`images` copied to `device`, in channels_last (NHWC in memory) if asked."""
  return images.to(device, memory_format=torch.channels_last if channels_last
                   else torch.contiguous_format)


def _training_batches(batch: int, size: int, device: torch.device, channels_last: bool) -> list:
  """Two synthetic batches (generator seed 0), placed on `device` once."""
  gen = torch.Generator().manual_seed(0)
  batches = []
  for _ in range(2):
    images, heatmaps, masks, joints = synthetic_batch(gen, batch, size)
    batches.append((_images_on(images, device, channels_last), [h.to(device) for h in heatmaps],
                    [m.to(device) for m in masks], joints.to(device)))
  return batches


def _inference_batches(batch: int, size: int, device: torch.device, channels_last: bool) -> list:
  """Two batches of normalised random images (generator seed 0), placed on `device` once."""
  gen = torch.Generator().manual_seed(0)
  return [_images_on(synthetic_images(gen, batch, size), device, channels_last) for _ in range(2)]


def _timed(step, i: int, device: torch.device) -> tuple:
  """(step(i), wall seconds, process CPU seconds), the device synchronised before and after."""
  synchronize(device)
  start, cpu_start = time.perf_counter(), time.process_time()
  result = step(i)
  synchronize(device)
  return result, time.perf_counter() - start, time.process_time() - cpu_start


def _run_steps(step, device: torch.device, images_per_step: int, steps: int, warmup: int,
               seconds: float | None) -> tuple:
  """Runs step(0), step(1), ...: `warmup` steps, the first timed apart (torch.compile compiles and
  cuDNN autotunes there), then up to `steps` timed ones, stopping early once `seconds` of timed
  steps have passed if given (but after at least 3). Returns (the last step's result, figures:
  median and mean wall seconds, median and minimum process CPU seconds (all threads; robust on a
  shared CPU), the 1-minute load average's range while timing, images per second)."""
  warm = [_timed(step, i, device)[1] for i in range(warmup)]
  times, cpu_times, loads = [], [], []
  result = None
  for i in range(warmup, warmup + steps):
    result, wall, cpu = _timed(step, i, device)
    times.append(wall)
    cpu_times.append(cpu)
    loads.append(os.getloadavg()[0])
    if seconds is not None and len(times) >= 3 and sum(times) >= seconds:
      break
  median = statistics.median(times)
  return result, {
      "compile_and_first_step_s": round(warm[0], 6) if warm else None,
      "warmup_s": round(sum(warm[1:]), 6), "warmup_steps": warmup, "steps": len(times),
      "median_s": round(median, 6), "mean_s": round(statistics.fmean(times), 6),
      "median_cpu_s": round(statistics.median(cpu_times), 4),
      "min_cpu_s": round(min(cpu_times), 4),
      "load_avg": [round(min(loads), 2), round(max(loads), 2)],
      "images_per_second": round(images_per_step / median, 2)}


def _device_name(device: torch.device) -> str:
  """The GPU's name, or the processor's (from /proc/cpuinfo where there is one)."""
  if device.type == "cuda":
    return torch.cuda.get_device_name(device)
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      return next(line.split(":", 1)[1].strip() for line in cpuinfo
                  if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def _memory(device: torch.device) -> dict:
  """Peak device memory since `_prepare` (torch.cuda.max_memory_allocated: tensors and cuDNN
  workspaces, not the allocator's cache or the CUDA context; None on CPU) and the process's peak
  resident memory over its whole life so far, in GiB."""
  peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
  return {"peak_device_memory_gb": None if peak is None else round(peak, 3),
          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def _settings(device: torch.device, flags: dict, channels_last: bool, compiled: bool) -> dict:
  """What ran where and how, recorded in every row beside the figures."""
  return {"framework": "pytorch", "torch": torch.__version__, "device": str(device),
          "device_name": _device_name(device), "cuda": torch.version.cuda,
          "cudnn": torch.backends.cudnn.version(),
          "cudnn_benchmark": torch.backends.cudnn.benchmark, "threads": torch.get_num_threads(),
          "precision": flags, "channels_last": channels_last, "compiled": compiled}


def measure_training(*, variant: str, batch: int, size: int, freeze_backbone: bool, device,
                     precision: str, channels_last: bool = False,
                     compile: bool = False,  # pylint: disable=redefined-builtin
                     steps: int, warmup: int, seconds: float | None = None) -> dict:
  """Times the authors' training step (`training_step`) of `variant` on two synthetic batches of
  `batch` images at `size` (alternating; placed on `device` once), with `precision` (one of
  PRECISIONS), channels_last and torch.compile as asked; with `freeze_backbone` the backbone gets
  no gradients but stays in train mode, as in the authors' trainer. Returns one result row: the
  `_run_steps` figures, the last step's loss, peak device and process memory, and the settings.
  A torch.compile failure is raised at the first step, not recorded: the caller decides."""
  device, flags = _prepare(device, precision)
  model = _model(variant, device, channels_last).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  if freeze_backbone:
    model.features.requires_grad_(False)
  forward = _compiled(model, compile)
  batches = _training_batches(batch, size, device, channels_last)
  loss, figures = _run_steps(
      lambda i: training_step(forward, optimizer, batches[i % 2], device, precision),
      device, batch, steps, warmup, seconds)
  return {"benchmark": "training", "variant": variant, "input_size": size,
          "images_per_step": batch, "freeze_backbone": freeze_backbone, **figures,
          "loss": float(loss.detach()), **_memory(device),
          **_settings(device, flags, channels_last, compile)}


def measure_inference(*, variant: str, batch: int, size: int, device, precision: str,
                      channels_last: bool = False,
                      compile: bool = False,  # pylint: disable=redefined-builtin
                      steps: int, warmup: int, seconds: float | None = None) -> dict:
  """Times the network's forward pass (`inference_step`: eval mode, inference mode) of `variant`
  on two batches of `batch` normalised random images at `size` (alternating; placed on `device`
  once), with `precision`, channels_last and torch.compile as asked: batch 1's median_s is the
  latency, images_per_second the throughput. Returns one result row as `measure_training` does,
  without loss and freeze_backbone. A torch.compile failure is raised, not recorded."""
  device, flags = _prepare(device, precision)
  forward = _compiled(_model(variant, device, channels_last).eval(), compile)
  images = _inference_batches(batch, size, device, channels_last)

  def step(i):  # the outputs are dropped: held, they would add to the next step's peak memory
    inference_step(forward, images[i % 2], device, precision)

  _, figures = _run_steps(step, device, batch, steps, warmup, seconds)
  return {"benchmark": "inference", "variant": variant, "input_size": size,
          "images_per_step": batch, **figures, **_memory(device),
          **_settings(device, flags, channels_last, compile)}


def torch_environment() -> dict:
  """PyTorch's version, its CUDA and cuDNN versions and the GPU it sees (None: no CUDA device)."""
  gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
  return {"torch": torch.__version__, "cuda": torch.version.cuda,
          "cudnn": torch.backends.cudnn.version(), "gpu": gpu}


def serve(requests, results) -> None:
  """Answers measurement requests until `requests` ends: each line a JSON object, "kind"
  ("train", "inference" or "environment") and the keyword arguments of `measure_training`,
  `measure_inference` or `torch_environment`; each answer one JSON line on `results`, the row or
  {"error": "..."}.
  Whatever else the measurements print goes to stderr. benchmarks/accelerator.py runs PyTorch
  this way, in a process of its own: no CUDA or cuDNN library of JAX's beside PyTorch's, and a
  row that hangs (a long torch.compile) can be stopped."""
  measures = {"train": measure_training, "inference": measure_inference,
              "environment": torch_environment}
  for line in requests:
    request = json.loads(line)
    measure = measures[request.pop("kind")]
    try:
      with contextlib.redirect_stdout(sys.stderr):
        row = measure(**request)
    except Exception as error:  # pylint: disable=broad-except  # answered; the next request runs
      row = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    results.write(json.dumps(row) + "\n")
    results.flush()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", default="H-4", help="H0, H-1, H-2, H-3 or H-4")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=384)
  parser.add_argument("--freeze-backbone", action="store_true")
  parser.add_argument("--inference", action="store_true",
                      help="time the network's forward pass in eval mode instead of the step")
  parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA if any)")
  parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
  parser.add_argument("--channels-last", action="store_true")
  parser.add_argument("--compile", action="store_true", help="torch.compile the network")
  parser.add_argument("--steps", type=int, default=6, help="timed steps (at most)")
  parser.add_argument("--warmup", type=int, default=2,
                      help="warm-up steps first (the first timed apart)")
  parser.add_argument("--seconds", type=float, help="stop timing after this many (>= 3 steps)")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--serve", action="store_true",
                      help="answer JSON requests from stdin with JSON rows (see `serve`)")
  args = parser.parse_args(argv)
  if args.inference and args.freeze_backbone:
    parser.error("--freeze-backbone is for the training step, not --inference")
  torch.set_num_threads(args.threads)
  if args.serve:
    serve(sys.stdin, sys.stdout)
    return 0
  common = {"variant": args.variant, "batch": args.batch, "size": args.size,
            "device": args.device, "precision": args.precision,
            "channels_last": args.channels_last, "compile": args.compile, "steps": args.steps,
            "warmup": args.warmup, "seconds": args.seconds}
  if args.inference:
    row = measure_inference(**common)
  else:
    row = measure_training(freeze_backbone=args.freeze_backbone, **common)
  print(json.dumps(row))
  return 0


if __name__ == "__main__":
  sys.exit(main())
