"""Where training metrics go: JSON-lines files, TensorBoard event files and the console.

`<workdir>/metrics.jsonl` holds one JSON object per logged step (`{"step": 100, "loss": ...}`),
readable with `pandas.read_json(path, lines=True)`; `<workdir>/runs.jsonl` one per (re)start of
the run, naming what its figures depend on (`{"step": 0, "jax": ..., "matmul_precision": ...}`);
`<workdir>/tensorboard/` holds the scalars for `tensorboard --logdir`, written without
TensorFlow (`event_file`). Only process 0 writes; the others get a writer that does nothing, so
the loop needs no `if`.
"""

import json
import os
import time
from typing import Mapping

import tqdm

from ehrnet_jax.training.event_file import EventFileWriter


def _json_line(step: int, fields: Mapping[str, object]) -> str:
  return json.dumps({"step": step, "time": time.time(), **fields}) + "\n"


class MetricWriter:
  """Appends scalars to `metrics.jsonl` and to TensorBoard in `workdir`, and each (re)start's
  conditions to `runs.jsonl`."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    self._workdir = workdir
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))

  def write_run(self, step: int, conditions: Mapping[str, object]) -> None:
    """Appends the conditions of the run (re)starting at `step` to runs.jsonl."""
    if self._enabled:
      with open(os.path.join(self._workdir, "runs.jsonl"), "a", encoding="utf-8") as f:
        f.write(_json_line(step, conditions))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` (name -> number) at `step`."""
    if not self._enabled:
      return
    scalars = {name: float(value) for name, value in scalars.items()}
    self._jsonl.write(_json_line(step, scalars))
    self._jsonl.flush()
    self._events.write(step, scalars)

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._events.close()


class ProgressBar:
  """A tqdm bar over the optimiser steps (with ETA); shows the latest loss, lr and images/s."""

  def __init__(self, start: int, total: int, enabled: bool = True):
    self._bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                          disable=not enabled, smoothing=0.1)

  def update(self, steps: int = 1, **postfix: float) -> None:
    if postfix:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
    self._bar.update(steps)

  def write(self, message: str) -> None:
    self._bar.write(message)

  def close(self) -> None:
    self._bar.close()
