"""A published pose model (H0 ... H-4) on COCO train2017 with the authors' recipe.

Run (COCO folder with annotations/person_keypoints_{train,val}2017.json, train2017/, val2017/):
  ehrnet train --config experiments/coco_pose.py:H-4 --workdir runs/H-4 \
      --set data.coco_dir=/data/coco --set data.tfds_dir=/data/tfds/coco

The argument after the colon is the variant: H0, H-1, H-2, H-3 or H-4; without it
(`--config experiments/coco_pose.py`), H-4. Each trains at its own input size with the
reference's TRAIN.IMAGES_PER_GPU (Example Configs/H*.yaml) as its batch per device; the global
batch is that times the number of devices:

  variant   phi   crop      images per device
  H0         0    512x512    1
  H-1       -1    480x480    6
  H-2       -2    448x448    8
  H-3       -3    416x416   10
  H-4       -4    384x384   48

Recipe: Adam 1e-3, x0.1 at epochs 200 and 260, 300 epochs, no warm-up, loss weights
1/1/1e-3/1e-3. The whole network trains: the reference freezes the backbone, but over an
ImageNet-pretrained one that this project does not ship; with one in init.checkpoint, add
--set train.freeze_backbone=true to match it exactly. COCO AP on val2017 every 20000 steps and
at the end; the best by AP is kept beside the latest 3 checkpoints.

Expected: the paper's COCO val2017 AP for the variant after the full 300 epochs, given the same
global batch; the authors' GPU count (hence global batch) is not published. This needs days of
accelerator time; nothing in this repository has run it to the end.
"""

from ehrnet_jax.config import Config, DataConfig, ModelConfig, RunConfig
from ehrnet_jax.errors import UserError

# TRAIN.IMAGES_PER_GPU of the reference's Example Configs (one GPU per process).
REFERENCE_BATCH = {"H0": 1, "H-1": 6, "H-2": 8, "H-3": 10, "H-4": 48}


def get_config(arg: str = "H-4") -> Config:
  if arg not in REFERENCE_BATCH:
    raise UserError(f"unknown variant {arg!r}; expected one of {', '.join(REFERENCE_BATCH)}")
  return Config(
      model=ModelConfig(variant=arg),
      data=DataConfig(coco_dir="data/coco", per_device_batch=REFERENCE_BATCH[arg]),
      run=RunConfig(log_every_steps=100, checkpoint_every_steps=2000, keep_checkpoints=3,
                    eval_every_steps=20000))
