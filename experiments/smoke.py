"""Smoke test of the whole training job: a tiny run on the sample images bundled in the package.

Run:
  ehrnet train --config experiments/smoke.py --workdir /tmp/ehrnet-smoke

H-4 at 128x128 crops, a global batch of 2 images (one or two devices), 20 steps of Adam at 1e-3 on
the 7 bundled images, then COCO AP on those images at 128 pixels. Expected, on 2 CPU cores: about a
minute, most of it compiling the step; the loss (~1.0 at the start, dominated by the 1/2-resolution
heatmaps) goes down; AP stays ~0 (20 steps learn nothing useful). The work dir then holds
checkpoints/, metrics.jsonl, tensorboard/ and variables/ (loadable by `ehrnet evaluate` / `ehrnet
predict`).
"""

from ehrnet_jax.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig


def get_config() -> Config:
  return Config(
      model=ModelConfig(variant="H-4", input_size=128),
      data=DataConfig(coco_dir="", split="train", batch=2, shuffle_buffer=64),
      train=TrainConfig(steps=20, lr_milestones=()),
      run=RunConfig(log_every_steps=5, checkpoint_every_steps=10, keep_checkpoints=2,
                    eval_every_steps=0, eval_split="train"))
