"""Traced programs kept on disk, so that a second process does not trace the model again.

JAX's persistent compilation cache (`compilation_cache`) skips compiling, but its key is the
lowered program, so every process still traces the Flax model first: for H-4 on 2 CPU cores about
2 s for the variables' shapes (the restore target of a checkpoint) and 2 s per input size for the
network, most of a cached run's start. This store keeps what those traces produce, beside the
compilation cache (`directory`: `<cache dir>-traced`, off when that cache is off):
- `abstract_variables(model)`: the variables' shapes and dtypes, as JSON;
- `exported_jit(fn, name)`: `fn` exported with `jax.export` once per argument signature (shapes,
  dtypes, tree), the serialized StableHLO stored; every call, in the first process and later
  ones, runs the stored export (`Exported.call` under `jax.jit`), so all compile the same program
  and the compilation cache finds it.
Entries are keyed by `code_fingerprint()`: the source of this package and the versions of JAX,
jaxlib and Flax, so an edited model or another JAX version never runs a stale program. Entries are
written atomically (temporary file, then rename); an unreadable entry is traced again.
"""

import functools
import hashlib
import importlib.metadata
import json
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import export

from ehrnet_jax import atomic
from ehrnet_jax.models import variables as variables_lib

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent


def directory() -> pathlib.Path | None:
  """Where the traced programs go: beside JAX's compilation cache directory DIR, in DIR-traced
  (not inside it, which JAX's cache manages); None when that cache is off."""
  cache = jax.config.jax_compilation_cache_dir
  if not jax.config.jax_enable_compilation_cache or not cache:
    return None
  cache = pathlib.Path(cache)
  return cache.with_name(cache.name + "-traced")


@functools.cache
def code_fingerprint(root: pathlib.Path = PACKAGE_ROOT) -> str:
  """A hash of every Python source file under `root` and of the JAX, jaxlib and Flax versions."""
  digest = hashlib.sha256()
  for name in ("jax", "jaxlib", "flax"):
    digest.update(f"{name}=={importlib.metadata.version(name)}\n".encode())
  for path in sorted(root.rglob("*.py")):
    digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
  return digest.hexdigest()


def _entry(kind: str, *key_parts: str) -> pathlib.Path | None:
  """The file of an entry keyed by `key_parts`, or None when the store is off."""
  root = directory()
  if root is None:
    return None
  key = hashlib.sha256("\0".join((code_fingerprint(), *key_parts)).encode()).hexdigest()
  return root / f"{kind}-{key[:40]}"


def _shapes_to_json(tree) -> Any:
  """Nested dicts of arrays/ShapeDtypeStructs -> nested dicts of [shape, dtype]."""
  if isinstance(tree, dict):
    return {key: _shapes_to_json(value) for key, value in tree.items()}
  return [list(tree.shape), str(tree.dtype)]


def _shapes_from_json(tree) -> Any:
  if isinstance(tree, dict):
    return {key: _shapes_from_json(value) for key, value in tree.items()}
  shape, dtype = tree
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


def abstract_variables(model: nn.Module) -> dict[str, Any]:
  """`models.abstract_variables(model)`, read from the store when an earlier process traced it."""
  path = _entry("variables", repr(model))
  if path is not None and path.is_file():
    try:
      return _shapes_from_json(json.loads(path.read_text()))
    except (ValueError, TypeError):
      pass   # damaged: trace again and rewrite it
  shapes = variables_lib.abstract_variables(model)
  if path is not None:
    atomic.write_atomically(path, json.dumps(_shapes_to_json(shapes)))
  return shapes


def _signature(args) -> str:
  """The arguments' tree, shapes and dtypes (what an export is specialised to)."""
  leaves, tree = jax.tree.flatten(args)
  return f"{tree}|" + ";".join(f"{tuple(x.shape)}:{x.dtype}" for x in leaves)


def exported_jit(fn: Callable, name: str, compiler_options: dict | None = None) -> Callable:
  """`jax.jit(fn, compiler_options=...)` whose traces are kept in the store (module docstring).

  `name` must identify everything `fn` closes over (e.g. the model's repr and the options bound
  with functools.partial): entries are keyed by it, the code fingerprint and the arguments'
  signature. Arguments must be arrays on one device (no sharding is recorded). With the store off
  this is plain `jax.jit`.
  """
  jitted = jax.jit(fn, compiler_options=compiler_options)
  calls: dict[str, Callable] = {}

  def call(*args):
    signature = _signature(args)
    if signature not in calls:
      path = _entry("exported", name, signature)
      calls[signature] = jitted if path is None else jax.jit(
          _load_or_export(path, jitted, args).call, compiler_options=compiler_options)
    return calls[signature](*args)

  return call


def _load_or_export(path: pathlib.Path, jitted, args) -> export.Exported:
  if path.is_file():
    try:
      return export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # pylint: disable=broad-except  # damaged entry: export it again
      pass
  exported = export.export(jitted)(*args)
  atomic.write_atomically(path, bytes(exported.serialize()))
  return exported
