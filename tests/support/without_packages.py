"""Runs a Python script as if some top-level packages were not installed, for tests of what must
run without them (the GPU machines' stack has no TensorFlow, TFDS, pycocotools or jax2onnx).

  python tests/support/without_packages.py tensorflow,pycocotools SCRIPT [ARGS...]

A blocked package is hidden from every import finder: importing it or its submodules raises
ModuleNotFoundError, `importlib.util.find_spec` answers None and `sys.modules` never names it, as
where it is not installed (the packages' metadata stays visible to `importlib.metadata`) (libraries such as TFDS take a name in `sys.modules` as "imported").
The process fails if a module of a blocked package was loaded anyway.
"""

import pathlib
import runpy
import sys

GPU_MACHINE_ABSENT = ("tensorflow", "tensorflow_datasets", "pycocotools", "jax2onnx")


class _Hiding:
  """A meta path finder that finds what `finder` finds, except the modules of `packages`."""

  def __init__(self, finder, packages):
    self._finder, self._packages = finder, frozenset(packages)

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in self._packages:
      return None
    return self._finder.find_spec(name, path, target)

  def find_distributions(self, *args, **kwargs):
    """Installed distributions' metadata (`importlib.metadata`), as the wrapped finder sees it."""
    find = getattr(self._finder, "find_distributions", None)
    return find(*args, **kwargs) if find else iter(())

  def invalidate_caches(self):
    getattr(self._finder, "invalidate_caches", lambda: None)()


def block(packages) -> None:
  """From now on, these top-level packages cannot be imported in this process."""
  sys.meta_path[:] = [_Hiding(finder, packages) for finder in sys.meta_path]


def loaded(packages) -> list[str]:
  """The modules of these top-level packages that this process has loaded."""
  return sorted(name for name, module in sys.modules.items()
                if module is not None and name.split(".")[0] in packages)


if __name__ == "__main__":
  blocked, script, *args = sys.argv[1:]
  packages = blocked.split(",")
  block(packages)
  sys.argv = [script, *args]
  sys.path.insert(0, str(pathlib.Path(script).resolve().parent))
  try:
    runpy.run_path(script, run_name="__main__")
  finally:
    if loaded(packages):
      sys.exit(f"blocked packages were loaded: {loaded(packages)}")
