"""ScalingSpec against the reference configs (reference-architecture.md §1.0-1.2, §1.5)."""

import math

import pytest

from ehrnet_jax.errors import UserError
from ehrnet_jax.scaling import ScalingSpec, make_divisible

# Measured on the authors' models (reference-architecture.md, §1.1 table and §1.2).
REFERENCE = {
    # name: (input, W, D, stem, [(repeats, channels) per stage], taps, tap blocks, HR widths,
    #        stage modules)
    "H0": (512, 1.0, 1.0, 32, [(1, 16), (2, 24), (2, 40), (3, 80), (3, 112), (4, 192), (1, 320)],
           (24, 40, 112, 320), (3, 5, 11, 16), (32, 64, 128, 256), (1, 4, 3)),
    "H-1": (480, 0.909, 0.833, 32, [(1, 16), (2, 24), (2, 40), (3, 72), (3, 104), (4, 176),
                                    (1, 288)],
            (24, 40, 104, 288), (3, 5, 11, 16), (26, 52, 103, 206), (1, 3, 3)),
    "H-2": (448, 0.826, 0.694, 24, [(1, 16), (2, 24), (2, 32), (3, 64), (3, 96), (3, 160),
                                    (1, 264)],
            (24, 32, 96, 264), (3, 5, 11, 15), (21, 42, 83, 166), (1, 2, 3)),
    "H-3": (416, 0.751, 0.578, 24, [(1, 16), (2, 24), (2, 32), (2, 64), (2, 88), (3, 144),
                                    (1, 240)],
            (24, 32, 88, 240), (3, 5, 9, 13), (17, 34, 67, 133), (1, 1, 3)),
    "H-4": (384, 0.684, 0.483, 24, [(1, 16), (1, 16), (1, 32), (2, 56), (2, 80), (2, 128),
                                    (1, 216)],
            (16, 32, 80, 216), (2, 3, 7, 10), (14, 27, 54, 107), (1, 1, 2)),
}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_named_variants_reproduce_the_reference_configs(name):
  (size, width, depth, stem, stages, taps, tap_blocks, widths, modules) = REFERENCE[name]
  spec = ScalingSpec.from_name(name)
  assert spec.name == name
  assert (spec.input_size, spec.width_mult, spec.depth_mult) == (size, width, depth)
  assert spec.stem_channels == stem
  assert [(s.repeats, s.channels) for s in spec.backbone_stages] == stages
  assert spec.tap_channels == taps and spec.tap_blocks == tap_blocks
  assert spec.hr_widths == widths and spec.head_width == widths[0]
  assert spec.stage_modules == modules
  assert ScalingSpec.from_phi(spec.phi) == spec


def test_hr_widths_follow_ceil_of_base_times_1_2455_to_the_phi():
  for phi in (-3.7, -2.5, -0.5, 0.5, 2.0):
    spec = ScalingSpec.from_phi(phi)
    assert spec.hr_widths == tuple(math.ceil(b * 1.2455 ** phi) for b in (32, 64, 128, 256))


def test_make_divisible_never_rounds_down_more_than_ten_percent():
  assert make_divisible(10.94) == 16   # 8 would lose 27%
  assert make_divisible(27.36) == 32   # 24 would lose 12%
  assert make_divisible(131.3) == 128
  assert make_divisible(3.0) == 8


def test_non_integer_phi_interpolates_between_published_models():
  spec = ScalingSpec.from_phi(-2.5)
  low, high = ScalingSpec.from_name("H-3"), ScalingSpec.from_name("H-2")
  assert spec.input_size % 32 == 0 and low.input_size <= spec.input_size <= high.input_size
  assert low.width_mult < spec.width_mult < high.width_mult
  assert all(a <= b <= c for a, b, c in zip(low.hr_widths, spec.hr_widths, high.hr_widths))
  assert spec.width_mult == pytest.approx(1.1 ** -2.5) and spec.depth_mult == pytest.approx(1.2 ** -2.5)


def test_positive_phi_extrapolates_beyond_h0():
  h0, h1 = ScalingSpec.from_name("H0"), ScalingSpec.from_phi(1)
  assert h1.input_size == 544 and h1.width_mult == pytest.approx(1.1)
  assert all(a > b for a, b in zip(h1.hr_widths, h0.hr_widths))
  assert h1.stage_modules == (1, 5, 3)
  assert sum(s.repeats for s in h1.backbone_stages) > sum(s.repeats for s in h0.backbone_stages)


@pytest.mark.parametrize("phi", [float("nan"), float("inf"), -9, 5, "abc", None])
def test_bad_phi_is_a_clear_error(phi):
  with pytest.raises(UserError, match="phi"):
    ScalingSpec.from_phi(phi)


@pytest.mark.parametrize("name", ["H-5", "h0", "H1", "", "phi=x"])
def test_unknown_variant_names_are_a_clear_error(name):
  with pytest.raises(UserError, match="H0, H-1, H-2, H-3, H-4|phi"):
    ScalingSpec.from_name(name)


def test_phi_strings_name_continuous_variants():
  assert ScalingSpec.from_name("phi=-2.5") == ScalingSpec.from_phi(-2.5)
  assert ScalingSpec.from_name("phi=-4") == ScalingSpec.from_name("H-4")


def test_spec_is_frozen_and_hashable():
  spec = ScalingSpec.from_name("H-4")
  with pytest.raises(AttributeError):
    spec.phi = 0.0
  assert {spec: 1}[ScalingSpec.from_phi(-4)] == 1
