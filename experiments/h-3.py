"""H-3 (phi=-3, 416x416 crops) on COCO train2017 with the authors' recipe.

Run (COCO folder with annotations/person_keypoints_{train,val}2017.json, train2017/, val2017/):
  ehrnet train --config experiments/h-3.py --workdir runs/H-3 \
      --set data.coco_dir=/data/coco --set data.tfds_dir=/data/tfds/coco

Recipe (ehrnet_jax.config.reference_recipe): Adam 1e-3, x0.1 at epochs 200 and 260, 300 epochs,
10 images per device as the reference's TRAIN.IMAGES_PER_GPU (the global batch is that
times the number of devices), whole network trained (see train.freeze_backbone). Evaluates COCO AP
on val2017 every 20000 steps and at the end when the evaluation hook is available.

Expected: the paper's COCO val2017 AP for H-3 after the full 300 epochs, given the same
global batch; the authors' GPU count (hence global batch) is not published. This needs days
of accelerator time; nothing in this repository has run it to the end.
"""

from ehrnet_jax.config import Config, reference_recipe


def get_config() -> Config:
  return reference_recipe("H-3")
