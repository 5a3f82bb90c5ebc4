"""Latency and throughput of the jitted network on the current JAX backend."""

import dataclasses
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from ehrnet_jax.models import EfficientHRNet, ExecutionForm, fold_batch_norm, init_variables
from ehrnet_jax.scaling import ScalingSpec
from ehrnet_jax.xla_options import inference_compiler_options


@dataclasses.dataclass(frozen=True)
class Timing:
  batch: int
  height: int
  width: int
  compile_s: float        # batch-norm fold + lowering + XLA compilation
  median_ms: float        # per call, after warm-up
  min_ms: float
  runs: int

  @property
  def images_per_s(self) -> float:
    return 1000.0 * self.batch / self.median_ms


def time_network(spec: ScalingSpec, batch: int = 1, size: tuple[int, int] | None = None,
                 repeats: int = 20, warmup: int = 3, seed: int = 0,
                 form: ExecutionForm | None = None, variables=None) -> Timing:
  """Times `EfficientHRNet(spec)` evaluated in `form` (default: the fastest inference form on
  this backend, as the inference pipeline runs it) on random inputs and `variables` (default: a
  random initialisation; speed does not depend on the weights)."""
  height, width = size or (spec.input_size, spec.input_size)
  form = form or ExecutionForm.for_backend(jax.default_backend(), train=False)
  model = EfficientHRNet(spec, form=form)
  images = jax.random.normal(jax.random.key(seed), (batch, height, width, 3), jnp.float32)
  if variables is None:
    variables = init_variables(EfficientHRNet(spec), jax.random.key(seed))
  start = time.perf_counter()
  variables = jax.block_until_ready(fold_batch_norm(variables) if form.fold_batch_norm
                                    else variables)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False),
                    compiler_options=inference_compiler_options()).lower(variables, images).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    jax.block_until_ready(forward(variables, images))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, images))
    times.append(1000.0 * (time.perf_counter() - start))
  return Timing(batch, height, width, compile_s, statistics.median(times), min(times), repeats)


def machine_description() -> str:
  """One line naming the processor, core count and JAX backend."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  device = jax.devices()[0]
  return (f"{cpu}, {os.cpu_count()} cores; JAX {jax.__version__} on {device.platform} "
          f"({device.device_kind})")


def replace_section(path: str | os.PathLike, begin: str, end: str, body: str) -> None:
  """Replaces the text between the `begin` and `end` marker lines of a file (appends if absent)."""
  path = pathlib.Path(path)
  text = path.read_text() if path.exists() else ""
  section = f"{begin}\n{body}\n{end}"
  if begin in text and end in text:
    head, rest = text.split(begin, 1)
    text = head + section + rest.split(end, 1)[1]
  else:
    text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
  path.write_text(text)
