"""Returning freed heap memory to the OS around compiling a step."""

import ctypes
import ctypes.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax.host_memory import release_freed_memory
from ehrnet_jax.training import step as step_lib


def _resident_mb() -> float:
  with open("/proc/self/status", encoding="utf-8") as status:
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_freed_small_blocks_leave_the_process():
  libc_name = ctypes.util.find_library("c")
  libc = ctypes.CDLL(libc_name) if libc_name else None
  if libc is None or not hasattr(libc, "malloc_trim"):
    pytest.skip("needs glibc (malloc_trim)")
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  # 256 MB in 32 KB blocks (below glibc's mmap threshold: they live in the heap, as the
  # compiler's do), each written so that its pages are resident, then freed.
  blocks = [libc.malloc(32 * 1024) for _ in range(8192)]
  for block in blocks:
    ctypes.memset(block, 1, 32 * 1024)
  for block in reversed(blocks[:-1]):   # keep the top one: the heap cannot simply shrink
    libc.free(block)
  before = _resident_mb()
  assert release_freed_memory()
  after = _resident_mb()
  libc.free(blocks[-1])
  assert before - after > 200, (before, after)


@pytest.mark.slow
def test_compile_step_drops_earlier_programs_before_compiling():
  """compile_step frees what earlier programs (the state's initialisation) left in JAX's caches
  before the step is lowered and compiled, and again after; the compiled step still runs."""
  earlier = jax.jit(lambda x: x * 2)
  earlier(jnp.ones(3))
  step = jax.jit(lambda state, batch, rng: (state + batch, jnp.sum(batch)))
  cached_at_lowering = []

  class RecordingStep:
    def lower(self, *args):
      cached_at_lowering.append(earlier._cache_size())
      return step.lower(*args)

  assert earlier._cache_size() == 1
  compiled = step_lib.compile_step(RecordingStep(), jnp.ones(3), jnp.arange(3.0), jnp.zeros(()))
  assert cached_at_lowering == [0]
  state, total = compiled(jnp.ones(3), jnp.arange(3.0), jnp.zeros(()))
  np.testing.assert_array_equal(state, [1.0, 2.0, 3.0])
  assert float(total) == 3.0
