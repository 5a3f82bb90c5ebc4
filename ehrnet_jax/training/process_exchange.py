"""Bytes exchanged between the processes of a `jax.distributed` run.

`JaxProcesses` is the `coco_evaluation.Processes` of JAX: `gather` through
`multihost_utils.process_allgather`, `share` through `multihost_utils.broadcast_one_to_all`,
each preceded by an exchange of the lengths (the collectives need one shape on every process).
With one process both return their input. Every process must make the same calls in the same
order.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils


class JaxProcesses:
  """This process's index of the `jax.distributed` run, and byte exchange between them."""

  def __init__(self):
    self.index, self.count = jax.process_index(), jax.process_count()

  def gather(self, data: bytes) -> list[bytes]:
    """Every process's `data`, by process index, on every process."""
    if self.count == 1:
      return [data]
    sizes = multihost_utils.process_allgather(np.int32(len(data)))   # (count,)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:len(data)] = np.frombuffer(data, np.uint8)
    rows = multihost_utils.process_allgather(padded)                   # (count, max size)
    return [row[:size].tobytes() for row, size in zip(rows, sizes)]

  def share(self, data: bytes) -> bytes:
    """Process 0's `data` on every process (the others' `data` is ignored)."""
    if self.count == 1:
      return data
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    payload = np.frombuffer(data, np.uint8) if self.index == 0 else np.zeros(size, np.uint8)
    return multihost_utils.broadcast_one_to_all(payload).tobytes()
