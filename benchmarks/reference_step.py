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
the targets are prebuilt, as the reference builds them in its data loader. Prints one JSON line.

  python benchmarks/reference_step.py --variant H-4 --batch 8 --size 384 --freeze-backbone
  python benchmarks/reference_step.py --variant H0 --batch 2 --size 512 --steps 6 --warmup 2
"""

import argparse
import json
import math
import os
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


def synthetic_batch(gen: torch.Generator, batch: int, size: int, people: int = 5):
  """Normalised random images, heatmaps in [0, 1] at 1/4 and 1/2, masks of ones and joints with
  `people` valid people of 17 visible joints (indices at 1/4 resolution)."""
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  images = (torch.rand(batch, 3, size, size, generator=gen) - mean) / std
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", default="H-4", help="H0, H-1, H-2, H-3 or H-4")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=384)
  parser.add_argument("--freeze-backbone", action="store_true")
  parser.add_argument("--steps", type=int, default=6, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)

  model = build_reference(variant_phi(args.variant)).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  if args.freeze_backbone:  # as the authors' trainer: no gradients, but still train mode
    for param in model.features.parameters():
      param.requires_grad = False
  gen = torch.Generator().manual_seed(0)
  batches = [synthetic_batch(gen, args.batch, args.size) for _ in range(2)]

  times, cpu_times, loads = [], [], []
  loss = None
  for i in range(args.warmup + args.steps):
    images, heatmaps, masks, joints = batches[i % 2]
    start, cpu_start = time.perf_counter(), time.process_time()
    optimizer.zero_grad()
    loss = pose_loss(model(images), heatmaps, masks, joints)
    loss.backward()
    optimizer.step()
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
    if i >= args.warmup:
      loads.append(os.getloadavg()[0])
  times, cpu_times = times[args.warmup:], cpu_times[args.warmup:]
  median = statistics.median(times)
  print(json.dumps({
      "variant": args.variant, "input_size": args.size, "images_per_step": args.batch,
      "freeze_backbone": args.freeze_backbone,
      "median_s": round(median, 4),
      "mean_s": round(statistics.fmean(times), 4),
      "median_cpu_s": round(statistics.median(cpu_times), 4),
      "min_cpu_s": round(min(cpu_times), 4),
      "load_avg": [round(min(loads), 2), round(max(loads), 2)],
      "images_per_second": round(args.batch / median, 2),
      "steps": args.steps,
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      "loss": float(loss.detach()), "threads": args.threads, "torch": torch.__version__}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
