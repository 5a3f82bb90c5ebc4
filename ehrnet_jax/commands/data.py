"""`ehrnet data`: build the TFDS dataset from a COCO folder, print statistics, draw targets."""

import argparse
import json

from ehrnet_jax.errors import UserError

EXAMPLE = """example:
  ehrnet data --coco-dir ~/data/coco --data-dir ~/tensorflow_datasets \\
      --split train --contact-sheet targets.png --input-size 512

The COCO folder holds annotations/person_keypoints_{train,val}2017.json, train2017/ and val2017/
(splits whose json is absent are skipped). Building happens once; later calls reuse it. The
contact sheet shows augmented training samples: keypoints and skeletons (one colour per person),
the ignored regions (magenta) and the 1/2-resolution heatmaps.
"""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "data", help="build the COCO keypoints dataset (TFDS), print statistics, draw targets",
      description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--coco-dir", required=True, help="COCO-style dataset root (manual_dir)")
  parser.add_argument("--data-dir", required=True, help="TFDS data directory to build into")
  parser.add_argument("--config", default="coco", choices=("coco", "crowdpose"),
                      help="keypoint set and folder layout (default: coco)")
  parser.add_argument("--split", default="train",
                      help="split for statistics and the contact sheet: train (train2017), "
                           "validation (val2017), test (default: train)")
  parser.add_argument("--contact-sheet", metavar="PNG",
                      help="write augmented samples with their targets to this PNG")
  parser.add_argument("--input-size", type=int, default=512, help="training input size S")
  parser.add_argument("--samples", type=int, default=8, help="samples on the contact sheet")
  parser.add_argument("--seed", type=int, default=0, help="augmentation seed")
  parser.set_defaults(run=run)


_SPLIT_ALIASES = {"train2017": "train", "val2017": "validation"}


def run(args: argparse.Namespace) -> int:
  # pylint: disable=g-import-not-at-top
  from ehrnet_jax.data import coco_tfds, pipeline, stats
  # pylint: enable=g-import-not-at-top

  split = _SPLIT_ALIASES.get(args.split, args.split)
  coco_tfds.build(args.coco_dir, args.data_dir, config=args.config)
  builder = coco_tfds.load_builder(args.data_dir, args.config)  # Refuses an older build.
  if split not in builder.info.splits:
    raise UserError(f"split '{args.split}' was not built from {args.coco_dir}; "
                    f"built: {', '.join(builder.info.splits)}")
  records = pipeline.open_split(builder, split, "--split")
  print(json.dumps({"dataset": builder.data_dir, "split": split,
                    **stats.split_statistics(records)}, indent=2))
  if args.contact_sheet:
    write_contact_sheet(args, builder, records)
    print(f"wrote {args.contact_sheet}")
  return 0


def write_contact_sheet(args: argparse.Namespace, builder, records) -> None:
  """Draws `args.samples` augmented samples: people, ignored regions, heatmaps side by side."""
  # pylint: disable=g-import-not-at-top
  import cv2
  import jax
  import numpy as np
  from ehrnet_jax.data import pipeline, targets
  from ehrnet_jax.inference import drawing
  # pylint: enable=g-import-not-at-top

  keypoint_set = builder.builder_config.keypoint_set
  stream = pipeline.Stream(seed=args.seed, global_batch=args.samples, num_records=len(records))
  augmentation = pipeline.Augmentation(args.input_size, keypoint_set.flip_index)
  host = pipeline.train_dataset(records, stream, augmentation)[0]
  device = jax.device_get(jax.jit(targets.prepare_batch)(host))
  tiles = []
  for i in range(args.samples):
    image = host["image"][i]
    # Positions at 1/2 resolution, drawn at the centre of their input pixels.
    people = host["keypoints_2"][i].astype(np.float64)
    people[..., :2] = people[..., :2] * 2 + 0.5
    people = people[people[..., 2].any(axis=-1)]
    tiles += [drawing.label(drawing.draw_people(image, people, keypoint_set, 0.5),
                              f"#{i} people {len(people)}"),
              drawing.label(drawing.overlay_mask(image, host["mask_2"][i]), "ignored"),
              drawing.label(drawing.overlay_heatmaps(image, device["heatmaps_2"][i]),
                              "heatmaps 1/2")]
  sheet = drawing.contact_sheet(tiles, columns=6)
  if not cv2.imwrite(args.contact_sheet, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
    raise UserError(f"{args.contact_sheet}: cannot write the PNG")
