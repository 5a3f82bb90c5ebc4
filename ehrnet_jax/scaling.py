"""`ScalingSpec`: every number of an EfficientHRNet model, derived from one coefficient phi.

The family H0, H-1, ..., H-4 is a function of the compound coefficient phi:

* input resolution `512 + 32*phi` (a multiple of 32);
* the EfficientNet-B0 backbone scaled by a width multiplier (1.1**phi) and a depth multiplier
  (1.2**phi); for the five published models the exact (hand-rounded) values of the reference
  configs are used: 0.909/0.833, 0.826/0.694, 0.751/0.578, 0.684/0.483;
* the high-resolution branches `ceil(base * 1.2455**phi)` for base 32/64/128/256 (no rounding to
  multiples of 8: widths such as 103 or 27 are real);
* stage-3 modules 4/3/2/1/1 and stage-4 modules 3/3/3/3/2 for phi = 0 ... -4;
* the head: 17 heatmaps + 17 tags at 1/4, a 4x4 stride-2 transposed conv to `ceil(32*s)` channels
  and 17 heatmaps at 1/2.

Non-integer phi between the published models interpolates the continuous quantities (multipliers,
widths, resolution) and rounds phi to the nearest integer for the module counts. Positive phi
(up to 4) extrapolates: the multipliers and widths follow the same formulas beyond B0/W32, stage 3
gets `4 + round(phi)` modules and stage 4 stays at 3. Nothing above phi = 0 was trained or
published by the authors.
"""

import dataclasses
import itertools
import math

from ehrnet_jax.errors import UserError

PHI_RANGE = (-8.0, 4.0)
HR_WIDTH_BASE = 1.2455
HR_BASE_WIDTHS = (32, 64, 128, 256)
NUM_JOINTS = 17

# The reference configs (`Example Configs/H*.yaml`): multipliers as written there.
PUBLISHED_MULTIPLIERS = {  # phi: (width_mult, depth_mult)
    0: (1.0, 1.0),
    -1: (0.909, 0.833),
    -2: (0.826, 0.694),
    -3: (0.751, 0.578),
    -4: (0.684, 0.483),
}
VARIANT_NAMES = {f"H{phi}": phi for phi in PUBLISHED_MULTIPLIERS}

# The paper's COCO keypoint AP of the authors' released models (Neff et al., EfficientHRNet,
# arXiv 2007.08090), each figure named by its split and table: Table 4 gives COCO val2017
# (single-scale), Table 3 COCO test-dev single-scale and multi-scale (the authors' README repeats
# Table 3's pair without naming the split). Source: the paper's tables as quoted in issue 23 (they
# are not in ../shared/docs); nothing else of those tables is used here.
PAPER_AP_SPLITS = ("val2017 (Table 4)", "test-dev (Table 3)", "test-dev multi-scale (Table 3)")
PAPER_AP = {  # phi: AP per PAPER_AP_SPLITS
    0: (64.8, 64.0, 67.1),
    -1: (59.2, 59.1, 62.3),
    -2: (52.9, 52.8, 55.0),
    -3: (44.8, 44.5, 45.5),
    -4: (35.7, 35.5, 39.7),
}

# The backbone-only classifiers of the paper's Table 2 (B0 ... B-4) and their input sizes as the
# table lists them. Its formula ceil(224 * 1.15**phi) gives 148 and 129 for B-3 and B-4; the
# table's 145 and 128 are used for the named variants, the formula for any other phi.
CLASSIFIER_INPUT_SIZES = {0: 224, -1: 195, -2: 170, -3: 145, -4: 128}
CLASSIFIER_VARIANTS = {f"B{phi}": phi for phi in CLASSIFIER_INPUT_SIZES}


@dataclasses.dataclass(frozen=True)
class MBConvStage:
  """One stage of MBConv blocks (after width/depth rounding)."""
  expand_ratio: int
  channels: int
  repeats: int
  stride: int  # of the first block
  kernel_size: int


# EfficientNet-B0: (expand ratio t, channels c, repeats n, stride s, kernel k) per stage.
B0_STAGES = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
             (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))
B0_STEM_CHANNELS = 32
B0_HEAD_CHANNELS = 1280  # the 1x1 conv of the classifier (backbone-only model)
# The HR network taps the ends of the c24 (1/4), c40 (1/8), c112 (1/16) and c320 (1/32) stages.
TAP_STAGES = (1, 2, 4, 6)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds to the nearest multiple of `divisor` (at least `divisor`), never more than 10% down."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


def round_filters(channels: int, width_mult: float) -> int:
  return channels if width_mult == 1.0 else int(make_divisible(channels * width_mult))


def round_repeats(repeats: int, depth_mult: float) -> int:
  return repeats if depth_mult == 1.0 else int(math.ceil(depth_mult * repeats))


def _check_phi(phi) -> float:
  try:
    value = float(phi)
  except (TypeError, ValueError):
    raise UserError(f"phi must be a number such as phi=-2.5, got {phi!r}") from None
  low, high = PHI_RANGE
  if not math.isfinite(value) or not low <= value <= high:
    raise UserError(
        f"phi={phi!r} is outside the supported range [{low:g}, {high:g}]: the published models "
        f"are phi = 0 ... -4 (named {', '.join(VARIANT_NAMES)}); non-integer values in between "
        "interpolate and values up to 4 extrapolate.")
  return value


@dataclasses.dataclass(frozen=True)
class ScalingSpec:
  """All architecture numbers of one EfficientHRNet model; build with `from_phi`/`from_name`."""
  name: str
  phi: float
  input_size: int
  width_mult: float
  depth_mult: float
  stem_channels: int
  backbone_stages: tuple[MBConvStage, ...]
  hr_widths: tuple[int, int, int, int]
  stage_modules: tuple[int, int, int]  # stages 2, 3, 4
  num_joints: int = NUM_JOINTS
  blocks_per_branch: int = 2
  head_blocks: int = 2
  drop_connect_rate: float = 0.2

  @classmethod
  def from_phi(cls, phi: float) -> "ScalingSpec":
    """The model for compound coefficient phi (published values for phi = 0 ... -4)."""
    phi = _check_phi(phi)
    if phi.is_integer() and int(phi) in PUBLISHED_MULTIPLIERS:
      width_mult, depth_mult = PUBLISHED_MULTIPLIERS[int(phi)]
      name = f"H{int(phi)}"
    else:
      width_mult, depth_mult = 1.1 ** phi, 1.2 ** phi
      name = f"H{phi:+g}".replace("+", "")
    stages = tuple(
        MBConvStage(t, round_filters(c, width_mult), round_repeats(n, depth_mult), s, k)
        for t, c, n, s, k in B0_STAGES)
    s = HR_WIDTH_BASE ** phi
    modules_phi = math.floor(phi + 0.5)
    return cls(
        name=name,
        phi=phi,
        input_size=32 * math.floor(16 + phi + 0.5),
        width_mult=width_mult,
        depth_mult=depth_mult,
        stem_channels=round_filters(B0_STEM_CHANNELS, width_mult),
        backbone_stages=stages,
        hr_widths=tuple(int(math.ceil(base * s)) for base in HR_BASE_WIDTHS),
        stage_modules=(1, max(1, 4 + modules_phi), 3 if modules_phi >= -3 else 2),
    )

  @classmethod
  def from_name(cls, name: str) -> "ScalingSpec":
    """A published model by name ("H0", "H-1", ..., "H-4"), or "phi=<number>"."""
    if isinstance(name, str) and name.startswith("phi="):
      return cls.from_phi(name[len("phi="):])
    if name not in VARIANT_NAMES:
      raise UserError(f"unknown variant {name!r}: pass one of {', '.join(VARIANT_NAMES)} "
                      "(case-sensitive) or 'phi=<number>' (e.g. phi=-2.5); `ehrnet info` "
                      "describes them")
    return cls.from_phi(VARIANT_NAMES[name])

  @property
  def variant_arg(self) -> str:
    """What `from_name` (and so `--variant`) takes for this model: "H-2", or "phi=-2.5"."""
    return self.name if self.name in VARIANT_NAMES else f"phi={self.phi:g}"

  @property
  def paper_ap(self) -> dict[str, float] | None:
    """The paper's COCO AP of this published model per split and table, or None (other phi)."""
    if self.name not in VARIANT_NAMES:
      return None
    return dict(zip(PAPER_AP_SPLITS, PAPER_AP[VARIANT_NAMES[self.name]]))

  @property
  def num_backbone_blocks(self) -> int:
    """MBConv blocks of the backbone (the reference's `features[1:]`)."""
    return sum(stage.repeats for stage in self.backbone_stages)

  @property
  def classifier_name(self) -> str:
    """The backbone-only classifier of this phi: "B0" ... "B-4", or "B<phi>"."""
    return "B" + self.name[1:]

  @property
  def classifier_input_size(self) -> int:
    """The classifier's input side: the paper's Table 2, else `ceil(224 * 1.15**phi)`."""
    if self.phi.is_integer() and int(self.phi) in CLASSIFIER_INPUT_SIZES:
      return CLASSIFIER_INPUT_SIZES[int(self.phi)]
    return math.ceil(224 * 1.15 ** self.phi)

  def same_backbone(self, other: "ScalingSpec") -> bool:
    """Whether both specs build the same EfficientNet backbone (weights interchangeable)."""
    return (self.stem_channels, self.backbone_stages) == (other.stem_channels,
                                                         other.backbone_stages)

  @property
  def head_width(self) -> int:
    """Channels of the transposed conv and the 1/2-resolution blocks (`ceil(32*s)`)."""
    return self.hr_widths[0]

  @property
  def tap_channels(self) -> tuple[int, ...]:
    """Channels of the four backbone taps (strides 4, 8, 16, 32)."""
    return tuple(self.backbone_stages[i].channels for i in TAP_STAGES)

  @property
  def tap_blocks(self) -> tuple[int, ...]:
    """1-based indices of the MBConv blocks whose outputs are tapped (the reference's
    `features[i]` index: the stem is 0)."""
    ends = list(itertools.accumulate(stage.repeats for stage in self.backbone_stages))
    return tuple(ends[i] for i in TAP_STAGES)

  @property
  def classifier_channels(self) -> int:
    """Channels of the 1x1 conv before pooling in the backbone-only classifier."""
    return round_filters(B0_HEAD_CHANNELS, self.width_mult)

  def check_input_shape(self, height: int, width: int) -> None:
    if height % 32 or width % 32 or height <= 0 or width <= 0:
      raise UserError(f"input size {height}x{width} (HxW) is not supported: both sides must be "
                      "positive multiples of 32 (the network's total stride)")

  def summary(self) -> dict:
    """The spec as plain JSON-able values."""
    return {
        "name": self.name,
        "phi": self.phi,
        "input_size": self.input_size,
        "width_mult": self.width_mult,
        "depth_mult": self.depth_mult,
        "stem_channels": self.stem_channels,
        "backbone_channels": [stage.channels for stage in self.backbone_stages],
        "backbone_repeats": [stage.repeats for stage in self.backbone_stages],
        "tap_channels": list(self.tap_channels),
        "hr_widths": list(self.hr_widths),
        "stage_modules": list(self.stage_modules),
        "head_width": self.head_width,
    }



def classifier_variant(name: str) -> tuple[ScalingSpec, int]:
  """A backbone classifier by name ("B0", ..., "B-4", or "phi=<number>"): (spec, input side).

  The classifier is built from the spec's backbone (`EfficientNetClassifier(spec, ...)`); the
  spec's other fields are those of the pose model with the same phi, whose backbone it can
  initialise (`ehrnet_jax.backbones`).
  """
  if isinstance(name, str) and name.startswith("phi="):
    spec = ScalingSpec.from_name(name)
  elif name in CLASSIFIER_VARIANTS:
    spec = ScalingSpec.from_phi(CLASSIFIER_VARIANTS[name])
  else:
    raise UserError(f"unknown classifier variant {name!r}: expected one of "
                    f"{', '.join(CLASSIFIER_VARIANTS)} or 'phi=<number>' (e.g. phi=-2.5); the "
                    f"pose models are {', '.join(VARIANT_NAMES)}")
  return spec, spec.classifier_input_size
