"""The backbone-only classifiers (the paper's Table 2, B0 ... B-4) with the paper's recipe.

The argument after the colon is the dataset, imagenet2012 (the default, also without the
argument) or cifar100; the variant is a field (default B0). On ImageNet-1k
(ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in ~/imagenet; the first run builds the
TFDS dataset from them into data.tfds_dir, by default ~/tensorflow_datasets, which takes hours):
  ehrnet train --config experiments/backbone.py:imagenet2012 --set model.variant=B-2 \
      --set data.manual_dir=~/imagenet --workdir runs/B-2
On CIFAR-100 (TFDS downloads it, ~160 MB, into data.tfds_dir):
  ehrnet train --config experiments/backbone.py:cifar100 --set model.variant=B-4 \
      --workdir runs/B-4-cifar100

Variants B0, B-1, B-2, B-3, B-4 train at their Table 2 input sizes 224, 195, 170, 145, 128
(the paper's formula ceil(224 * 1.15**phi) would give 148 and 129 for B-3 and B-4; the table's
values are used); CIFAR's 32x32 images are upsampled to them by the same crop. Recipe: SGD,
momentum 0.9, weight decay 1e-4 (coupled, as PyTorch's), 5 warm-up epochs from 1e-4 to 0.05,
x0.1 every 30 epochs, 200 epochs, a global batch of 512 (64 on each of 8 devices; with another
batch, --set data.batch=N, scale the learning rate linearly as a starting point: 0.05 * N / 512,
the rule of Goyal et al. 2017 for SGD with warm-up); random-resized crops (area 8-100%, aspect
3/4-4/3), flips, colour jitter 0.4. Top-1 / top-5 every 10000 steps and at the end rank the
checkpoints: on ImageNet's validation split from centre 87.5% crops, on CIFAR's test split from
the whole image (a milder crop for such small images: --set data.crop_area=0.25,1). The final
classifier goes to <workdir>/variables, the best by top-1 to <workdir>/best; its backbone
initialises a pose model with --set init.checkpoint=runs/B-2/variables.

Expected: the paper's Table 2 top-1 (ImageNet or CIFAR-100) for the variant after the full 200
epochs, given the authors' global batch, which is not published (scale data.batch and
train.learning_rate together). Not reproduced here: that needs days of 8-accelerator time for
ImageNet, a few accelerator-days for CIFAR's five variants; nothing in this repository has run
it to the end.
"""

from ehrnet_jax.config import Config, DataConfig, ModelConfig, RunConfig, TrainConfig
from ehrnet_jax.errors import UserError

# The split that ranks the checkpoints, and the central fraction of the image it is scored on
# (ImageNet's 256 -> 224 convention; CIFAR's whole, upsampled image).
EVALUATION = {"imagenet2012": ("validation", 0.875), "cifar100": ("test", 1.0)}


def get_config(arg: str = "imagenet2012") -> Config:
  if arg not in EVALUATION:
    raise UserError(f"unknown dataset {arg!r}; expected one of {', '.join(EVALUATION)}")
  eval_split, eval_crop_fraction = EVALUATION[arg]
  return Config(
      model=ModelConfig(variant="B0"),
      data=DataConfig(dataset=arg, batch=512, shuffle_buffer=8192,
                      eval_crop_fraction=eval_crop_fraction),
      train=TrainConfig(epochs=200.0, optimizer="sgd", learning_rate=0.05, momentum=0.9,
                        weight_decay=1e-4, warmup_epochs=5.0, warmup_init_lr=1e-4,
                        lr_milestones=tuple(float(e) for e in range(30, 200, 30)), lr_factor=0.1),
      run=RunConfig(log_every_steps=100, checkpoint_every_steps=2000, keep_checkpoints=3,
                    eval_every_steps=10000, eval_split=eval_split))
