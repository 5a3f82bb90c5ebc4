"""The `ehrnet` command line: one sub-command per module in `ehrnet_jax.commands`."""

import argparse
import importlib
import pkgutil
import sys

from ehrnet_jax import commands
from ehrnet_jax.errors import UserError


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="ehrnet",
      description="EfficientHRNet in JAX: train, evaluate, predict, export, convert, benchmark.")
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    if module_info.name.startswith("_"):  # Shared helpers, not sub-commands.
      continue
    module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
    module.register(subparsers)
  return parser


# Packages installed only by an extra of setup.cfg (the default install has the rest).
EXTRA_OF_PACKAGE = {"jax2onnx": "export", "onnx": "export"}


def missing_module_message(error: ModuleNotFoundError) -> str:
  """What to install when a dependency is absent (e.g. JAX on a runtime-only install)."""
  package = (error.name or "").partition(".")[0]
  if not package or package == __package__:
    raise error   # a bug in ehrnet_jax, not a missing dependency
  if package in EXTRA_OF_PACKAGE:
    return (f"this command needs the Python package '{package}', which is not installed; install "
            f"the extra with `pip install -e '.[{EXTRA_OF_PACKAGE[package]}]'`")
  return (f"this command needs the Python package '{package}', which is not installed; install "
          "everything with `pip install -e .` (a runtime-only install from "
          "requirements-runtime.txt runs only `ehrnet predict --backend onnx` and "
          "`ehrnet export --format tensorrt --onnx`; see docs/deployment.md)")


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.run(args) or 0
  except UserError as error:
    message = str(error)
  except ModuleNotFoundError as error:
    message = missing_module_message(error)
  print(f"ehrnet {args.command}: error: {message}", file=sys.stderr)
  return 2
