"""What `ehrnet` commands print, and the compilation cache they use, in fresh processes.

Fresh processes, as a user runs them: TensorFlow, absl, TFDS, orbax and pycocotools print their
start-up and progress lines only in a process that loads them for the first time. Every line
must be one of the command's own (an allow-list of their shapes) or a tqdm progress bar
(`support.console_lines`; `ehrnet train`'s lines are checked on the single-process run of
tests/test_train_spmd.py, which builds the TFDS data, saves without metrics and evaluates).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from ehrnet_jax import samples, weights
from ehrnet_jax.scaling import ScalingSpec
from support import console_lines

REPO = pathlib.Path(__file__).resolve().parents[1]
# Only against a hung subprocess, not a speed limit.
HANG_GUARD_S = 900

PREDICT_LINES = re.compile(r"running .+: H-4, from test weights; JAX on cpu \(1 device\(s\)\), "
                           r"execution form cpu_inference"
                           r"|\d+ people in \d+ input\(s\).*")


def _ehrnet(*args: str, cache_env: dict[str, str] | None = None,
            tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
  """`python -m ehrnet_jax ARGS` in a fresh process; XDG_CACHE_HOME under tmp_path, so that
  nothing reaches the user's cache; `cache_env` replaces the compilation-cache variables of this
  test session (conftest's)."""
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
         "XDG_CACHE_HOME": str(tmp_path / "xdg_cache")}
  if cache_env is not None:
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
      env.pop(name, None)
    env.update(cache_env)
  result = subprocess.run([sys.executable, "-m", "ehrnet_jax", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _entries(directory: pathlib.Path) -> set[str]:
  return {p.name for p in directory.iterdir()} if directory.exists() else set()


@pytest.fixture(name="checkpoint")
def fixture_checkpoint(h4_variables, tmp_path):
  return weights.save_variables(tmp_path / "H-4", h4_variables, ScalingSpec.from_name("H-4"),
                                source="test weights")


@pytest.mark.slow
def test_predict_prints_its_own_lines_and_reuses_its_compiled_programs(checkpoint, tmp_path):
  image = str(samples.images()[0])
  predict = ["predict", "--variant", "H-4", "--checkpoint", str(checkpoint), image, "--out"]
  cache = tmp_path / "cache"
  first = _ehrnet(*predict, str(tmp_path / "out1"), "--compilation-cache", str(cache),
                  cache_env={}, tmp_path=tmp_path)
  assert console_lines.foreign_lines(first.stdout + first.stderr, PREDICT_LINES) == []
  assert "running " in first.stderr
  stored = _entries(cache)
  assert stored   # the network, the decoding's programs

  # The same command again: every program comes from the cache, nothing new is written.
  _ehrnet(*predict, str(tmp_path / "out2"), "--compilation-cache", str(cache), cache_env={},
          tmp_path=tmp_path)
  assert _entries(cache) == stored

  # Off: nothing is written, not even where the user's own JAX_COMPILATION_CACHE_DIR points.
  users = tmp_path / "users_cache"
  _ehrnet(*predict, str(tmp_path / "out3"), "--no-compilation-cache",
          cache_env={"JAX_COMPILATION_CACHE_DIR": str(users)}, tmp_path=tmp_path)
  assert _entries(users) == set() and _entries(tmp_path / "xdg_cache") == set()


@pytest.mark.slow
def test_verbose_shows_the_libraries_lines(tmp_path):
  """`ehrnet data` builds the TFDS dataset of the bundled samples: TFDS's own lines are hidden,
  and shown with --verbose (given after the sub-command)."""
  data = ["data", "--coco-dir", str(samples.coco_dir())]
  quiet = _ehrnet(*data, "--data-dir", str(tmp_path / "quiet"), tmp_path=tmp_path)
  verbose = _ehrnet(*data, "--data-dir", str(tmp_path / "verbose"), "--verbose",
                    tmp_path=tmp_path)
  tfds_line = "Downloading and preparing dataset"
  assert tfds_line not in quiet.stdout + quiet.stderr
  assert tfds_line in verbose.stdout
