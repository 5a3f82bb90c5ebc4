"""The device mesh of data parallelism and the global arrays the training step runs on.

One mesh axis, `AXIS` ("data"), over all devices of all processes, ordered by process: process
p's devices hold rows [p * local_batch, (p + 1) * local_batch) of every global batch, in the
order of its local batch, so a global batch is the processes' local batches one after another.
The train state is a replicated global array (every device holds all of it); a batch is split
along its leading axis. Both work with any number of processes: nothing here gathers a whole
array onto one host; the host copies (`host_copy`) are read from this process's own shard of
replicated arrays.
"""

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from ehrnet_jax.errors import UserError

AXIS = "data"


def data_mesh() -> Mesh:
  """The 1-D mesh `AXIS` over `jax.devices()`, ordered by (process, device id)."""
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices), (AXIS,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def check_batch(batch: int, devices: int) -> None:
  """UserError unless the global batch `batch` splits evenly over `devices` devices."""
  if batch >= devices and batch % devices == 0:
    return
  lower = batch // devices * devices
  nearest = [n for n in (lower, lower + devices) if n > 0] or [devices]
  raise UserError(f"data.batch={batch}: the global batch must be a positive multiple of the "
                  f"device count, {devices} ({jax.process_count()} process(es)); nearest valid: "
                  f"{' or '.join(map(str, nearest))}")


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """`tree` (host or single-device arrays, the same on every process) as replicated global
  arrays on `mesh`. Each process places its own copy on its devices; nothing is communicated."""
  sharding = replicated_sharding(mesh)

  def to_global(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(to_global, tree)


def abstract_replicated(abstract: Any, mesh: Mesh) -> Any:
  """`jax.ShapeDtypeStruct`s of `abstract` with the replicated sharding (a restore target)."""
  sharding = replicated_sharding(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's flat batch (leading dim `local_batch`) as its part of the global batch:
  arrays with leading dim `local_batch * process_count`, split over `AXIS`."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)


def host_value(x: Any) -> np.ndarray:
  """A replicated (or single-device, or host) array's value, from this process's first shard."""
  if isinstance(x, jax.Array):
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def host_copy(tree: Any) -> Any:
  """`host_value` of every leaf of a tree of replicated arrays."""
  return jax.tree.map(host_value, tree)
