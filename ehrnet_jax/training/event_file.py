"""TensorBoard event files of scalars, written without TensorFlow.

An event file is a TFRecord file (each record: its length, the length's masked CRC-32C, the data,
the data's masked CRC-32C) of `Event` protocol buffers. Scalars are written as TensorFlow 2's
`tf.summary.scalar` writes them: a float32 scalar tensor tagged with the "scalars" plugin, so
TensorBoard and `tf.compat.v1.train.summary_iterator` read them as TensorFlow's own. The few
fields needed are encoded here by hand, so the trainer writes TensorBoard events on machines
without TensorFlow (e.g. a GPU machine with JAX only).
"""

import itertools
import os
import socket
import struct
import time
from typing import Mapping

_CASTAGNOLI = 0x82F63B78  # CRC-32C's polynomial, bit-reversed.


def _crc_table_entry(byte: int) -> int:
  crc = byte
  for _ in range(8):
    crc = (crc >> 1) ^ (_CASTAGNOLI if crc & 1 else 0)
  return crc


_CRC_TABLE = tuple(_crc_table_entry(byte) for byte in range(256))


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`, the checksum TFRecord files use."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(data: bytes) -> bytes:
  """`data` framed as one TFRecord record."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked_crc(length)) + data
          + struct.pack("<I", _masked_crc(data)))


def _varint(value: int) -> bytes:
  out = bytearray()
  while value > 0x7F:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _message(field: int, payload: bytes) -> bytes:
  """A length-delimited protocol buffer field (wire type 2)."""
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, field: int, payload: bytes) -> bytes:
  """An `Event`: wall_time (1, double), step (2, varint) and one length-delimited field."""
  return (b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
          + _message(field, payload))


# SummaryMetadata.plugin_data.plugin_name = "scalars".
_SCALARS_PLUGIN = _message(1, _message(1, b"scalars"))


def _scalar_value(tag: str, value: float) -> bytes:
  """A `Summary.Value`: tag (1), metadata (9) and a TensorProto (8) of dtype DT_FLOAT (1, 1),
  scalar shape (2, empty) and the little-endian float32 as tensor_content (4)."""
  tensor = b"\x08\x01" + _message(2, b"") + _message(4, struct.pack("<f", value))
  return _message(1, _message(1, tag.encode("utf-8")) + _message(9, _SCALARS_PLUGIN)
                  + _message(8, tensor))


def _scalars_event(step: int, scalars: Mapping[str, float], wall_time: float) -> bytes:
  """One `Event` holding a `Summary` (5) with each scalar as a value."""
  summary = b"".join(_scalar_value(tag, value) for tag, value in scalars.items())
  return _event(wall_time, step, 5, summary)


# Numbers the files a process opens, as TensorFlow does: two writers started within the same
# second (a run resumed in the same process) get files of their own.
_FILE_NUMBERS = itertools.count()


class EventFileWriter:
  """Appends scalar events to a new event file in `directory` (created if missing)."""

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    now = time.time()
    name = (f"events.out.tfevents.{now:.0f}.{socket.gethostname()}.{os.getpid()}."
            f"{next(_FILE_NUMBERS)}.v2")
    self._file = open(os.path.join(directory, name), "wb")
    # The first event names the format version (file_version, field 3), as TensorFlow's does.
    self._file.write(_tfrecord(_event(now, 0, 3, b"brain.Event:2")))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self._file.write(_tfrecord(_scalars_event(step, scalars, time.time())))
    self._file.flush()

  def close(self) -> None:
    self._file.close()
