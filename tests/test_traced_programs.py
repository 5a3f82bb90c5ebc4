"""The traced-program store: a second process runs the stored trace instead of tracing again."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ehrnet_jax import traced_programs
from ehrnet_jax.models import EfficientHRNet, abstract_variables
from ehrnet_jax.scaling import ScalingSpec


@contextlib.contextmanager
def compilation_cache(directory, enabled=True):
  """JAX's compilation cache in `directory` (or off) for the block; the session's restored."""
  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_enable_compilation_cache", enabled)
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_enable_compilation_cache", saved[1])


class CountingFunction:
  """tanh(x @ w) + b that counts how often JAX traces it (each trace runs the Python body)."""

  def __init__(self):
    self.traces = 0

  def __call__(self, variables, x):
    self.traces += 1
    return jnp.tanh(x @ variables["w"]) + variables["b"]


def _arguments(rows=3):
  rng = np.random.default_rng(0)
  variables = {"w": rng.normal(size=(4, 5)).astype(np.float32),
               "b": rng.normal(size=(5,)).astype(np.float32)}
  return variables, rng.normal(size=(rows, 4)).astype(np.float32)


def _stored(tmp_path, kind):
  return sorted((tmp_path / "jax-traced").glob(f"{kind}-*"))


def test_a_later_instance_runs_the_stored_trace(tmp_path):
  variables, x = _arguments()
  expected = np.tanh(x @ variables["w"]) + variables["b"]   # NumPy, float32 rounding apart
  with compilation_cache(tmp_path / "jax"):
    first = CountingFunction()
    out_first = traced_programs.exported_jit(first, "test-fn")(variables, x)
    assert first.traces == 1 and len(_stored(tmp_path, "exported")) == 1
    later = CountingFunction()   # as in a new process: nothing in memory
    call = traced_programs.exported_jit(later, "test-fn")
    out_later = call(variables, x)
    assert later.traces == 0   # the stored export ran
    np.testing.assert_array_equal(out_later, out_first)   # the same stored program
    np.testing.assert_allclose(out_later, expected, rtol=1e-5, atol=1e-6)
    call(*_arguments(rows=7))   # another shape: traced and stored once more
    assert later.traces == 1 and len(_stored(tmp_path, "exported")) == 2
    other = CountingFunction()   # another name: its own entry
    traced_programs.exported_jit(other, "test-fn-2")(variables, x)
    assert other.traces == 1 and len(_stored(tmp_path, "exported")) == 3


def test_a_damaged_entry_is_traced_again(tmp_path):
  variables, x = _arguments()
  with compilation_cache(tmp_path / "jax"):
    traced_programs.exported_jit(CountingFunction(), "test-fn")(variables, x)
    (entry,) = _stored(tmp_path, "exported")
    entry.write_bytes(b"not a serialized export")
    again = CountingFunction()
    out = traced_programs.exported_jit(again, "test-fn")(variables, x)
    assert again.traces == 1
    np.testing.assert_allclose(out, np.tanh(x @ variables["w"]) + variables["b"], rtol=1e-5,
                               atol=1e-6)
    assert entry.read_bytes() != b"not a serialized export"   # rewritten


def test_nothing_is_stored_without_the_compilation_cache(tmp_path):
  variables, x = _arguments()
  with compilation_cache(tmp_path / "jax", enabled=False):
    assert traced_programs.directory() is None
    for _ in range(2):
      function = CountingFunction()
      traced_programs.exported_jit(function, "test-fn")(variables, x)
      assert function.traces == 1
  assert not (tmp_path / "jax-traced").exists()


def test_the_fingerprint_follows_the_source(tmp_path):
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
  before = traced_programs.code_fingerprint(tmp_path / "pkg")
  (tmp_path / "pkg2").mkdir()
  (tmp_path / "pkg2" / "a.py").write_text("x = 2\n")
  assert traced_programs.code_fingerprint(tmp_path / "pkg2") != before
  assert traced_programs.code_fingerprint(tmp_path / "pkg") == before


def test_stored_variable_shapes_equal_a_trace(tmp_path, monkeypatch):
  model = EfficientHRNet(ScalingSpec.from_name("H-4"))
  traced = abstract_variables(model)
  with compilation_cache(tmp_path / "jax"):
    assert traced_programs.abstract_variables(model) == traced   # traced, then stored
    monkeypatch.setattr(traced_programs.variables_lib, "abstract_variables",
                        lambda *_: pytest.fail("traced again"))
    assert traced_programs.abstract_variables(model) == traced   # read back
  assert len(_stored(tmp_path, "variables")) == 1
