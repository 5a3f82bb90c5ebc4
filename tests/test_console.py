"""What `ehrnet` commands print, and the compilation cache they use, in fresh processes.

Fresh processes, as a user runs them: TensorFlow, absl, TFDS, orbax and pycocotools print their
start-up and progress lines only in a process that loads them for the first time. Every line
must be one of the command's own (an allow-list of their shapes) or a tqdm progress bar.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from ehrnet_jax import samples, weights
from ehrnet_jax.scaling import ScalingSpec

REPO = pathlib.Path(__file__).resolve().parents[1]
# Only against a hung subprocess, not a speed limit.
HANG_GUARD_S = 900

PROGRESS_BAR = re.compile(r"\s*\d+%\|.*\| *\d+/\d+ \[.*\]\s*")
PREDICT_LINES = re.compile(r"running .+: H-4, from test weights; JAX on cpu \(1 device\(s\)\), "
                           r"execution form cpu_inference"
                           r"|\d+ people in \d+ input\(s\).*")
TRAIN_LINES = re.compile(r"training: (new run in|resuming|the run in) .+"
                         r"|building the dataset of .+ \(once\)"
                         r"|jax [\d.]+, backend cpu, .+"        # run_conditions
                         r"|step \d+: ap [\d.]+, ap50 [\d.]+, ar [\d.]+"
                         r'|\{"workdir": .+\}')


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


def _foreign_lines(result: subprocess.CompletedProcess, own: re.Pattern) -> list[str]:
  """The lines of stdout and stderr (bars split at carriage returns) that are neither `own` nor
  a progress bar."""
  text = (result.stdout + "\n" + result.stderr).replace("\x1b[A", "")  # tqdm's cursor-up
  lines = (line.strip() for line in re.split(r"[\r\n]", text))
  return [line for line in lines
          if line and not own.fullmatch(line) and not PROGRESS_BAR.fullmatch(line)]


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
  assert _foreign_lines(first, PREDICT_LINES) == []
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
def test_train_prints_its_own_lines_and_verbose_the_libraries_too(tmp_path):
  """Fresh run (TFDS build, an orbax save without metrics, the COCO evaluation's pycocotools
  index), then resumed with --verbose: pycocotools' index lines are back."""
  workdir = tmp_path / "train"
  settings = ["model.input_size=64", "run.log_every_steps=1", "run.checkpoint_every_steps=1",
              "run.eval_every_steps=0", "run.eval_max_images=1"]
  train = ["train", "--config", "experiments/smoke.py", "--workdir", str(workdir),
           *[arg for setting in settings for arg in ("--set", setting)]]
  fresh = _ehrnet(*train, "--set", "train.steps=2", tmp_path=tmp_path)
  assert _foreign_lines(fresh, TRAIN_LINES) == []
  assert f"training: new run in {workdir}" in fresh.stderr

  verbose = _ehrnet(*train, "--set", "train.steps=3", "--verbose", tmp_path=tmp_path)
  assert f"training: resuming {workdir} at step 2 of 3" in verbose.stderr
  assert "creating index..." in _foreign_lines(verbose, TRAIN_LINES)
