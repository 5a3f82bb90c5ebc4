"""Shared test fixtures: where `../shared` lives, and skips with a reason where it does not.

Also keeps Triton out of the test process (below)."""

import os
import pathlib
import sys

import pytest

# PyPI's torch for Linux x86-64 (what the test command installs) is the CUDA build, which brings
# Triton; importing Triton after TensorFlow segfaults (both carry their own LLVM), and torch's
# optimizers import it (torch._dynamo asks whether Triton is installed). One test process loads
# both TensorFlow (data tests) and torch's Adam (tests/test_reference_step.py), on CPU, where
# Triton has nothing to do: hide it, so that torch finds none, as with its CPU build.
sys.modules.setdefault("triton", None)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("EHRNET_SHARED", REPO.parent / "shared"))


def _shared_dir(*parts: str) -> pathlib.Path:
  path = SHARED.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"{path} is not present (the project's ../shared folder; set EHRNET_SHARED)")
  return path


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
  """`../shared/fixtures/reference`: outputs of the authors' model and grouping."""
  return _shared_dir("fixtures", "reference")


@pytest.fixture(scope="session")
def coco_mini_dir() -> pathlib.Path:
  """`../shared/data/coco-mini`: 80 real COCO train2017 images with keypoint annotations."""
  return _shared_dir("data", "coco-mini")


@pytest.fixture(scope="session")
def h4_variables():
  """Variables of the authors' H-4 (random weights), converted from the bundled state dict."""
  from ehrnet_jax import convert, samples
  from ehrnet_jax.scaling import ScalingSpec
  return convert.convert_state_dict(convert.load_state_dict(samples.reference_weights()),
                                    ScalingSpec.from_name("H-4"))


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the whole session, the notebooks' kernels and the
  CLI's subprocesses included: a program compiled by one test (the smoke config's training
  step, the H-4 network at a photo's size) is loaded by the next instead of compiled again.
  Per pytest-xdist worker (each has its own session). The `ehrnet` CLI's default cache (in
  XDG_CACHE_HOME) is pointed at a temporary folder too, for processes that drop this one (the
  multi-process training test): nothing reaches the user's own cache."""
  os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
  directory = str(tmp_path_factory.mktemp("jax_cache"))
  os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1"
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return directory
