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
    module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
    module.register(subparsers)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.run(args) or 0
  except UserError as error:
    print(f"ehrnet {args.command}: error: {error}", file=sys.stderr)
    return 2
