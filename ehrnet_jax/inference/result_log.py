"""Results streamed to JSON-lines files as they are made, and resumed from them.

A run appends one JSON object per line and flushes it (`ResultLog.append`), so that a crash, a
Ctrl-C or a kill loses at most the line being written; `read_records` gives back the complete
lines of earlier runs and cuts a partial last line off the file. The settings that change the
results are kept beside them in `OUT/run.json` (`start`): a rerun with the same settings resumes,
one with other settings is refused (a UserError naming the differences), and `overwrite` starts
over.
"""

import json
import pathlib
import shutil

from ehrnet_jax import atomic
from ehrnet_jax.errors import UserError

SETTINGS_FILE = "run.json"


def start(out_dir, settings: dict, overwrite: bool, outputs: tuple[str, ...]) -> None:
  """Prepares `out_dir` for a run with `settings` (JSON values).

  Resuming is allowed if `out_dir/run.json` holds the same settings or does not exist. With
  `overwrite`, the `outputs` (file or folder names in `out_dir`) of an earlier run are removed
  first. Writes `run.json`.
  """
  out_dir = pathlib.Path(out_dir)
  path = out_dir / SETTINGS_FILE
  if overwrite:
    for name in (SETTINGS_FILE, *outputs):
      target = out_dir / name
      if target.is_dir():
        shutil.rmtree(target)
      else:
        target.unlink(missing_ok=True)
  elif path.is_file():
    earlier = _read_settings(path)
    settings_now = json.loads(json.dumps(settings))   # as read back (tuples -> lists)
    changed = [f"{key}: {earlier.get(key)!r} then, {settings_now.get(key)!r} now"
               for key in sorted(set(earlier) | set(settings_now))
               if earlier.get(key) != settings_now.get(key)]
    if changed:
      raise UserError(f"{out_dir} holds the results of a run with other settings ("
                      f"{'; '.join(changed)}): rerun with --overwrite to start over, or choose "
                      "another --out")
  atomic.write_atomically(path, json.dumps(settings, indent=2) + "\n")


def _read_settings(path: pathlib.Path) -> dict:
  try:
    settings = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError):
    settings = None
  if not isinstance(settings, dict):
    raise UserError(f"{path}: not the settings of an ehrnet run; rerun with --overwrite to start "
                    "over, or choose another --out")
  return settings


def read_records(path) -> list[dict]:
  """The complete lines of a JSON-lines file (none if it does not exist). A partial last line (a
  kill in the middle of writing it) is cut off the file, so that appending goes on cleanly."""
  path = pathlib.Path(path)
  if not path.is_file():
    return []
  data = path.read_bytes()
  complete = data[:data.rfind(b"\n") + 1]
  if len(complete) < len(data):
    with path.open("r+b") as file:
      file.truncate(len(complete))
  records = []
  for number, line in enumerate(complete.splitlines(), 1):
    try:
      records.append(json.loads(line))
    except ValueError:
      raise UserError(f"{path}, line {number}: not a JSON object; rerun with --overwrite to start "
                      "over") from None
  return records


class ResultLog:
  """Appends JSON objects to a JSON-lines file, one flushed line each (a context manager)."""

  def __init__(self, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    self._file = path.open("a", encoding="utf-8")

  def append(self, record: dict) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> "ResultLog":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
