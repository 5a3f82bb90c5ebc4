"""The trainer's metric writer: metrics.jsonl, and TensorBoard event files written without
TensorFlow that TensorFlow reads as its own."""

import json

import numpy as np
import pytest

from ehrnet_jax.training import event_file
from ehrnet_jax.training.writers import MetricWriter


def test_crc32c_gives_the_standard_check_values():
  assert event_file.crc32c(b"123456789") == 0xE3069283
  assert event_file.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4


def test_metrics_and_run_conditions_go_to_their_jsonl_files(tmp_path):
  for start in (0, 2):  # A run, then its resumption (within the same second).
    writer = MetricWriter(str(tmp_path))
    writer.write_run(start, {"matmul_precision": "highest"})
    writer.write(start + 2, {"loss": np.float32(1.5), "eval/ap": 0.25})
    writer.close()
  runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
  assert [(r["step"], r["matmul_precision"]) for r in runs] == [(0, "highest"), (2, "highest")]
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"], r["eval/ap"]) for r in rows] == [(2, 1.5, 0.25), (4, 1.5, 0.25)]
  assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_a_disabled_writer_writes_nothing(tmp_path):
  writer = MetricWriter(str(tmp_path / "run"), enabled=False)
  writer.write_run(0, {"jax": "x"})
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not (tmp_path / "run").exists()


def test_tensorflow_reads_the_events_as_its_own(tmp_path):
  tf = pytest.importorskip("tensorflow")
  writer = MetricWriter(str(tmp_path / "ours"))
  writer.write(7, {"loss": 0.125, "eval/ap": 0.5})
  writer.write(300_000, {"loss": -2e-7})
  writer.close()
  (path,) = (tmp_path / "ours" / "tensorboard").glob("events.out.tfevents.*")
  events = list(tf.compat.v1.train.summary_iterator(str(path)))  # Checks every record's CRCs.
  assert events[0].file_version == "brain.Event:2"
  assert [(e.step, v.tag, float(tf.make_ndarray(v.tensor))) for e in events[1:]
          for v in e.summary.value] == [(7, "loss", 0.125), (7, "eval/ap", 0.5),
                                        (300_000, "loss", np.float32(-2e-7))]

  # Byte for byte the summary TensorFlow writes for a scalar.
  metadata = tf.compat.v1.SummaryMetadata()
  metadata.plugin_data.plugin_name = "scalars"
  summary_writer = tf.summary.create_file_writer(str(tmp_path / "tf"))
  with summary_writer.as_default():
    tf.summary.write("loss", tf.constant(0.125, tf.float32), step=7, metadata=metadata)
  summary_writer.close()
  (path,) = (tmp_path / "tf").glob("events.out.tfevents.*")
  expected = list(tf.compat.v1.train.summary_iterator(str(path)))[1].summary.value[0]
  assert events[1].summary.value[0].SerializeToString() == expected.SerializeToString()
