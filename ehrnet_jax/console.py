"""Only the command's own lines on the console: other libraries' chatter is hidden by default.

`quiet_libraries()` runs first in `cli.main` (before any command imports JAX, TensorFlow, TFDS,
orbax or Grain); `--verbose` skips it and shows everything. What it hides, and how:
- TensorFlow's and XLA's C++ logs below errors: `TF_CPP_MIN_LOG_LEVEL=2` in the environment
  (unless the user set it), read by both when they load.
- TensorFlow's oneDNN notice and absl's "All log messages before absl::InitializeLog() ..." line,
  which TensorFlow's import writes to file descriptor 2 whatever that level: the import (whoever
  triggers it) runs with descriptor 2 captured, and every other line is written back.
- Python logging through absl (TFDS, orbax, Grain: "Variant folder ... has no dataset_info.json",
  "Requested `tracked_metric`; did not provide metrics."): errors only.
- Libraries that `print` to stdout (TFDS's "Downloading and preparing dataset ...", pycocotools'
  "creating index...") or draw their own progress bars (TFDS's): our calls into them run inside
  `library_output()`.
Errors still surface: exceptions are never caught here, and error-level logs are kept.
"""

import contextlib
import importlib.abc
import importlib.machinery
import io
import logging
import os
import re
import sys
import tempfile

_VERBOSE = True   # Until `quiet_libraries` runs (library use outside the CLI shows everything).

# What TensorFlow's import writes to descriptor 2 that is not worth a user's attention.
TENSORFLOW_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on")


def quiet_libraries(verbose: bool = False) -> None:
  """Hides the other libraries' logs (see the module docstring), unless `verbose`."""
  global _VERBOSE  # pylint: disable=global-statement
  _VERBOSE = verbose
  if verbose:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if "tensorflow" not in sys.modules and not any(
      isinstance(f, _TensorFlowImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _TensorFlowImport())
  # The "absl" logger (absl.logging's, a standard `logging` logger): set without importing absl.
  logging.getLogger("absl").setLevel(logging.ERROR)


@contextlib.contextmanager
def library_output():
  """Around calls into a library that prints to stdout or draws its own progress bars (TFDS's
  dataset preparation, pycocotools): both are dropped, unless the command runs `--verbose`."""
  if _VERBOSE:
    yield
    return
  tqdm_utils = sys.modules.get("tensorflow_datasets.core.utils.tqdm_utils")
  bars = tqdm_utils and tqdm_utils._active  # pylint: disable=protected-access
  if tqdm_utils:
    tqdm_utils.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    if bars:
      tqdm_utils.display_progress_bar(True)


@contextlib.contextmanager
def _filtered_stderr_descriptor(noise: re.Pattern):
  """Captures what is written to file descriptor 2 (C++ logs included) and writes back every
  line that `noise` does not match, when the block ends (also when it raises)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors="replace").splitlines(keepends=True)
      sys.stderr.write("".join(line for line in lines if not noise.search(line)))
      sys.stderr.flush()


class _TensorFlowImport(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` as Python would, and imports it under `_filtered_stderr_descriptor`."""

  def find_spec(self, name, path, target=None):
    if name != "tensorflow":
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is not None and spec.loader is not None:
      spec.loader = _FilteredLoader(spec.loader)
    return spec


class _FilteredLoader(importlib.abc.Loader):
  """`loader`, executing the module with TensorFlow's notices filtered out of descriptor 2."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    module.__loader__ = module.__spec__.loader = self._loader   # The module's own, as usual.
    with _filtered_stderr_descriptor(TENSORFLOW_NOTICES):
      self._loader.exec_module(module)
