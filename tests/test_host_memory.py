"""Returning freed heap memory to the OS between compiling and running a step."""

import ctypes
import ctypes.util

import pytest

from ehrnet_jax.host_memory import release_freed_memory


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
