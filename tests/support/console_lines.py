"""What a command may print: its own lines (an allow-list of their shapes) and tqdm's bars."""

import re

PROGRESS_BAR = re.compile(r"\s*\d+%\|.*\| *\d+/\d+ \[.*\]\s*")
TRAIN = re.compile(r"training: (new run in|resuming|the run in) .+"
                   r"|building the dataset of .+ \(once\)"
                   r"|jax [\d.]+, backend \w+, .+"        # loop.run_conditions
                   r"|step \d+: ap [\d.]+, ap50 [\d.]+, ar [\d.]+"
                   r'|\{"workdir": .+\}')


def foreign_lines(output: str, own: re.Pattern) -> list[str]:
  """The lines of `output` (bars split at carriage returns) that are neither `own` nor a
  progress bar."""
  lines = (line.strip() for line in re.split(r"[\r\n]", output.replace("\x1b[A", "")))
  return [line for line in lines
          if line and not own.fullmatch(line) and not PROGRESS_BAR.fullmatch(line)]
