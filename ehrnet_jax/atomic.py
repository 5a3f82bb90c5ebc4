"""Files written atomically: a crash, a kill or a concurrent writer leaves the old file or a whole
new one, never half of one."""

import os
import pathlib
import tempfile


def write_atomically(path, data: str | bytes) -> None:
  """Writes `data` (text as UTF-8) to a temporary file of its own beside `path`, then renames it
  to `path`. Creates the parent folders."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                   delete=False) as temporary:
    temporary.write(data.encode() if isinstance(data, str) else data)
  os.replace(temporary.name, path)
