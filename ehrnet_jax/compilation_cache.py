"""JAX's persistent compilation cache, on by default for every `ehrnet` command.

Compiled programs (the network at each input size, the training step, ...) are stored on disk and
loaded by the next process that needs the same program, so a second run of a command starts in
seconds instead of compiling again. Where (`configure`, run by `cli.main` before any command
imports JAX; the first that applies wins):
1. `--no-compilation-cache`: off (`JAX_ENABLE_COMPILATION_CACHE=false`);
2. `--compilation-cache DIR`;
3. the user's own `JAX_COMPILATION_CACHE_DIR`;
4. `default_directory()`: `$XDG_CACHE_HOME/ehrnet_jax/jax` (else `~/.cache/ehrnet_jax/jax`),
   except in multi-process runs (`--coordinator`, `--distributed`): there, as with JAX, only where
   the user asks for it (2 or 3); a 2-process CPU run whose training step came from a shared
   cache once hung in its first all-reduce.
Every compiled program is stored (`MIN_COMPILE_SECONDS`), unless the user set
`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`: with JAX's default, 1 s, a second `ehrnet predict`
on 8 photos of as many sizes found 5 programs stored and took as long as the first (65 s on 2
loaded cores); with 0, 121 programs and 25 s (benchmarks/second_run.py).

Beside it, in DIR-traced, `traced_programs` keeps the traced network and variable shapes, so that
the next process does not trace the model again either (off with the cache).

The settings go into the environment, where JAX reads them when it is imported (and which child
processes inherit); when JAX is already imported (`cli.main` called in a Python process), they are
applied to its config as well. Nothing here imports JAX: `--backend onnx` runs without it.
"""

import os
import pathlib
import sys

MIN_COMPILE_SECONDS = 0.0


def default_directory() -> pathlib.Path:
  """`$XDG_CACHE_HOME/ehrnet_jax/jax`, or `~/.cache/ehrnet_jax/jax` without XDG_CACHE_HOME."""
  root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(root) / "ehrnet_jax" / "jax"


def configure(directory: str | None = None, enabled: bool = True,
              multi_process: bool = False) -> str | None:
  """Turns the cache on in `directory` (default: see the module docstring) or off; returns the
  directory in use (None: off, or left to JAX)."""
  if not enabled:
    _set({"JAX_ENABLE_COMPILATION_CACHE": "false"})
    return None
  if directory is None:
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if directory is None and multi_process:
    return None
  directory = str(pathlib.Path(directory or default_directory()).expanduser().absolute())
  _set({"JAX_COMPILATION_CACHE_DIR": directory,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": os.environ.get(
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_COMPILE_SECONDS))})
  return directory


# JAX's config option of each environment variable set here, and its type.
_OPTION_TYPES = {"JAX_ENABLE_COMPILATION_CACHE": lambda value: value == "true",
                 "JAX_COMPILATION_CACHE_DIR": str,
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": float}


def _set(settings: dict[str, str]) -> None:
  """Environment variables for JAX (and child processes), and JAX's config if already loaded."""
  os.environ.update(settings)
  if "jax" not in sys.modules:
    return
  import jax  # pylint: disable=import-outside-toplevel
  for name, value in settings.items():
    jax.config.update(name.lower(), _OPTION_TYPES[name](value))
