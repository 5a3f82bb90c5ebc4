"""The backbone-only classifier (the paper's Table 2) on ImageNet-1k with the paper's recipe.

Run (ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in ~/imagenet; the first run builds the
TFDS dataset from them into data.tfds_dir, by default ~/tensorflow_datasets, which takes hours):
  ehrnet train --config experiments/backbone_imagenet.py --set model.variant=B-2 \
      --set data.manual_dir=~/imagenet --workdir runs/B-2

Variants B0, B-1, B-2, B-3, B-4 train at their Table 2 input sizes 224, 195, 170, 145, 128
(the paper's formula ceil(224 * 1.15**phi) would give 148 and 129 for B-3 and B-4; the table's
values are used). Recipe (ehrnet_jax.config.classification_recipe): SGD, momentum 0.9, weight
decay 1e-4, 5 warm-up epochs from 1e-4 to 0.05, x0.1 every 30 epochs, 200 epochs, 64 images per
device; random-resized crops, flips, colour jitter 0.4; top-1 / top-5 on the validation split
(centre 87.5% crops) every 10000 steps and at the end. The final classifier goes to
runs/B-2/variables (with its 1000 classes), the best by top-1 to runs/B-2/best; its backbone
initialises a pose model with --set init.checkpoint=runs/B-2/variables.

Expected: the paper's Table 2 ImageNet top-1 for the variant after the full 200 epochs, given the
authors' global batch, which is not published (scale data.per_device_batch and
train.learning_rate together). Not reproduced here: that needs days of 8-accelerator time, and
nothing in this repository has run it to the end.
"""

from ehrnet_jax.config import Config, classification_recipe


def get_config() -> Config:
  return classification_recipe("imagenet2012")
