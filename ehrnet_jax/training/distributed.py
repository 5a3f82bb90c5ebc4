"""Multi-process (multi-host) start-up through `jax.distributed.initialize()`.

Every process runs the same command; each feeds its own devices with its own shard of the data
(`jax.process_index()` of `jax.process_count()`), and pmap's collectives span all devices of all
processes. Three ways to start:
- explicit: `coordinator="10.0.0.1:1234", num_processes=2, process_id=0` (one per process);
- `auto=True`: let JAX detect the cluster (Cloud TPU pods, SLURM, Open MPI, Kubernetes);
- neither: a single process, `jax.distributed` is not touched.
On CPU, cross-process collectives need gloo (`jax_cpu_collectives_implementation`).
"""

import jax

from ehrnet_jax.errors import UserError


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

