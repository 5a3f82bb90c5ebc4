"""The `ehrnet` command line: one sub-command per module in `ehrnet_jax.commands`.

Global options, accepted before or after the sub-command: `--verbose` (other libraries' logs
too, `ehrnet_jax.console`), `--compilation-cache DIR` and `--no-compilation-cache`
(`ehrnet_jax.compilation_cache`). Both are set up before the command imports anything heavy.
"""

import argparse
import importlib
import pkgutil
import sys

from ehrnet_jax import commands, compilation_cache, console
from ehrnet_jax.errors import UserError


GLOBAL_OPTIONS = (
    (("--verbose",), {"action": "store_true", "default": False,
                      "help": "also show other libraries' logs (TensorFlow, absl, TFDS, orbax, "
                              "pycocotools, XLA)"}),
    (("--compilation-cache",), {"metavar": "DIR", "default": None,
                                "help": "JAX's persistent compilation cache (default "
                                        "$JAX_COMPILATION_CACHE_DIR, else "
                                        "~/.cache/ehrnet_jax/jax)"}),
    (("--no-compilation-cache",), {"action": "store_true", "default": False,
                                   "help": "compile everything again; store nothing"}),
)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="ehrnet",
      description="EfficientHRNet in JAX: train, evaluate, predict, export, convert, benchmark.")
  add_global_options(parser, with_defaults=True)
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    if module_info.name.startswith("_"):  # Shared helpers, not sub-commands.
      continue
    module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
    module.register(subparsers)
  for sub in subparsers.choices.values():
    add_global_options(sub, with_defaults=False)
  return parser


def add_global_options(parser: argparse.ArgumentParser, with_defaults: bool) -> None:
  """Adds the global options to `parser`: the main parser `with_defaults`, each sub-parser
  without (so that an option given before the sub-command is not reset by its default there)."""
  group = parser.add_argument_group("global options")
  for flags, kwargs in GLOBAL_OPTIONS:
    group.add_argument(*flags, **{**kwargs, **({} if with_defaults else
                                                {"default": argparse.SUPPRESS})})


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
  console.quiet_libraries(args.verbose)
  compilation_cache.configure(args.compilation_cache, enabled=not args.no_compilation_cache,
                              multi_process=bool(getattr(args, "coordinator", None)
                                                 or getattr(args, "distributed", False)))
  try:
    return args.run(args) or 0
  except UserError as error:
    message = str(error)
  except ModuleNotFoundError as error:
    message = missing_module_message(error)
  print(f"ehrnet {args.command}: error: {message}", file=sys.stderr)
  return 2
