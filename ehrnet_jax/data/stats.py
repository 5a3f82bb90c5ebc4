"""Statistics of a built split, read from its records (data source, images not decoded)."""

from collections.abc import Iterable
from typing import Any

import numpy as np

from ehrnet_jax.data import annotations


def split_statistics(records: Iterable[dict[str, Any]]) -> dict[str, int | float]:
  """Counts of images, people, keypoints, ignore masks and over-full images of a split's
  records (`pipeline.open_split`)."""
  totals = dict(images=0, people=0, people_with_keypoints=0, labelled_keypoints=0,
                images_with_ignore_region=0, images_over_max_people=0, people_dropped=0)
  for record in records:
    people = record["people"]
    num_keypoints = np.asarray(people["num_keypoints"], np.int32)
    keypoints = np.asarray(people["keypoints"], np.float32).reshape(len(num_keypoints), -1, 3)
    totals["images"] += 1
    totals["people"] += len(num_keypoints)
    totals["people_with_keypoints"] += int(np.sum(num_keypoints > 0))
    totals["labelled_keypoints"] += int(np.sum(keypoints[..., 2] > 0))
    totals["images_over_max_people"] += int(record["people_dropped"] > 0)
    totals["people_dropped"] += int(record["people_dropped"])
    empty = annotations.empty_mask_counts(int(record["height"]), int(record["width"]))
    totals["images_with_ignore_region"] += int(record["ignore_mask_rle"] != empty)
  totals["max_people"] = annotations.MAX_PEOPLE
  return totals
