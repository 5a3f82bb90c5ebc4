"""Statistics of a built split, read from the records without decoding images."""

import numpy as np
import tensorflow_datasets as tfds

from ehrnet_jax.data import annotations


def split_statistics(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, int | float]:
  """Counts of images, people, keypoints, ignore masks and over-full images of a split."""
  records = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  totals = dict(images=0, people=0, people_with_keypoints=0, labelled_keypoints=0,
                images_with_ignore_region=0, images_over_max_people=0, people_dropped=0)
  for record in tfds.as_numpy(records):
    people = record["people"]
    totals["images"] += 1
    totals["people"] += len(people["num_keypoints"])
    totals["people_with_keypoints"] += int(np.sum(people["num_keypoints"] > 0))
    totals["labelled_keypoints"] += int(np.sum(people["keypoints"][..., 2] > 0))
    totals["images_over_max_people"] += int(record["people_dropped"] > 0)
    totals["people_dropped"] += int(record["people_dropped"])
    empty = annotations.empty_mask_counts(int(record["height"]), int(record["width"]))
    totals["images_with_ignore_region"] += int(record["ignore_mask_rle"] != empty)
  totals["max_people"] = annotations.MAX_PEOPLE
  return totals
