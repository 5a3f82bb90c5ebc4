"""What the console shows while inputs run: progress bars that say when they compile, warnings.

Both write to stderr; warnings go through `tqdm.write` so that they do not break an active bar.
"""

import contextlib
import sys

import tqdm

from ehrnet_jax.inference.estimator import PoseEstimator


def warn(message: str) -> None:
  """One line `warning: <message>` on stderr."""
  tqdm.tqdm.write(f"warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def compiling_notice(bar: tqdm.tqdm, estimator: PoseEstimator, image_hw: tuple[int, int],
                     count: int = 1):
  """While running `count` images of `image_hw` together: the bar's postfix says `compiling WxH`
  (the largest network input) if that call compiles new programs, nothing otherwise."""
  if not estimator.compiles(image_hw, count):
    yield
    return
  w, h = estimator.input_sizes(image_hw)[0]
  bar.set_postfix_str(f"compiling {w}x{h}")
  try:
    yield
  finally:
    bar.set_postfix_str("")
