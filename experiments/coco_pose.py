"""A published pose model (H0 ... H-4) on COCO train2017 with the authors' recipe.

Run (COCO folder with annotations/person_keypoints_{train,val}2017.json, train2017/, val2017/):
  ehrnet train --config experiments/coco_pose.py:H-4 --workdir runs/H-4 \
      --set data.coco_dir=/data/coco --set data.tfds_dir=/data/tfds/coco

The argument after the colon is the variant: H0, H-1, H-2, H-3 or H-4; without it
(`--config experiments/coco_pose.py`), H-4. Each trains at its own input size with the global
batch (data.batch: all devices of all processes together, a multiple of the device count) of
the reference's Example Configs/H*.yaml, which train on one GPU (GPUS (0,)) with
TRAIN.IMAGES_PER_GPU images, and its learning rate 1e-3:

  variant   phi   crop      global batch
  H0         0    512x512    1   (one device)
  H-1       -1    480x480    6
  H-2       -2    448x448    8
  H-3       -3    416x416   10
  H-4       -4    384x384   48

Other global batches (more devices: --set data.batch=N): a starting point is the linear
scaling rule with a warm-up (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): learning rate
1e-3 * N / (the batch above), reached over a few epochs' warm-up (train.warmup_epochs, from
train.warmup_init_lr). That rule was established for SGD on ImageNet; for this Adam recipe it is
a guess that nothing here has tested at scale. The paper's GPU count, hence its global batch,
is not published.

Recipe: Adam 1e-3, x0.1 at epochs 200 and 260, 300 epochs, no warm-up, loss weights 1/1/1e-3/1e-3.
Batch norm uses each device's own share of the batch (the reference's DDP without SyncBN; with one
GPU that is the whole batch); with several devices and small shares, --set
train.batch_norm=cross_replica normalises over the global batch instead. The whole network trains:
the reference freezes the backbone, but over an ImageNet-pretrained one that this project does not
ship; with one in init.checkpoint, add --set train.freeze_backbone=true to match it exactly. COCO AP
on val2017 every 20000 steps and at the end; the best by AP is kept beside the latest 3 checkpoints.

Expected: the paper's COCO val2017 AP for the variant after the full 300 epochs, given the same
global batch. This needs days of accelerator time; nothing in this repository has run it to the end.
"""

from ehrnet_jax.config import Config, DataConfig, ModelConfig, RunConfig
from ehrnet_jax.errors import UserError

# The global batch of the reference's Example Configs: TRAIN.IMAGES_PER_GPU on GPUS (0,).
REFERENCE_BATCH = {"H0": 1, "H-1": 6, "H-2": 8, "H-3": 10, "H-4": 48}


def get_config(arg: str = "H-4") -> Config:
  if arg not in REFERENCE_BATCH:
    raise UserError(f"unknown variant {arg!r}; expected one of {', '.join(REFERENCE_BATCH)}")
  return Config(
      model=ModelConfig(variant=arg),
      data=DataConfig(coco_dir="data/coco", batch=REFERENCE_BATCH[arg]),
      run=RunConfig(log_every_steps=100, checkpoint_every_steps=2000, keep_checkpoints=3,
                    eval_every_steps=20000))
