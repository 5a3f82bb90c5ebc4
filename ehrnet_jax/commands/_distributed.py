"""The multi-process flags that `ehrnet train` and `ehrnet evaluate` share.

Every process runs the same command with its own `--process-id`; `start` joins the run through
`ehrnet_jax.training.distributed` (imported only then: it imports JAX).
"""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--coordinator", default="", metavar="HOST:PORT",
                      help="address of process 0, for a multi-process run")
  parser.add_argument("--num-processes", type=int, default=0, help="with --coordinator")
  parser.add_argument("--process-id", type=int, default=-1, help="with --coordinator")
  parser.add_argument("--distributed", action="store_true",
                      help="join a multi-process run detected by JAX (TPU pods, SLURM, MPI)")


def requested(args: argparse.Namespace) -> bool:
  """Whether the flags ask for a multi-process run."""
  return bool(args.coordinator or args.distributed)


def start(args: argparse.Namespace) -> None:
  """Joins the multi-process run the flags describe (a no-op without them); call before JAX
  computes anything."""
  from ehrnet_jax.training import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                         auto=args.distributed)
