"""The Colab notebooks (`colab/*.ipynb`) run top to bottom and show what they claim.

Each notebook is executed with nbclient in a kernel of this interpreter (ipykernel), in a temporary
working directory, with `EHRNET_NOTEBOOK_TINY=1` (few steps, few images, few repeats). A failing
cell fails the test with that cell's source and traceback. The notebooks end with a cell printing
`NOTEBOOK_RESULT {json}`, which the tests check against the library. The committed notebooks must
be stripped (no outputs, no execution counts): `python colab/strip_outputs.py` does it.
Set EHRNET_NOTEBOOK_OUT=DIR to keep the executed notebooks (with their plots) in DIR.
"""

import json
import math
import os
import pathlib
import time

import pytest

from support import coco_testing
from support import tolerances

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after the skips)
from jupyter_client.manager import KernelManager  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"
NOTEBOOKS = ("01_quickstart", "02_train", "03_scaling", "04_export")
CELL_TIMEOUT_S = 600
RESULT_PREFIX = "NOTEBOOK_RESULT "
# Exact trainable parameters of the published models (README "Model zoo", test_counting.py).
PUBLISHED_PARAMS = {"H0": 19_725_359, "H-1": 13_004_446, "H-2": 8_263_495, "H-3": 5_360_390,
                    "H-4": 2_764_706}


def execute(name: str, tmp_path: pathlib.Path, monkeypatch) -> tuple[nbformat.NotebookNode, dict]:
  """Runs colab/<name>.ipynb in tmp_path; returns the executed notebook and its result JSON."""
  notebook = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"   # the notebooks' temp folders go under tmp
  cwd.mkdir()
  tmp.mkdir()
  monkeypatch.setenv("TMPDIR", str(tmp))
  monkeypatch.setenv("EHRNET_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  monkeypatch.delenv("EHRNET_SOURCE", raising=False)
  # Only the kernel ipykernel provides for this interpreter, whatever kernels are installed.
  manager = KernelManager(kernel_name="python3",
                          kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
  client = nbclient.NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT_S,
                                   resources={"metadata": {"path": str(cwd)}})
  start = time.perf_counter()
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as error:
    pytest.fail(f"colab/{name}.ipynb failed:\n{error}", pytrace=False)
  print(f"colab/{name}.ipynb ran in {time.perf_counter() - start:.1f} s")
  assert not any(cwd.iterdir()), f"colab/{name}.ipynb wrote into its working directory"
  if os.environ.get("EHRNET_NOTEBOOK_OUT"):
    out = pathlib.Path(os.environ["EHRNET_NOTEBOOK_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(out / f"{name}.ipynb"))
  return notebook, result_of(notebook, name)


def result_of(notebook, name: str) -> dict:
  lines = [line for cell in notebook.cells if cell.cell_type == "code"
           for output in cell.get("outputs", []) if output.get("name") == "stdout"
           for line in output.get("text", "").splitlines() if line.startswith(RESULT_PREFIX)]
  assert len(lines) == 1, f"colab/{name}.ipynb printed {len(lines)} '{RESULT_PREFIX}' lines"
  return json.loads(lines[0][len(RESULT_PREFIX):])


def images_shown(notebook) -> int:
  return sum("image/png" in output.get("data", {}) for cell in notebook.cells
             if cell.cell_type == "code" for output in cell.get("outputs", []))


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
  notebook, result = execute("01_quickstart", tmp_path, monkeypatch)
  assert result["variant"] == "H-4" and "RANDOM" in result["weights"]
  assert len(result["images"]) == 2 and all(n > 0 for n in result["people"])
  # A 640x427 photo is warped to 576x384 for H-4; maps at that size, one tag dimension.
  assert result["warped_shape"] == [384, 576, 3]
  assert result["heatmaps_shape"] == [17, 384, 576]
  # Tags: the photo's and its mirror image's (flip test).
  assert result["tags_shape"] == [17, 384, 576, 2]
  assert images_shown(notebook) >= 2   # skeletons, heatmaps and tags


@pytest.mark.slow
def test_train(tmp_path, monkeypatch):
  from ehrnet_jax import weights
  from ehrnet_jax.config import load_config
  notebook, result = execute("02_train", tmp_path, monkeypatch)
  smoke = load_config(REPO / "experiments" / "smoke.py").to_dict()
  assert result["smoke_config"] == json.loads(json.dumps(smoke)), "02_train: not experiments/smoke.py"
  steps = result["steps"]
  assert 1 <= steps <= 3 and [r["step"] for r in result["losses"]] == list(range(1, steps + 1))
  assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in result["losses"])
  # Each AP is pycocotools' own on the people the notebook found, on the photos it evaluated.
  from ehrnet_jax import samples
  assert set(result["ap"]) == set(result["results"]) == {"before", "after"}
  assert result["results"]["before"], "the converted start found nobody to score"
  for label, ap in result["ap"].items():
    assert ap == coco_testing.keypoint_ap(samples.annotation_file(), result["results"][label],
                                          result["image_ids"]), label
  variables, spec = weights.load_variables(result["trained_checkpoint"])
  assert spec.name == "H-4" and "params" in variables
  assert images_shown(notebook) >= 2   # the loss plot, before/after pictures


@pytest.mark.slow
def test_scaling(tmp_path, monkeypatch):
  from ehrnet_jax import counting
  from ehrnet_jax.scaling import ScalingSpec
  notebook, result = execute("03_scaling", tmp_path, monkeypatch)
  rows = {row["name"]: row for row in result["counts"]}
  assert {n: rows[n]["params"] for n in PUBLISHED_PARAMS} == PUBLISHED_PARAMS
  fractional = [row for row in result["counts"] if not float(row["phi"]).is_integer()]
  assert len(fractional) >= 2
  expected = counting.model_counts(ScalingSpec.from_phi(fractional[0]["phi"]), with_flops=False)
  assert {k: fractional[0][k] for k in expected} == expected
  assert len(result["latency"]) >= 1
  assert all(t["median_ms"] > 0 for t in result["latency"])
  assert images_shown(notebook) >= 1   # the three plots against phi


@pytest.mark.slow
def test_export(tmp_path, monkeypatch):
  notebook, result = execute("04_export", tmp_path, monkeypatch)
  # Float32 agreement of onnxruntime and JAX, as in test_export.py: a wrong graph is off by O(1).
  assert result["max_abs_error"] <= tolerances.scaled_atol(result["max_abs_output"],
                                                           tolerances.EXPORT)
  assert result["runtime"]["jax_imported"] is False
  assert result["runtime"]["images"] >= 1 and result["runtime"]["people"] > 0
  assert images_shown(notebook) >= 1


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_stripped(name):
  notebook = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  nbformat.validate(notebook)
  assert notebook.metadata.kernelspec.name == "python3"
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert code and "EHRNET_NOTEBOOK_TINY" in "".join(cell.source for cell in code[:2])
  dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and (
      cell.outputs or cell.execution_count is not None)]
  assert not dirty, (f"colab/{name}.ipynb has outputs in cells {dirty}: run "
                     "`python colab/strip_outputs.py` before committing")
