"""Process start-up: joining a multi-process (multi-host) run, and the XLA flags that must be set
before JAX's backend starts.

Every process of a multi-process run runs the same command; each reads its own share of every
global batch (`jax.process_index()` of `jax.process_count()`), and the SPMD step's collectives
span all devices of all processes (`mesh.py`). Three ways to start:
- explicit: `coordinator="10.0.0.1:1234", num_processes=2, process_id=0` (one per process);
- `auto=True`: let JAX detect the cluster (Cloud TPU pods, SLURM, Open MPI, Kubernetes);
- neither: a single process, `jax.distributed` is not touched.
On CPU, cross-process collectives need gloo (`jax_cpu_collectives_implementation`).

Deterministic GPU steps (`train.deterministic`): XLA reads `XLA_FLAGS` when the backend starts,
so `request_deterministic_ops` must run before anything touches a device (`ehrnet train` calls
it right after reading the config); the loop refuses to train on a GPU without the flag.
"""

import os

import jax

from ehrnet_jax.errors import UserError

DETERMINISTIC_OPS_FLAG = "--xla_gpu_deterministic_ops=true"


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
               auto: bool = False) -> None:
  """Joins the multi-process run when one is configured; a no-op otherwise."""
  if not coordinator and not auto:
    return
  if coordinator and (num_processes < 1 or not 0 <= process_id < num_processes):
    raise UserError(f"--coordinator {coordinator}: also give --num-processes N (>= 1) and "
                    f"--process-id I (0 <= I < N); got {num_processes} and {process_id}")
  # Only affects the CPU backend; it must be set before any backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()


def _deterministic_ops_requested() -> bool:
  return DETERMINISTIC_OPS_FLAG in os.environ.get("XLA_FLAGS", "").split()


def request_deterministic_ops() -> None:
  """Adds XLA's deterministic-ops flag to `XLA_FLAGS` (before the backend starts: no effect
  after). Only GPU compilation reads it."""
  if not _deterministic_ops_requested():
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC_OPS_FLAG}".strip()


def check_deterministic_ops(deterministic: bool) -> None:
  """UserError when `train.deterministic` asks for deterministic GPU steps and the GPU backend
  runs without XLA's flag."""
  if deterministic and jax.default_backend() == "gpu" and not _deterministic_ops_requested():
    raise UserError(f"train.deterministic=true on a GPU needs XLA_FLAGS={DETERMINISTIC_OPS_FLAG} "
                    f"set before JAX starts (`ehrnet train` sets it; in Python, set it in "
                    f"os.environ before the first JAX computation)")
