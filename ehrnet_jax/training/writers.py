"""Where training metrics go: a JSON-lines file, TensorBoard event files and the console.

`<workdir>/metrics.jsonl` holds one JSON object per logged step (`{"step": 100, "loss": ...}`),
readable with `pandas.read_json(path, lines=True)`; `<workdir>/tensorboard/` holds the same
scalars for `tensorboard --logdir`. Only process 0 writes; the others get a writer that does
nothing, so the loop needs no `if`.
"""

import json
import os
import time
from typing import Mapping

import tqdm


class MetricWriter:
  """Appends scalars to `metrics.jsonl` and to TensorBoard in `workdir`."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    import tensorflow as tf  # Slow to import: only when this process writes.
    self._tf = tf
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._summary = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
    # What tf.summary.scalar writes, without needing the tensorboard package installed.
    self._scalar_metadata = tf.compat.v1.SummaryMetadata()
    self._scalar_metadata.plugin_data.plugin_name = "scalars"

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` (name -> number) at `step`."""
    if not self._enabled:
      return
    scalars = {name: float(value) for name, value in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()
    with self._summary.as_default():
      for name, value in scalars.items():
        self._tf.summary.write(name, self._tf.constant(value, self._tf.float32), step=step,
                               metadata=self._scalar_metadata)
    self._summary.flush()

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._summary.close()


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
