"""Learning check: overfit H-4 on the coco-mini training images and measure AP on them.

Run (coco-mini: 80 COCO train2017 images, of which the training split keeps the 36 with
keypoint-labelled people):
  ehrnet train --config experiments/overfit_coco_mini.py --workdir /tmp/ehrnet-overfit \\
      --set data.coco_dir=../shared/data/coco-mini

H-4 at 192x192 crops without augmentation (the centre square of each image, so the images can be
memorised), a global batch of 4 images, Adam 1e-3 without decay for 600 steps (~67 epochs of
the 36 images), COCO AP of the same training images (flip test, 192-pixel input) every 100 steps.
Expected: the loss falls steadily and AP rises above 0 (numbers and curve in BENCHMARKS.md,
"Learning"). About 20 minutes on 2 busy CPU cores.
"""

from ehrnet_jax.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig


def get_config() -> Config:
  return Config(
      model=ModelConfig(variant="H-4", input_size=192),
      data=DataConfig(coco_dir="../shared/data/coco-mini", split="train", batch=4,
                      shuffle_buffer=64, max_rotation=0.0, min_scale=1.0, max_scale=1.0,
                      max_translate=0.0, flip_probability=0.0),
      train=TrainConfig(steps=600, lr_milestones=()),
      run=RunConfig(log_every_steps=10, checkpoint_every_steps=100, keep_checkpoints=2,
                    eval_every_steps=100, eval_split="train"))
