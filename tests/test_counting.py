"""Parameter and compute counts against the reference's measured numbers (§6, §1.6), and the
stored counts of the published models (`ehrnet_jax.stored_counts`) against a live recount."""

import importlib.metadata
import json
import subprocess
import sys

import pytest

from ehrnet_jax import counting, stored_counts
from ehrnet_jax.cli import main
from ehrnet_jax.counting import model_counts
from ehrnet_jax.scaling import ScalingSpec

# Reference: conv MACs (fvcore), FLOPs = 2 x MACs, and HigherHRNet's get_model_summary
# ("paper") parameter and multiply-add counts.
REFERENCE = {
    "H0": dict(macs=23.958e9, params=19_725_359, paper_params=23_319_819, paper_macs=25.619e9),
    "H-4": dict(macs=1.807e9, params=2_764_706, paper_params=3_757_196, paper_macs=2.105e9),
}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_counts_match_the_reference_and_the_paper_convention(name):
  expected = REFERENCE[name]
  counts = model_counts(ScalingSpec.from_name(name), with_flops=False)
  assert counts["params"] == expected["params"]
  assert counts["paper_params"] == expected["paper_params"]
  assert counts["conv_macs"] == pytest.approx(expected["macs"], rel=1e-3)
  assert counts["paper_flops"] == pytest.approx(expected["paper_macs"], rel=1e-3)


def test_xla_flops_are_within_one_percent_of_twice_the_macs(capsys):
  assert main(["info", "--variant", "H-4", "--json"]) == 0
  (row,) = json.loads(capsys.readouterr().out)
  assert (row["name"], row["phi"], row["input_size"]) == ("H-4", -4.0, 384)
  assert row["params"] == REFERENCE["H-4"]["params"]
  assert row["counts"] == "stored"
  # XLA counts a convolution only where its window lies inside the input (fvcore over every
  # output position) and adds the element-wise work: within 1% of 2 x MACs for these networks.
  assert row["flops"] == pytest.approx(2 * REFERENCE["H-4"]["macs"], rel=0.01)
  # The paper's AP with its split and table (Table 4: val2017; Table 3: test-dev).
  assert row["paper_ap"] == {"val2017 (Table 4)": 35.7, "test-dev (Table 3)": 35.5,
                             "test-dev multi-scale (Table 3)": 39.7}


def test_info_table_names_the_paper_ap_split_and_table_and_counts_other_phi_live(
    capsys, monkeypatch):
  live = []

  def count_unpublished_only(spec, *args, **kwargs):
    assert spec.name != "H0", "a published model was counted live"
    live.append(spec.name)
    return model_counts(spec, *args, **kwargs)

  monkeypatch.setattr(counting, "model_counts", count_unpublished_only)
  assert main(["info", "--variant", "H0", "--variant", "phi=-4.5"]) == 0
  header, _, h0, interpolated, counts_line = capsys.readouterr().out.splitlines()
  assert live == ["H-4.5"]
  assert "AP val2017 (T4)" in header and "AP test-dev s/m (T3)" in header
  assert h0.split()[-4:] == ["64.8", "64.0", "/", "67.1"]
  assert interpolated.split()[-2:] == ["-", "-"]   # no paper figures between published models
  stored = json.loads(stored_counts.TABLE_PATH.read_text())["counted_with"]
  installed = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax")}
  assert counts_line == (f"counts: H0 stored ({_versions(stored)}); H-4.5 live "
                         f"({_versions(installed)}); --recount counts them live")


def _versions(versions: dict) -> str:
  return ", ".join(f"{name} {version}" for name, version in versions.items())


def test_b0_classifier_is_efficientnet_b0(capsys):
  """B0 is EfficientNet-B0: 5.29M parameters and 0.39 G multiply-adds at 224 (Tan & Le, 2019,
  Table 2: 5.3M, 0.39B FLOPs counted as multiply-adds); the smaller ones follow Table 2's
  input sizes and parameter counts (reference-architecture.md §1.1)."""
  assert main(["info", "--classifiers", "--json"]) == 0
  rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
  assert [(r["input_size"], round(r["params"], -3), round(r["params_cifar100"], -3))
          for r in rows.values()] == [(224, 5_289_000, 4_136_000), (195, 4_548_000, 3_503_000),
                                      (170, 3_464_000, 2_512_000), (145, 2_796_000, 1_931_000),
                                      (128, 2_056_000, 1_271_000)]
  assert rows["B0"]["conv_macs"] == pytest.approx(0.39e9, rel=0.02)
  assert rows["B0"]["flops"] == pytest.approx(2 * rows["B0"]["conv_macs"], rel=0.05)


def test_info_reads_the_published_counts_without_importing_jax():
  """`ehrnet info` answers in well under a second: it neither traces nor imports JAX."""
  script = ("import sys\n"
            "from ehrnet_jax.cli import main\n"
            "assert main(['info']) == 0 and main(['info', '--classifiers']) == 0\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'numpy'}))\n")
  out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                       text=True).stdout.splitlines()
  stored = json.loads(stored_counts.TABLE_PATH.read_text())
  counts_line = f"counts: stored ({_versions(stored['counted_with'])}); --recount counts them live"
  assert out[-1] == "[]"
  assert out.count(counts_line) == 2
  assert [line.split()[0] for line in out[2:7]] == ["H0", "H-1", "H-2", "H-3", "H-4"]


@pytest.mark.slow
def test_the_stored_counts_are_a_live_recount(tmp_path):
  """Fails when the architecture or the counting changed: rerun
  `python -m ehrnet_jax.stored_counts` and commit ehrnet_jax/model_counts.json."""
  stored_counts.main(["--out", str(tmp_path / "counts.json")])
  live = json.loads((tmp_path / "counts.json").read_text())
  stored = json.loads(stored_counts.TABLE_PATH.read_text())
  assert live["counted_with"] == stored_counts.installed_versions()
  for kind in ("models", "classifiers"):
    assert len(live[kind]) == len(stored[kind])
    for live_row, stored_row in zip(live[kind], stored[kind]):
      # Exact: parameters, batch stats, MACs, the paper's numbers are properties of the
      # architecture, whatever the JAX version.
      assert {**live_row, "flops": None} == {**stored_row, "flops": None}
      # XLA's cost analysis of the lowered program: convolutions are counted by a fixed formula,
      # but a JAX/XLA version may lower or count the element-wise work differently, and that is
      # ~2% of the FLOPs (H-4: 82 M element-wise results against 3.6 GFLOPs); the stored figure
      # is from stored["counted_with"].
      assert live_row["flops"] == pytest.approx(stored_row["flops"], rel=0.03)
