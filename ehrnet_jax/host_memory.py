"""Giving the host memory that XLA's compiler freed back to the operating system.

Compiling a training step allocates and frees hundreds of MB in small blocks (H0's trained step:
~1.3 GB). glibc's allocator keeps freed small blocks in its heap instead of returning them, and
the step's own buffers (a few large blocks, mapped separately) then come on top, so the process's
resident memory is the sum of both. Trimming the heap between compiling and running removes the
first part (`benchmarks/train_step.py`, docs/benchmarks/training.md).
"""

import ctypes
import ctypes.util


def release_freed_memory() -> bool:
  """Returns freed heap memory to the OS (glibc's `malloc_trim(0)`). False where the C library
  has no `malloc_trim` (macOS, musl): there is nothing to do there."""
  name = ctypes.util.find_library("c")
  try:
    trim = ctypes.CDLL(name).malloc_trim if name else None
  except (OSError, AttributeError):
    trim = None
  if trim is None:
    return False
  trim(0)
  return True
